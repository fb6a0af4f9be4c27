"""The adaptive rate limiter, driven by a hand-advanced fake clock: no real time is measured."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.ratelimit import AdaptiveRateLimiter


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def limiter(rate: float, burst: float, clock: FakeClock, **kwargs: float) -> AdaptiveRateLimiter:
    return AdaptiveRateLimiter(rate, burst, clock=clock, **kwargs)


def waits(lim: AdaptiveRateLimiter, n: int) -> list[float]:
    return [lim.reserve()[0] for _ in range(n)]


def slots(lim: AdaptiveRateLimiter, n: int) -> list[float]:
    return [lim.reserve()[1] for _ in range(n)]


def max_calls_over_budget(times: list[float], rate: float, burst: float) -> float:
    """The largest excess of calls in any window [t_i, t_j] over ``rate * T + burst``."""
    ordered = sorted(times)
    worst = -float("inf")
    for i in range(len(ordered)):
        for j in range(i, len(ordered)):
            worst = max(worst, (j - i + 1) - (rate * (ordered[j] - ordered[i]) + burst))
    return worst


def throttle_now(lim: AdaptiveRateLimiter, clock: FakeClock) -> None:
    """A throttle answer to a call issued just now, i.e. after any earlier cut."""
    lim.on_throttled(clock.now)


# --- construction and pacing ------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0.5), (1, 0)])
def test_invalid_parameters(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="rate must be"):
        AdaptiveRateLimiter(rate, burst)


def test_defaults() -> None:
    lim = AdaptiveRateLimiter(100, 5, clock=FakeClock())
    assert lim.max_rate == lim.rate == 100
    assert lim.min_rate == 2.0  # a fiftieth of the rate
    assert AdaptiveRateLimiter(1, 1).min_rate == 0.05  # floor for slow rates
    assert lim.throttles_seen == lim.decreases == 0


@pytest.mark.parametrize("rate", [0.5, 4.0, 25.0])
def test_steady_rate_spacing_without_burst(rate: float) -> None:
    clock = FakeClock()
    lim = limiter(rate, 1, clock)
    assert waits(lim, 6) == pytest.approx([k / rate for k in range(6)], abs=1e-9)


def test_reserve_returns_the_wait_and_the_slot_time() -> None:
    clock = FakeClock()
    lim = limiter(4, 1, clock)
    for k in range(4):
        wait, slot = lim.reserve()
        assert slot == pytest.approx(1000.0 + k * 0.25)
        assert wait == pytest.approx(slot - clock.now)


def test_callers_that_wait_their_turn_see_the_interval() -> None:
    clock = FakeClock()
    lim = limiter(4, 1, clock)
    assert lim.reserve()[0] == 0.0
    for _ in range(5):
        wait, _slot = lim.reserve()
        assert wait == pytest.approx(0.25)
        clock.advance(wait)


def test_burst_goes_out_at_once_then_steady_spacing() -> None:
    clock = FakeClock()
    lim = limiter(10, 5, clock)
    assert waits(lim, 8) == pytest.approx([0.0] * 5 + [0.1, 0.2, 0.3], abs=1e-9)


def test_burst_refills_after_idle_but_not_beyond_its_size() -> None:
    clock = FakeClock()
    lim = limiter(10, 3, clock)
    waits(lim, 3)
    clock.advance(60)  # long idle: capacity is the burst, not 600 calls
    assert waits(lim, 4) == pytest.approx([0.0, 0.0, 0.0, 0.1], abs=1e-9)


def test_burst_refills_one_slot_per_interval() -> None:
    clock = FakeClock()
    lim = limiter(10, 3, clock)
    waits(lim, 3)
    clock.advance(0.1)
    assert waits(lim, 2) == pytest.approx([0.0, 0.1], abs=1e-9)


async def test_acquire_returns_the_slot_time_and_consumes_it() -> None:
    clock = FakeClock()
    lim = limiter(2, 1, clock)
    assert await lim.acquire() == clock.now  # first slot is free: no sleep
    assert lim.reserve() == pytest.approx((0.5, clock.now + 0.5))


@given(
    rate=st.floats(0.5, 50.0),
    burst=st.floats(1.0, 20.0),
    steps=st.lists(st.floats(0.0, 3.0), min_size=1, max_size=60),
)
def test_no_window_exceeds_rate_times_t_plus_burst(
    rate: float, burst: float, steps: list[float]
) -> None:
    clock = FakeClock()
    lim = limiter(rate, burst, clock)
    times = []
    for step in steps:
        clock.advance(step / rate)  # steps measured in intervals: bursts and idles both happen
        wait, slot = lim.reserve()
        assert wait >= 0.0
        assert slot == pytest.approx(clock.now + wait)
        times.append(slot)
    assert max_calls_over_budget(times, rate, burst) <= 1e-6
    assert times == sorted(times)  # first come, first served


# --- adaptation -------------------------------------------------------------------------------


def test_throttle_cuts_the_rate_by_the_decrease_factor() -> None:
    clock = FakeClock()
    lim = limiter(10, 1, clock)
    throttle_now(lim, clock)
    assert lim.rate == pytest.approx(8.5)  # default factor 0.85
    assert (lim.throttles_seen, lim.decreases) == (1, 1)

    halving = limiter(10, 1, FakeClock(), decrease_factor=0.5)
    halving.on_throttled(0.0)
    assert halving.rate == 5.0


def test_one_burst_of_throttles_counts_once() -> None:
    clock = FakeClock()
    lim = limiter(10, 1, clock, decrease_factor=0.5)
    issued = slots(lim, 5)  # all sent at the old rate, the last at +0.4 s
    clock.advance(0.5)  # their answers arrive after that
    for slot in issued:
        lim.on_throttled(slot)
    assert lim.rate == 5.0
    assert (lim.throttles_seen, lim.decreases) == (5, 1)


def test_calls_issued_after_a_cut_can_cut_again() -> None:
    clock = FakeClock()
    lim = limiter(10, 1, clock, decrease_factor=0.5)
    old = lim.reserve()[1]
    clock.advance(0.5)
    lim.on_throttled(old)
    assert lim.decreases == 1
    _wait, new = lim.reserve()
    clock.advance(0.5)
    assert new >= clock.now - 0.5  # issued after the cut
    before = lim.rate  # partly recovered since the first cut
    assert 5.0 < before < 10.0
    lim.on_throttled(new)
    assert lim.decreases == 2
    assert lim.rate == pytest.approx(before * 0.5)
    lim.on_throttled(old)  # a straggler from before the first cut changes nothing
    assert lim.decreases == 2


def test_spacing_follows_the_reduced_rate() -> None:
    clock = FakeClock()
    lim = limiter(10, 1, clock, decrease_factor=0.5)
    assert lim.reserve()[0] == 0.0
    throttle_now(lim, clock)
    times = slots(lim, 4)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == pytest.approx([0.2, 0.2, 0.2])
    assert times[0] > clock.now  # the new pace starts after the cut, not at once


@pytest.mark.parametrize(("factor", "first"), [(0.5, 5.0), (0.25, 2.5), (0.9, 9.0)])
def test_repeated_cuts_stop_at_min_rate(factor: float, first: float) -> None:
    clock = FakeClock()
    lim = limiter(10, 1, clock, min_rate=2.0, decrease_factor=factor)
    throttle_now(lim, clock)
    assert lim.rate == pytest.approx(first)
    for _ in range(60):
        throttle_now(lim, clock)  # same instant: no recovery in between
        assert lim.rate >= 2.0
    assert lim.rate == 2.0


@given(
    st.lists(
        st.tuples(st.floats(0.0, 2.0), st.booleans()),
        min_size=1,
        max_size=50,
    )
)
def test_rate_stays_between_min_and_max(actions: list[tuple[float, bool]]) -> None:
    clock = FakeClock()
    lim = limiter(20, 2, clock, min_rate=1.0)
    for step, throttled in actions:
        clock.advance(step)
        if throttled:
            throttle_now(lim, clock)
        assert 1.0 <= lim.rate <= 20.0


def test_recovery_climbs_back_to_max_over_time() -> None:
    clock = FakeClock()
    lim = limiter(10, 1, clock, decrease_factor=0.7)
    throttle_now(lim, clock)
    throttle_now(lim, clock)  # two cuts: 10 -> 7 -> 4.9, last ceiling seen 7
    assert lim.rate == pytest.approx(4.9)
    history = [lim.rate]
    for _ in range(600):
        clock.advance(0.1)
        history.append(lim.rate)
    assert history == sorted(history)  # never falls without a throttle
    assert history[20] > 6.0  # quick climb back towards the last ceiling (tau 2 s)
    assert history[-1] == 10.0  # then probes past it, up to the configured rate
    assert max(history) == 10.0  # and never beyond it


def test_probing_is_gentle_at_the_last_ceiling_and_fast_far_beyond_it() -> None:
    clock = FakeClock()
    lim = limiter(100, 1, clock, decrease_factor=0.5)
    throttle_now(lim, clock)
    throttle_now(lim, clock)  # 100 -> 50 -> 25, last ceiling seen 50
    while lim.rate < 0.97 * 50:  # the quick climb back
        clock.advance(0.01)
    clock.advance(1.0)
    assert lim.rate <= 50 + 1.0  # a second later: within 1 % of the max above the ceiling
    clock.advance(4.0)
    assert lim.rate == 100  # the quota came back: all of it again within seconds


def test_reservations_follow_the_recovered_rate() -> None:
    clock = FakeClock()
    lim = limiter(10, 1, clock, decrease_factor=0.5)
    throttle_now(lim, clock)
    for _ in range(600):  # a minute of light traffic
        clock.advance(0.1)
        lim.reserve()
    clock.advance(10.0)
    assert waits(lim, 3) == pytest.approx([0.0, 0.1, 0.2], abs=1e-9)


@given(
    rate=st.floats(0.5, 50.0),
    actions=st.lists(
        st.tuples(st.floats(0.0, 3.0), st.sampled_from(["none", "now", "stale"])),
        min_size=1,
        max_size=60,
    ),
)
def test_throttling_never_exceeds_the_ceiling_without_burst(
    rate: float, actions: list[tuple[float, str]]
) -> None:
    clock = FakeClock()
    lim = limiter(rate, 1, clock)
    times: list[float] = []
    for step, throttle in actions:
        clock.advance(step / rate)
        if throttle == "now":
            throttle_now(lim, clock)
        elif throttle == "stale" and times:
            lim.on_throttled(times[0])
        times.append(lim.reserve()[1])
        assert lim.min_rate <= lim.rate <= rate
    assert max_calls_over_budget(times, rate, 1) <= 1e-6
    assert times == sorted(times)


# --- bugs -------------------------------------------------------------------------------------


def test_throttle_with_a_backlog_never_schedules_calls_faster() -> None:
    clock = FakeClock()
    lim = limiter(10, 10, clock)
    before = slots(lim, 30)  # a burst of 10, then a queue up to 2 s ahead
    throttle_now(lim, clock)  # Rekognition says slow down
    after = slots(lim, 5)
    assert min(after) >= max(before)  # a new reservation never jumps the queue
    assert max_calls_over_budget(before + after, 10, 10) <= 1e-6


def test_recovery_does_not_depend_on_how_often_the_rate_is_read() -> None:
    often_clock, once_clock = FakeClock(), FakeClock()
    often, once = limiter(10, 1, often_clock), limiter(10, 1, once_clock)
    for lim, clock in ((often, often_clock), (once, once_clock)):
        throttle_now(lim, clock)
        throttle_now(lim, clock)
    for _ in range(300):
        often_clock.advance(0.1)
        assert often.rate > 0  # e.g. the concurrency budget or a metrics scrape reading it
    once_clock.advance(30.0)
    assert once.rate == pytest.approx(often.rate, rel=0.01)
