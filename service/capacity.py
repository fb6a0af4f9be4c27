"""How many messages may be in flight: enough to keep the rate limiter busy, and no more.

Little's law: to sustain R calls/s when a call takes L seconds, about R x L calls must be in
flight (200 TPS at 1 s needs ~200). The budget follows the limiter's *current* rate and an EWMA
of observed call latency, with headroom for jitter and the limiter's burst, between a floor and
the configured ceiling. When throttling cuts the rate, the budget shrinks with it, so little work
piles up in front of the limiter; intake pauses instead.
"""

from __future__ import annotations

import math

from service.ratelimit import AdaptiveRateLimiter


class ConcurrencyBudget:
    def __init__(
        self,
        limiter: AdaptiveRateLimiter,
        *,
        ceiling: int,
        floor: int = 4,
        headroom: float = 1.5,
        initial_latency_s: float = 0.5,
        smoothing: float = 0.05,
    ) -> None:
        self._limiter = limiter
        self.ceiling = ceiling
        self.floor = min(floor, ceiling)
        self.headroom = headroom
        self.smoothing = smoothing
        self.latency_s = initial_latency_s

    def observe(self, latency_s: float) -> None:
        self.latency_s += self.smoothing * (latency_s - self.latency_s)

    @property
    def limit(self) -> int:
        wanted = self._limiter.rate * self.latency_s * self.headroom + self._limiter.burst
        return max(self.floor, min(self.ceiling, math.ceil(wanted)))
