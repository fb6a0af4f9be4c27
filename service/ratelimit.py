"""One process-wide rate limiter for backend calls that finds the account quota by itself.

``MODERATION_TPS`` is a ceiling, not a guess: the quota is unknown and moves (other clients,
other replicas, a quota change), and the only signal is a throttle answer. Pacing is a GCRA token
bucket: each caller reserves the next free slot and sleeps until it (never blocking the event
loop, first come first served, no lock). Adaptation, in the spirit of BBR rather than AIMD:

* **Measure, don't guess.** The limiter counts the calls it issued and the ones throttled, by
  issue time. When calls are offered above the quota, the backend accepts exactly the quota, so
  the rate accepted over the last ``window_s`` before a throttled call is a direct estimate of
  it. A throttle sets the rate to ``margin`` x that estimate, bounded to a cut of at least
  ``1 - max_step`` (the estimate includes the quota's burst, so it can be a little high) and at
  most ``1 - min_step``. When the limiter was not the bottleneck (the calls issued fell short of
  its rate), the estimate only bounds the quota from below and the cut is the small one.
* **Bunched, not over.** When the backend took every call sent at this pace over the window,
  the throttle is calls that arrived bunched (a paused event loop), not a lower quota: the cut
  is the small one and the rate returns to where it was within ``recover_s``. A second throttle
  during that return is treated as news that the quota moved.
* **At most one cut per round trip.** Only a call reserved after the last cut can cut again:
  answers to calls sent at the old rate say nothing new. A cut also re-paces the callers still
  waiting for slots handed out at the old rate (:meth:`acquire` reserves again), so a backlog
  queued at the old rate cannot keep hammering the quota, and starts with an empty burst.
* **Hold, then probe ever faster.** After a cut the rate holds for ``hold_s``, then grows as
  ``base x (1 + probe_gain x t**3)``: a few percent over the first second (the quota is most
  likely where it was), doubling within about three more seconds (it rose).

So a start at the ceiling above the quota lands just under it within a few round trips, and
30 -> 60 -> 90 steps are found in seconds (docs/benchmarks.md, the ``moving`` row).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

_BIN_S = 0.01  # resolution of the issued / throttled counts


class AdaptiveRateLimiter:
    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        min_rate: float | None = None,
        window_s: float = 1.0,
        margin: float = 0.97,
        max_step: float = 0.95,
        min_step: float = 0.5,
        hold_s: float = 1.0,
        probe_gain: float = 0.03,
        bunched: float = 0.97,
        recover_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.max_rate = rate
        self.burst = burst
        self.min_rate = min_rate if min_rate is not None else max(rate / 50, 0.05)
        self.window_s = window_s
        self.margin = margin
        self.max_step = max_step
        self.min_step = min_step
        self.hold_s = hold_s
        self.probe_gain = probe_gain
        self.bunched = bunched
        self.recover_s = recover_s
        self._clock = clock
        now = clock()
        self._started = now
        self._rate = rate
        self._base = rate  # the rate set by the last cut; probing grows from it
        self._cut_at = -math.inf
        self._probe_from = -math.inf  # when probing above ``_base`` begins
        self._recover_to: float | None = None  # after a cut for bunched calls: the rate before
        self._tat = now  # theoretical arrival time of the next call
        self._fresh_from: float | None = -math.inf  # first slot reserved after the last cut
        self._epoch = 0  # bumped by every cut: slots reserved before it are re-paced
        self._bins: dict[int, list[int]] = {}  # bin -> [issued, throttled], by issue time
        self._oldest_bin = math.floor(now / _BIN_S)
        self.throttles_seen = 0
        self.decreases = 0
        self.estimate: float | None = None  # the quota measured at the last cut

    @property
    def rate(self) -> float:
        self._adapt(self._clock())
        return self._rate

    @property
    def epoch(self) -> int:
        return self._epoch

    def _adapt(self, now: float) -> None:
        """The probe is a closed form of the time since the last cut: reads don't change it."""
        if self._rate >= self.max_rate:
            return
        if self._recover_to is not None:
            since = now - self._cut_at
            if since < self.recover_s:
                gap = self._recover_to - self._base
                back = self._recover_to - gap * math.exp(-3.0 * since / self.recover_s)
                self._rate = max(self._rate, back)
                return
            self._rate = self._base = self._recover_to
            self._probe_from = self._cut_at + self.recover_s + self.hold_s
            self._recover_to = None
        t = now - self._probe_from
        if t > 0:
            grown = self._base * (1.0 + self.probe_gain * t**3)
            self._rate = min(self.max_rate, max(self._rate, grown))

    # --- counting ---------------------------------------------------------------------------

    def _count(self, at: float, issued: int, throttled: int) -> None:
        key = math.floor(at / _BIN_S)
        if key < self._oldest_bin:
            return
        counts = self._bins.get(key)
        if counts is None:
            counts = self._bins[key] = [0, 0]
            self._prune(key)
        counts[0] += issued
        counts[1] += throttled

    def _prune(self, newest: int) -> None:
        keep_from = newest - math.ceil((self.window_s + 1.0) / _BIN_S)
        if keep_from > self._oldest_bin:
            for key in [k for k in self._bins if k < keep_from]:
                del self._bins[key]
            self._oldest_bin = keep_from

    def _accepted_rate(self, until: float) -> tuple[float, float]:
        """(calls accepted per second, calls issued per second) over the window before ``until``."""
        last = math.floor(until / _BIN_S)
        first = max(math.floor((until - self.window_s) / _BIN_S) + 1, self._oldest_bin)
        issued = throttled = 0
        for key in range(first, last + 1):
            counts = self._bins.get(key)
            if counts is not None:
                issued += counts[0]
                throttled += counts[1]
        span = max(until - max(first * _BIN_S, self._started), _BIN_S)
        return max(0, issued - throttled) / span, issued / span

    # --- pacing -----------------------------------------------------------------------------

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
        if self._fresh_from is None:
            self._fresh_from = slot
        self._count(slot, 1, 0)
        return slot - now, slot

    def is_current(self, slot: float, epoch: int) -> bool:
        """Whether a slot reserved in ``epoch`` still stands (no cut since, or already due)."""
        return epoch == self._epoch or slot <= self._cut_at

    def release(self, slot: float) -> None:
        """Give back a slot that was not used (re-paced after a cut, or the caller cancelled)."""
        self._count(slot, -1, 0)

    async def acquire(self) -> float:
        """Wait for a slot; returns its time (the call's issue time for :meth:`on_throttled`)."""
        while True:
            epoch = self._epoch
            wait, slot = self.reserve()
            if wait > 0:
                try:
                    await asyncio.sleep(wait)
                except BaseException:
                    self.release(slot)
                    raise
            if self.is_current(slot, epoch):
                return slot
            self.release(slot)  # reserved at a rate that was throttled since: queue again

    # --- adaptation -------------------------------------------------------------------------

    def on_throttled(self, issued_at: float) -> None:
        self.throttles_seen += 1
        self._count(issued_at, 0, 1)
        if self._fresh_from is None or issued_at < self._fresh_from:
            return  # sent at the old rate; already accounted for
        now = self._clock()
        self._adapt(now)
        accepted, issued = self._accepted_rate(issued_at)
        high = self._rate * self.max_step
        low = self._rate * self.min_step
        paced = issued >= 0.9 * self._rate
        # Short of the rate: the limiter was not the bottleneck, so the count is a lower bound.
        target = self.margin * accepted if paced else high
        self.estimate = accepted
        # The backend took all it was sent at this pace: the throttle is calls that arrived
        # bunched (a paused event loop, a slow network), not a lower quota. Step back a little
        # and return to this rate within ``recover_s`` instead of probing for it again.
        # A second throttle while returning says the quota did move: no second benefit of doubt.
        bunched = paced and accepted >= self.bunched * self._rate and self._recover_to is None
        self._recover_to = self._rate if bunched else None
        self._rate = self._base = max(self.min_rate, min(high, max(low, target)))
        self._cut_at = now
        self._probe_from = now + self.hold_s
        self._fresh_from = None
        self._epoch += 1
        self.decreases += 1
        # The quota's bucket is empty: re-pace from now, one interval at a time, no burst.
        self._tat = now + (self.burst - 1) / self.max_rate + 1.0 / self._rate
