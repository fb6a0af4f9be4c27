"""Backoff and the circuit breaker that turns a backend outage into paused intake.

Backoff is "full jitter" exponential (AWS architecture blog): ``uniform(0, min(cap, base * 2**n))``,
which spreads retries from many in-flight calls instead of synchronising them.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable


def full_jitter(
    attempt: int, *, base: float = 0.1, cap: float = 20.0, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based)."""
    exponent = min(max(0, attempt - 1), 64)  # retry loops may count past where 2**n overflows
    ceiling = min(cap, base * 2.0**exponent)
    return (rng or random).uniform(0, ceiling)


class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; callers then wait instead of calling.

    After ``cooldown_s`` (doubling on every failed probe, up to ``max_cooldown_s``) one probe call
    is let through; its success closes the breaker and wakes every waiter.
    """

    def __init__(
        self,
        *,
        threshold: int = 10,
        cooldown_s: float = 1.0,
        max_cooldown_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.base_cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self._clock = clock
        self._failures = 0
        self.successes = 0  # monotonic: lets a caller ask "did anything succeed since ...?"
        self._cooldown_s = cooldown_s
        self._opened_at: float | None = None
        self._probing = False
        self._closed = asyncio.Event()
        self._closed.set()

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    async def admit(self) -> bool:
        """Wait until a call may go out; True if this call is the probe of an open breaker.

        The caller passes that back to :meth:`record_failure`, so only the probe's own failure
        reopens the breaker (not a late failure of a call admitted before it opened).
        """
        while self._opened_at is not None:
            remaining = self._opened_at + self._cooldown_s - self._clock()
            if remaining <= 0 and not self._probing:
                self._probing = True
                return True
            try:
                await asyncio.wait_for(self._closed.wait(), timeout=max(remaining, 0.05))
            except TimeoutError:
                continue
        return False

    def record_success(self) -> None:
        self.successes += 1
        self._failures = 0
        self._probing = False
        if self._opened_at is not None:
            self._opened_at = None
            self._cooldown_s = self.base_cooldown_s
            self._closed.set()

    def record_failure(self, *, probe: bool = False) -> None:
        self._failures += 1
        if self._opened_at is not None:
            if probe:
                self._probing = False
                self._opened_at = self._clock()
                self._cooldown_s = min(self.max_cooldown_s, self._cooldown_s * 2)
            return
        if self._failures >= self.threshold:
            self._opened_at = self._clock()
            self._closed.clear()
