"""The shutdown grace period, as arithmetic: once a stop is asked, how long in-flight work may
still take, and how long each commit and close may, so the process exits within the grace
period whatever state the broker or the group is in."""

from __future__ import annotations

import time
from collections.abc import Callable

CLOSE_TIMEOUT_S = 10.0  # one client's close, when no stop deadline is set (start-up failures)
CLOSE_RESERVE_S = 3.0  # of the grace period, kept for the final commit and the closes
MIN_CLOSE_S = 0.1


class GracePeriod:
    """Counts down from the moment a stop is asked; before that, every wait has a fixed bound."""

    def __init__(self, grace_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace_s = grace_s
        self._clock = clock
        self._deadline: float | None = None  # set when a stop is asked: clock time

    def begin(self) -> None:
        """A stop was asked: the grace period starts now."""
        self._deadline = self._clock() + self.grace_s

    def remaining(self, default: float = CLOSE_TIMEOUT_S) -> float:
        """Time left before the shutdown deadline (``default`` before any stop); never less
        than a moment, so a close past the deadline still gets its one chance."""
        if self._deadline is None:
            return default
        return max(MIN_CLOSE_S, self._deadline - self._clock())

    def drain_budget(self) -> float:
        """In-flight work gets the grace period less a reserve to commit and close in."""
        grace = self.grace_s
        return max(0.0, self.remaining(grace) - min(CLOSE_RESERVE_S, grace * 0.3))
