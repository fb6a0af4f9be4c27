"""The dead-letter limit: stop intake when too many recent messages were dead-lettered.

A bad deploy (every message an ``internal_error``) or a broken upstream producer would otherwise
empty the input topic into the DLQ within minutes, leaving someone to replay it all by hand.
Bad input and this service's own bugs are counted apart, each against its own ratio over the
last ``window`` outcomes: bugs should be rare, so their limit is much lower.

Tripped, the runner pauses intake (the consumer keeps polling, so the group keeps it), readiness
fails and an alert fires. After the cool-down the window starts afresh and intake resumes: a
flood that goes on trips it again after at most ``min_samples`` more messages, so the damage per
cool-down is bounded, and a transient one heals without a restart.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Literal

from service.errors import Reason
from service.settings import SafetySettings

Outcome = Literal["ok", "input", "internal"]
Kind = Literal["input", "internal"]


_REASONS = frozenset(reason.value for reason in Reason)


def outcome_of(result: str) -> Outcome:
    """A pipeline result (verdict or DLQ reason) as the guard counts it."""
    if result == Reason.INTERNAL_ERROR.value:
        return "internal"
    if result in _REASONS:
        return "input"
    return "ok"


class DeadLetterGuard:
    def __init__(self, limits: SafetySettings, clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = limits
        self._clock = clock
        self._window: deque[Outcome] = deque(maxlen=limits.guard_window)
        self._counts = {"ok": 0, "input": 0, "internal": 0}
        self.tripped: Kind | None = None
        self.detail = ""
        self._until = 0.0

    def record(self, outcome: Outcome) -> None:
        if len(self._window) == self._window.maxlen:
            self._counts[self._window[0]] -= 1
        self._window.append(outcome)
        self._counts[outcome] += 1
        if self.tripped is None:
            self._check()

    def admits(self) -> bool:
        """Whether intake may take new messages now (ends a cool-down that is over)."""
        if self.tripped is None:
            return True
        if self._clock() < self._until:
            return False
        self.tripped = None
        self.detail = ""
        self._window.clear()
        self._counts = {"ok": 0, "input": 0, "internal": 0}
        return True

    def _check(self) -> None:
        total = len(self._window)
        if total < self._limits.guard_min_samples:
            return
        limits: tuple[tuple[Kind, float], ...] = (
            ("internal", self._limits.guard_max_internal_ratio),
            ("input", self._limits.guard_max_input_ratio),
        )
        for kind, limit in limits:
            ratio = self._counts[kind] / total
            if ratio > limit and not (kind == "input" and limit >= 1):
                self.tripped = kind
                self.detail = (
                    f"{self._counts[kind]} of the last {total} messages dead-lettered as {kind} "
                    f"({ratio:.0%} > {limit:.0%}); intake paused for "
                    f"{self._limits.guard_cooldown_s:.0f}s"
                )
                self._until = self._clock() + self._limits.guard_cooldown_s
                return
