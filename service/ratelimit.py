"""One process-wide rate limiter for backend calls, adaptive on throttling.

Pacing is a GCRA token bucket: each caller reserves the next free slot and sleeps until it
(never blocking the event loop, first come first served, no lock). Adaptation is CUBIC-like:

* A throttle answer cuts the rate to ``decrease_factor`` of what it was and remembers that rate
  as the ceiling last seen (``w_max``). Only calls issued *after* the last cut can cut again:
  answers to calls sent at the old rate say nothing new, so one burst of throttles counts once.
* Below ``w_max`` the rate climbs back quickly (exponentially, time constant ``tau_s``), since
  the quota was known to allow nearly that much a moment ago.
* Near and above ``w_max`` it probes, its speed growing with the cube of the time since probing
  began (like CUBIC's convex phase), up to the configured rate: it barely moves for the first
  second or two, where an unchanged quota would be crossed again, and climbs from half the rate
  to all of it in about four seconds when the quota came back (docs/benchmarks.md, storm).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable


class AdaptiveRateLimiter:
    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        min_rate: float | None = None,
        decrease_factor: float = 0.85,
        tau_s: float = 0.5,
        probe_gain: float = 0.008,
        fast_until: float = 0.97,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.max_rate = rate
        self.burst = burst
        self.min_rate = min_rate if min_rate is not None else max(rate / 50, 0.05)
        self.decrease_factor = decrease_factor
        self.tau_s = tau_s
        self.probe_gain = probe_gain
        self.fast_until = fast_until
        self._clock = clock
        now = clock()
        self._rate = rate
        self._w_max = rate
        self._tat = now  # theoretical arrival time of the next call
        self._updated = now
        self._probing_since: float | None = None
        self._last_decrease = -math.inf
        self.throttles_seen = 0
        self.decreases = 0

    @property
    def rate(self) -> float:
        self._adapt(self._clock())
        return self._rate

    def _adapt(self, now: float) -> None:
        """Advance the rate to ``now`` exactly, whatever how often it is read."""
        dt = now - self._updated
        self._updated = now
        while dt > 0 and self._rate < self.max_rate:
            threshold = self.fast_until * self._w_max
            if self._rate < threshold:
                # Exponential approach towards w_max; stop where it crosses into probing.
                gap = self._w_max - self._rate
                to_threshold = self.tau_s * math.log(gap / (self._w_max - threshold))
                if dt < to_threshold:
                    self._rate = self._w_max - gap * math.exp(-dt / self.tau_s)
                    return
                self._rate = threshold
                dt -= to_threshold
                self._probing_since = now - dt
                continue
            if self._probing_since is None:
                self._probing_since = now - dt
            # Probing speed grows with the cube of time: integrate gain * t**3 over the step.
            p1 = now - self._probing_since
            p0 = p1 - dt
            self._rate = min(
                self.max_rate,
                self._rate + self.max_rate * self.probe_gain * (p1**4 - p0**4) / 4,
            )
            return

    def reserve(self) -> tuple[float, float]:
        """Reserve one call slot: (seconds to wait, the slot's time, to pass to on_throttled)."""
        now = self._clock()
        self._adapt(now)
        interval = 1.0 / self._rate
        # The burst is a fixed span of time: a rate cut must not widen it (or the next slots
        # would land before ones already handed out, i.e. faster just after a throttle).
        tolerance = (self.burst - 1) / self.max_rate
        tat = max(self._tat, now)
        slot = max(now, tat - tolerance)
        self._tat = tat + interval
        return slot - now, slot

    async def acquire(self) -> float:
        """Wait for a slot; returns its time (the call's issue time for :meth:`on_throttled`)."""
        wait, slot = self.reserve()
        if wait > 0:
            await asyncio.sleep(wait)
        return slot

    def on_throttled(self, issued_at: float) -> None:
        self.throttles_seen += 1
        if issued_at < self._last_decrease:
            return  # sent at the old rate; already accounted for
        now = self._clock()
        self._adapt(now)
        self._w_max = self._rate
        self._rate = max(self.min_rate, self._rate * self.decrease_factor)
        self._probing_since = None
        self._last_decrease = now
        self.decreases += 1
        # Slots already handed out at the old rate stay; start the new pace from now.
        self._tat = max(self._tat, now) + 1.0 / self._rate
