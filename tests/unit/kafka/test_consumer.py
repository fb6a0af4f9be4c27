"""The group watch: how long the group has gone unsettled, on a clock the test moves by hand."""

from __future__ import annotations

from service.kafka.consumer import GroupWatch
from service.metrics import PipelineMetrics
from service.settings import Settings

STALL_S = 120.0


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def _watch(clock: Clock) -> tuple[GroupWatch, PipelineMetrics]:
    kafka = Settings.from_env({"KAFKA_REBALANCE_STALL_S": str(STALL_S)}).kafka
    metrics = PipelineMetrics()
    return GroupWatch(kafka, metrics, clock), metrics


def _gauge(metrics: PipelineMetrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


def test_unsettled_from_start_up_until_the_first_assignment() -> None:
    clock = Clock()
    watch, metrics = _watch(clock)
    clock.now += 30
    assert watch.unsettled_s() == 30
    assert _gauge(metrics, "moderation_group_unsettled_seconds") == 30
    watch.settled()
    assert watch.unsettled_s() == 0
    assert _gauge(metrics, "moderation_group_unsettled_seconds") == 0


def test_a_stall_is_a_problem_only_past_the_limit() -> None:
    clock = Clock()
    watch, metrics = _watch(clock)
    clock.now += STALL_S
    assert watch.problem() is None
    assert _gauge(metrics, "moderation_group_stalled") == 0
    clock.now += 1
    assert watch.problem() == (
        "consumer group not settled for 121s (a rebalance that does not end)"
    )
    assert _gauge(metrics, "moderation_group_stalled") == 1


def test_a_rebalance_counts_from_its_first_revocation() -> None:
    clock = Clock()
    watch, _ = _watch(clock)
    watch.settled()
    clock.now += 1000
    watch.unsettled()
    clock.now += 50
    watch.unsettled()  # a second revocation in the same rebalance does not restart the count
    clock.now += 50
    assert watch.unsettled_s() == 100
    watch.settled()
    assert watch.problem() is None
