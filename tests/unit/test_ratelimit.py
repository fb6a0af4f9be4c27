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


def saturate(lim: AdaptiveRateLimiter, clock: FakeClock, seconds: float) -> list[float]:
    """Issue calls back to back at the limiter's pace for ``seconds``: it is the bottleneck."""
    issued = []
    end = clock.now + seconds
    while clock.now < end:
        wait, slot = lim.reserve()
        clock.advance(wait)
        issued.append(slot)
    return issued


def halve(lim: AdaptiveRateLimiter, clock: FakeClock) -> None:
    """A first small cut, then news that nothing was accepted for a second: the deepest cut."""
    issued = saturate(lim, clock, 1.0)
    throttle_now(lim, clock)
    for slot in issued:
        lim.on_throttled(slot)
    lim.on_throttled(lim.reserve()[1])


def test_a_throttle_sets_the_rate_just_under_the_accepted_rate() -> None:
    clock = FakeClock()
    lim = limiter(100, 1, clock)
    issued = saturate(lim, clock, 1.0)
    throttle_now(lim, clock)  # the first answer: a cut (all else accepted so far, so a small one)
    assert lim.rate == pytest.approx(95)
    for slot in issued[::2]:  # later answers to calls sent before it: half were throttled
        lim.on_throttled(slot)
    assert lim.decreases == 1  # old news: counted, but no cut
    fresh = lim.reserve()[1]
    lim.on_throttled(fresh)  # a call sent after the cut, throttled too
    estimate = lim.estimate
    assert estimate is not None
    assert estimate == pytest.approx(50, abs=2)  # what the backend accepted over 1 s
    assert lim.rate == pytest.approx(0.97 * estimate)
    assert lim.decreases == 2


def test_a_lone_throttle_at_a_pace_fully_taken_returns_to_that_pace() -> None:
    """The backend took every call at this pace, so the throttle was calls arriving bunched (a
    paused event loop), not a lower quota: back to the pace within ``recover_s``, no probing."""
    clock = FakeClock()
    lim = limiter(100, 1, clock)
    saturate(lim, clock, 1.0)
    throttle_now(lim, clock)
    assert lim.rate == pytest.approx(95)
    clock.advance(0.5)
    assert 95 < lim.rate < 100
    clock.advance(0.5)
    assert lim.rate == pytest.approx(100)


def test_a_second_throttle_while_returning_is_a_real_cut() -> None:
    """A quota that just dropped looks bunched at its first throttle; the next one says so."""
    clock = FakeClock()
    lim = limiter(100, 1, clock)
    issued = saturate(lim, clock, 1.0)
    throttle_now(lim, clock)  # given the benefit of the doubt
    for slot in issued[::2]:
        lim.on_throttled(slot)
    lim.on_throttled(lim.reserve()[1])
    estimate = lim.estimate
    assert estimate is not None
    assert lim.rate == pytest.approx(0.97 * estimate)
    clock.advance(1.0)
    assert lim.rate == pytest.approx(0.97 * estimate)  # holding, not returning to 100


def test_a_cut_is_bounded_both_ways() -> None:
    clock = FakeClock()
    barely = limiter(100, 1, clock)
    saturate(barely, clock, 2.0)
    throttle_now(barely, clock)  # all but one accepted: the estimate is ~100/s
    assert barely.rate == pytest.approx(95)  # still at least a 5 % cut
    clock = FakeClock()
    deep = limiter(100, 1, clock)
    halve(deep, clock)
    assert deep.rate == pytest.approx(0.95 * 100 / 2)  # at most halved per round trip


def test_an_idle_limiter_cuts_only_a_little() -> None:
    """Short of its rate, the accepted count is the demand, a lower bound of the quota."""
    clock = FakeClock()
    lim = limiter(100, 1, clock)
    for _ in range(20):  # 20 calls/s for a second
        lim.reserve()
        clock.advance(0.05)
    throttle_now(lim, clock)
    assert lim.rate == pytest.approx(95)


def test_one_burst_of_throttles_counts_once() -> None:
    clock = FakeClock()
    lim = limiter(10, 1, clock)
    issued = slots(lim, 5)  # all reserved before the answers come back
    clock.advance(0.5)
    for slot in issued:
        lim.on_throttled(slot)
    assert (lim.throttles_seen, lim.decreases) == (5, 1)


def test_slots_reserved_at_the_old_rate_cannot_cut_again() -> None:
    """The old limiter judged by slot time, so a queue reserved before a cut cut it again and
    again (quota 60, ceiling 90: down to ~2 calls/s at start)."""
    clock = FakeClock()
    lim = limiter(10, 1, clock)
    queued = slots(lim, 10)  # a backlog reserved up to a second ahead
    clock.advance(0.05)
    lim.on_throttled(queued[0])
    for slot in queued[1:]:  # later slots, but reserved before the cut
        clock.advance(0.1)
        lim.on_throttled(slot)
    assert lim.decreases == 1
    fresh = lim.reserve()[1]
    lim.on_throttled(fresh)  # reserved after the cut: news
    assert lim.decreases == 2


def test_a_cut_repaces_waiting_callers_without_a_burst() -> None:
    clock = FakeClock()
    lim = limiter(10, 5, clock)
    epoch = lim.epoch
    queued = slots(lim, 15)  # a burst of 5, then a queue a second deep
    clock.advance(0.05)
    lim.on_throttled(queued[0])
    assert lim.epoch == epoch + 1
    assert lim.is_current(queued[0], epoch)  # already sent before the cut
    assert not any(lim.is_current(slot, epoch) for slot in queued[5:])
    for slot in queued[5:]:
        lim.release(slot)
    interval = 1 / lim.rate
    after = slots(lim, 4)
    assert after[0] == pytest.approx(clock.now + interval)  # the quota's bucket is empty
    assert [b - a for a, b in itertools.pairwise(after)] == pytest.approx([interval] * 3)


async def test_acquire_queues_again_after_a_cut() -> None:
    clock = FakeClock()
    lim = limiter(10, 1, clock)
    first = await lim.acquire()
    lim.on_throttled(first)  # before the next caller's slot is due
    slot = await lim.acquire()  # no sleeping on the fake clock: the wait is computed only
    assert slot >= clock.now + 1 / lim.rate - 1e-9


@pytest.mark.parametrize("min_rate", [2.0, 5.0])
def test_repeated_cuts_stop_at_min_rate(min_rate: float) -> None:
    clock = FakeClock()
    lim = limiter(10, 1, clock, min_rate=min_rate)
    for _ in range(60):
        lim.on_throttled(lim.reserve()[1])  # each a call sent after the last cut
        assert lim.rate >= min_rate
    assert lim.rate == min_rate


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
        lim.reserve()
        if throttled:
            throttle_now(lim, clock)
        assert 1.0 <= lim.rate <= 20.0


def test_after_a_cut_the_rate_holds_then_probes_ever_faster() -> None:
    clock = FakeClock()
    lim = limiter(100, 1, clock)
    halve(lim, clock)
    base = lim.rate
    assert base == pytest.approx(47.5)
    history = []
    for _ in range(80):
        clock.advance(0.1)
        history.append(lim.rate)
    assert history == sorted(history)  # never falls without a throttle
    assert history[8] == base  # holds for a second: the quota is most likely where it was
    assert history[18] <= base * 1.05  # a gentle first second of probing
    assert history[42] >= base * 1.9  # then fast: a doubled quota is found in seconds
    assert history[-1] == 100  # up to the ceiling, never beyond it
    assert max(history) == 100


def test_reservations_follow_the_recovered_rate() -> None:
    clock = FakeClock()
    lim = limiter(10, 1, clock)
    lim.reserve()
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
    """Counting what acquire() does: after a cut, slots not yet due are given back and queued
    again at the new pace; the slots that stand never exceed the ceiling."""
    clock = FakeClock()
    lim = limiter(rate, 1, clock)
    held: list[tuple[float, int]] = []
    for step, throttle in actions:
        clock.advance(step / rate)
        if throttle == "now":
            throttle_now(lim, clock)
        elif throttle == "stale" and held:
            lim.on_throttled(held[0][0])
        for slot, epoch in held:
            if not lim.is_current(slot, epoch):
                lim.release(slot)
        held = [(slot, epoch) for slot, epoch in held if lim.is_current(slot, epoch)]
        epoch = lim.epoch
        held.append((lim.reserve()[1], epoch))
        assert lim.min_rate <= lim.rate <= rate
    times = [slot for slot, _ in held]
    assert max_calls_over_budget(times, rate, 1) <= 1e-6
    assert times == sorted(times)


def test_recovery_does_not_depend_on_how_often_the_rate_is_read() -> None:
    often_clock, once_clock = FakeClock(), FakeClock()
    often, once = limiter(10, 1, often_clock), limiter(10, 1, once_clock)
    for lim, clock in ((often, often_clock), (once, once_clock)):
        lim.reserve()
        throttle_now(lim, clock)
    for _ in range(30):
        often_clock.advance(0.1)
        assert often.rate > 0  # e.g. the concurrency budget or a metrics scrape reading it
    once_clock.advance(3.0)
    assert once.rate == pytest.approx(often.rate, rel=1e-9)
