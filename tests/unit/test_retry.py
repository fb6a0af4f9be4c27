"""Full-jitter backoff bounds; the circuit breaker's states (fake clock, state not durations)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.retry import CircuitBreaker, full_jitter


class FakeClock:
    def __init__(self, now: float = 500.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- full_jitter ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "ceiling"),
    [
        (1, 0.1, 20.0, 0.1),
        (2, 0.1, 20.0, 0.2),
        (5, 0.1, 20.0, 1.6),
        (8, 0.1, 20.0, 12.8),
        (9, 0.1, 20.0, 20.0),  # 25.6 capped
        (60, 0.1, 20.0, 20.0),
        (0, 0.5, 5.0, 0.5),  # attempts below 1 behave like the first
        (-3, 0.5, 5.0, 0.5),
    ],
)
def test_full_jitter_ceiling(attempt: int, base: float, cap: float, ceiling: float) -> None:
    rng = random.Random(7)
    samples = [full_jitter(attempt, base=base, cap=cap, rng=rng) for _ in range(400)]
    assert all(0.0 <= s <= ceiling for s in samples)
    assert max(samples) > 0.8 * ceiling  # the whole range is used, not just its bottom
    assert min(samples) < 0.2 * ceiling


@given(
    attempt=st.integers(1, 100),
    base=st.floats(0.001, 10.0),
    cap=st.floats(0.001, 60.0),
    seed=st.integers(0, 2**32),
)
def test_full_jitter_is_within_bounds(attempt: int, base: float, cap: float, seed: int) -> None:
    delay = full_jitter(attempt, base=base, cap=cap, rng=random.Random(seed))
    assert 0.0 <= delay <= min(cap, base * 2 ** (attempt - 1))


def test_full_jitter_is_reproducible_with_a_seeded_rng() -> None:
    first = [full_jitter(n, rng=random.Random(42)) for n in range(1, 10)]
    second = [full_jitter(n, rng=random.Random(42)) for n in range(1, 10)]
    assert first == second


def test_full_jitter_without_rng_uses_the_module_generator() -> None:
    delays = {full_jitter(10, base=1.0, cap=5.0) for _ in range(50)}
    assert all(0.0 <= d <= 5.0 for d in delays)
    assert len(delays) > 1  # jittered, not a constant


@pytest.mark.parametrize("attempt", [1100, 5000])
def test_full_jitter_stays_capped_for_any_attempt(attempt: int) -> None:
    assert 0.0 <= full_jitter(attempt, base=0.1, cap=20.0, rng=random.Random(1)) <= 20.0


# --- CircuitBreaker ---------------------------------------------------------------------------


async def settle() -> None:
    """Let scheduled tasks run until they block (a few loop turns, no durations asserted)."""
    for _ in range(5):
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)


def start(awaitable: Awaitable[None]) -> asyncio.Task[None]:
    async def run() -> None:
        await awaitable

    return asyncio.get_running_loop().create_task(run())


async def admitted(breaker: CircuitBreaker) -> bool:
    """True if admit() returns without anything else happening; the attempt is cancelled if not."""
    task = start(breaker.admit())
    await settle()
    if task.done():
        task.result()
        return True
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return False


def opened(
    threshold: int = 3, cooldown_s: float = 1.0, **kw: float
) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=threshold, cooldown_s=cooldown_s, clock=clock, **kw)
    for _ in range(threshold):
        breaker.record_failure()
    assert breaker.is_open
    return breaker, clock


async def test_closed_breaker_admits_at_once() -> None:
    breaker = CircuitBreaker(clock=FakeClock())
    assert not breaker.is_open
    assert await admitted(breaker)
    assert await admitted(breaker)


async def test_opens_after_threshold_consecutive_failures() -> None:
    breaker = CircuitBreaker(threshold=3, clock=FakeClock())
    breaker.record_failure()
    breaker.record_failure()
    assert not breaker.is_open
    breaker.record_failure()
    assert breaker.is_open
    assert not await admitted(breaker)


async def test_a_success_resets_the_consecutive_count() -> None:
    breaker = CircuitBreaker(threshold=3, clock=FakeClock())
    for _ in range(5):
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()
    assert not breaker.is_open
    assert await admitted(breaker)


async def test_probe_admitted_after_cooldown_and_only_one() -> None:
    breaker, clock = opened(cooldown_s=2.0)
    clock.advance(1.9)
    assert not await admitted(breaker)
    clock.advance(0.1)
    assert await admitted(breaker)  # the probe
    assert breaker.is_open
    assert not await admitted(breaker)  # everyone else waits for the probe's outcome


async def test_stale_failures_while_open_do_not_extend_the_cooldown() -> None:
    breaker, clock = opened(cooldown_s=1.0)
    clock.advance(0.5)
    breaker.record_failure()  # a call admitted before the breaker opened fails late
    clock.advance(0.5)
    assert await admitted(breaker)


async def test_probe_success_closes_and_wakes_every_waiter() -> None:
    breaker, clock = opened(cooldown_s=1.0)
    waiters = [start(breaker.admit()) for _ in range(5)]
    await settle()
    assert not any(task.done() for task in waiters)

    clock.advance(1.0)
    assert await admitted(breaker)  # the probe
    await settle()
    assert not any(task.done() for task in waiters)

    breaker.record_success()
    assert not breaker.is_open
    await asyncio.wait_for(asyncio.gather(*waiters), timeout=5)
    assert all(task.done() and task.exception() is None for task in waiters)
    assert await admitted(breaker)


async def test_failed_probe_reopens_with_doubled_cooldown_capped() -> None:
    breaker, clock = opened(cooldown_s=1.0, max_cooldown_s=3.0)
    expected_cooldowns = [2.0, 3.0, 3.0]
    clock.advance(1.0)
    assert await admitted(breaker)
    for cooldown in expected_cooldowns:
        breaker.record_failure(probe=True)  # the probe failed
        assert breaker.is_open
        clock.advance(cooldown - 0.5)
        assert not await admitted(breaker)
        clock.advance(0.5)
        assert await admitted(breaker)  # the next probe


async def test_success_after_reopening_resets_the_cooldown() -> None:
    breaker, clock = opened(threshold=1, cooldown_s=1.0)
    clock.advance(1.0)
    assert await admitted(breaker)
    breaker.record_failure(probe=True)  # cooldown now 2 s
    clock.advance(2.0)
    assert await admitted(breaker)
    breaker.record_success()
    assert not breaker.is_open

    breaker.record_failure()  # threshold 1: open again, with the base cooldown
    assert breaker.is_open
    clock.advance(1.0)
    assert await admitted(breaker)


def test_successes_counter_is_monotonic() -> None:
    breaker = CircuitBreaker(threshold=2, clock=FakeClock())
    assert breaker.successes == 0
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()  # opens
    assert breaker.successes == 1
    breaker.record_success()  # closes
    breaker.record_success()
    assert breaker.successes == 3
    assert not breaker.is_open


async def test_late_failure_of_an_earlier_call_is_not_the_probes_failure() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=2, cooldown_s=1.0, clock=clock)
    for _ in range(3):
        assert await admitted(breaker)  # three calls in flight while the backend is healthy
    breaker.record_failure()
    breaker.record_failure()  # two of them fail: the breaker opens
    clock.advance(1.0)
    assert await admitted(breaker)  # the probe goes out
    breaker.record_failure()  # the third pre-outage call times out late
    clock.advance(10.0)
    assert not await admitted(breaker)  # the probe is still out: no second probe
