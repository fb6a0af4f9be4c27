"""One process-wide rate limiter for backend calls, adaptive on throttling.

A GCRA-style token bucket: each caller reserves the next free slot and sleeps until it (never
blocking the event loop, first come first served, no lock needed). Throttling answers cut the rate
multiplicatively (at most once per cool-down, so one burst of throttles counts once); the rate then
climbs back additively towards the configured ceiling while no throttling is seen.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class AdaptiveRateLimiter:
    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        min_rate: float | None = None,
        decrease_factor: float = 0.5,
        recovery_per_s: float | None = None,
        cooldown_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.max_rate = rate
        self.burst = burst
        self.min_rate = min_rate if min_rate is not None else max(rate / 20, 0.1)
        self.decrease_factor = decrease_factor
        self.recovery_per_s = recovery_per_s if recovery_per_s is not None else rate / 20
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._rate = rate
        self._tat = clock()  # theoretical arrival time of the next call
        self._last_adjust = clock()
        self._last_decrease = -float("inf")

    @property
    def rate(self) -> float:
        self._recover(self._clock())
        return self._rate

    def _recover(self, now: float) -> None:
        if self._rate < self.max_rate and now - self._last_decrease >= self.cooldown_s:
            elapsed = now - max(self._last_adjust, self._last_decrease + self.cooldown_s)
            if elapsed > 0:
                self._rate = min(self.max_rate, self._rate + self.recovery_per_s * elapsed)
                self._last_adjust = now

    def reserve(self) -> float:
        """Reserve one call slot; returns how long the caller must wait before calling."""
        now = self._clock()
        self._recover(now)
        interval = 1.0 / self._rate
        tolerance = (self.burst - 1) * interval
        tat = max(self._tat, now)
        wait = tat - tolerance - now
        self._tat = tat + interval
        return max(0.0, wait)

    async def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            await asyncio.sleep(wait)

    def on_throttled(self) -> None:
        now = self._clock()
        if now - self._last_decrease < self.cooldown_s:
            return
        self._rate = max(self.min_rate, self._rate * self.decrease_factor)
        self._last_decrease = now
        self._last_adjust = now
        # Slots already handed out at the old rate stay; push the schedule back so the new rate
        # applies from now on instead of after a backlog of stale reservations.
        self._tat = max(self._tat, now) + 1.0 / self._rate
