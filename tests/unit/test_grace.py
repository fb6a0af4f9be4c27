"""The shutdown grace arithmetic, on a clock the test moves by hand."""

from __future__ import annotations

import pytest

from service.grace import CLOSE_RESERVE_S, CLOSE_TIMEOUT_S, MIN_CLOSE_S, GracePeriod


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_before_a_stop_every_wait_has_its_fixed_bound() -> None:
    grace = GracePeriod(25.0, Clock())
    assert grace.remaining() == CLOSE_TIMEOUT_S
    assert grace.remaining(30.0) == 30.0


def test_after_a_stop_the_time_left_counts_down() -> None:
    clock = Clock()
    grace = GracePeriod(25.0, clock)
    grace.begin()
    clock.now += 10.0
    assert grace.remaining() == pytest.approx(15.0)
    assert grace.remaining(30.0) == pytest.approx(15.0)  # the deadline wins over the default


def test_past_the_deadline_a_close_still_gets_a_moment() -> None:
    clock = Clock()
    grace = GracePeriod(5.0, clock)
    grace.begin()
    clock.now += 60.0
    assert grace.remaining() == MIN_CLOSE_S


def test_the_drain_leaves_a_reserve_to_commit_and_close_in() -> None:
    clock = Clock()
    grace = GracePeriod(25.0, clock)
    assert grace.drain_budget() == pytest.approx(25.0 - CLOSE_RESERVE_S)  # before the stop
    grace.begin()
    clock.now += 5.0
    assert grace.drain_budget() == pytest.approx(20.0 - CLOSE_RESERVE_S)


def test_a_short_grace_keeps_under_a_third_for_closing() -> None:
    clock = Clock()
    grace = GracePeriod(2.0, clock)
    grace.begin()
    assert grace.drain_budget() == pytest.approx(2.0 - 0.6)


def test_no_drain_once_the_reserve_is_all_that_is_left() -> None:
    clock = Clock()
    grace = GracePeriod(25.0, clock)
    grace.begin()
    clock.now += 24.0
    assert grace.drain_budget() == 0.0
