"""The dead-letter limit, with a fake clock: when it trips, for what, and when it lets go."""

from __future__ import annotations

from service.dlq_guard import DeadLetterGuard, outcome_of
from service.settings import SafetySettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guard(clock: Clock, **limits: float) -> DeadLetterGuard:
    settings = SafetySettings(
        guard_window=int(limits.get("window", 100)),
        guard_min_samples=int(limits.get("min_samples", 20)),
        guard_max_input_ratio=limits.get("input", 0.5),
        guard_max_internal_ratio=limits.get("internal", 0.05),
        guard_cooldown_s=limits.get("cooldown", 60.0),
    )
    return DeadLetterGuard(settings, clock)


def test_outcomes_by_result() -> None:
    assert outcome_of("approved") == "ok"
    assert outcome_of("review") == "ok"
    assert outcome_of("malformed_json") == "input"
    assert outcome_of("undecodable_record") == "input"
    assert outcome_of("internal_error") == "internal"


def test_nothing_trips_before_the_minimum_sample() -> None:
    g = guard(Clock())
    for _ in range(19):
        g.record("input")
    assert g.tripped is None
    assert g.admits()
    g.record("input")
    assert g.tripped == "input"
    assert not g.admits()
    assert "20 of the last 20" in g.detail


def test_bad_input_trips_only_above_its_ratio() -> None:
    g = guard(Clock())
    for i in range(100):
        g.record("input" if i % 2 else "ok")  # exactly 50 %: not above the limit
    assert g.tripped is None
    g.record("input")  # the window slides: 51 of the last 100
    assert g.tripped == "input"


def test_bugs_count_apart_with_their_own_lower_limit() -> None:
    g = guard(Clock())
    for i in range(40):
        g.record("internal" if i % 10 == 0 else "ok")  # 10 % internal errors
    assert g.tripped == "internal"
    assert "internal" in g.detail


def test_an_old_flood_slides_out_of_the_window() -> None:
    g = guard(Clock(), input=0.6)
    for _ in range(10):
        g.record("input")
    for _ in range(100):
        g.record("ok")
    g.record("input")
    assert g.tripped is None  # 1 of the last 100


def test_the_cool_down_resumes_intake_with_a_fresh_window() -> None:
    clock = Clock()
    g = guard(clock, cooldown=60)
    for _ in range(20):
        g.record("input")
    assert not g.admits()
    clock.now += 59
    assert not g.admits()
    clock.now += 2
    assert g.admits()
    assert g.tripped is None
    for _ in range(19):  # the flood goes on: at most min_samples more before it trips again
        g.record("input")
    assert g.tripped is None
    g.record("input")
    assert g.tripped == "input"


def test_a_ratio_of_one_turns_the_input_limit_off() -> None:
    g = guard(Clock(), input=1.0)
    for _ in range(100):
        g.record("input")
    assert g.tripped is None
    assert g.admits()
