"""How many messages may be in flight: enough to keep the rate limiter busy, and no more.

Little's law: to sustain R calls/s when a call takes L seconds, about R x L calls must be in
flight (200 TPS at 1 s needs ~200). The budget follows the limiter's *current* rate and an EWMA
of observed call latency, with headroom for jitter and the limiter's burst, between a floor and
the configured ceiling. When throttling cuts the rate, the budget shrinks with it, so little work
piles up in front of the limiter; intake pauses instead.
"""

from __future__ import annotations

import asyncio
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


class InFlightBytes:
    """Bytes held by in-flight messages (``MODERATION_MAX_IN_FLIGHT_BYTES``): their records, and
    the originals downloaded for them (an S3 object or a URL's body, up to
    ``MODERATION_FETCH_MAX_BYTES`` each).

    Intake pauses while the total is at the limit. A download whose size is known beforehand
    (S3: from the ranged read) waits for room first, so downloads alone never push the total
    past the limit, except one at a time: a download larger than the room left starts only when
    no other download is held, so progress never stops.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.total = 0
        self.downloads = 0  # bytes of downloads held (part of ``total``)
        self._freed = asyncio.Event()

    def add(self, size: int) -> None:
        """A record's bytes, counted from intake until its outcome is published."""
        self.total += size

    def remove(self, size: int) -> None:
        self.total -= size
        self._freed.set()

    async def reserve(self, size: int) -> None:
        """Wait for room for a download of ``size`` bytes, then count it."""
        while self.limit is not None and self.downloads > 0 and self.total + size > self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.hold(size)

    def hold(self, size: int) -> None:
        """Count a download already made (a URL's body: its size is known only once read)."""
        self.total += size
        self.downloads += size

    def release(self, size: int) -> None:
        """A download's bytes are no longer held."""
        self.total -= size
        self.downloads -= size
        self._freed.set()
