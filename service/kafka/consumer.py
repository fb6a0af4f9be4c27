"""The pipeline's member of the consumer group: how it joins, fetches and hears of rebalances.

It joins with static membership when asked for and commits by hand (offsets move only with the
acknowledged outputs). Intake is throttled by pausing partitions, never by leaving the poll loop:
a paused member keeps polling, so heartbeats and the poll interval never lapse however long the
work takes. Rebalances are handed to the member's owner (the runner), and :class:`GroupWatch`
notices a group that does not settle, says so, and frees it from a departed leader.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from service.kafka.client import kafka_client_options
from service.kafka.group_recovery import release_departed_leader
from service.kafka.poison import PoisonSafeConsumer, Polled
from service.metrics import PipelineMetrics
from service.settings import KafkaSettings

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 100
GROUP_WATCH_S = 1.0
RECOVERY_JITTER_S = 5.0  # spread of replicas' recovery attempts
RECOVERY_TIMEOUT_S = 10.0  # one recovery attempt, at least


class PartitionOwner(Protocol):
    """Who works on the assigned partitions, and so must hear of each rebalance."""

    async def on_assigned(self, assigned: set[TopicPartition]) -> None: ...

    async def release(self, revoked: set[TopicPartition]) -> None: ...


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, owner: PartitionOwner) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._owner.release(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._owner.on_assigned(set(assigned))


class GroupConsumer:
    """The input topic's consumer and its poison-safe reader, as one member of the group."""

    def __init__(
        self,
        kafka: KafkaSettings,
        bootstrap: str,
        owner: PartitionOwner,
        *,
        max_poll_records: int,
        read_committed: bool,
    ) -> None:
        self._options = kafka_client_options(kafka, bootstrap)
        #: The client itself, for what commits through it (offsets, transactions).
        self.client = AIOKafkaConsumer(
            **self._options,
            group_id=kafka.group_id,
            # Static membership: a restart within the session timeout takes its partitions back
            # without a rebalance, and a static member does not leave the group on stop.
            group_instance_id=kafka.group_instance_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=kafka.session_timeout_ms,
            heartbeat_interval_ms=max(1000, kafka.session_timeout_ms // 3),
            max_poll_records=max_poll_records,
            fetch_max_wait_ms=kafka.fetch_max_wait_ms,
            # exactly_once reads no aborted input either (transactional upstream producers).
            isolation_level="read_committed" if read_committed else "read_uncommitted",
        )
        self.client.subscribe([kafka.input_topic], listener=_Rebalance(owner))
        self._safe: PoisonSafeConsumer | None = None

    async def start(self) -> None:
        """Join the group (waits for the first join); then the reader exists."""
        await self.client.start()
        self._safe = PoisonSafeConsumer(self.client, self._options)

    async def stop(self) -> None:
        """Leaves the group (a static member stays in it); safe after a start cut short."""
        await self.client.stop()

    async def close_reader(self) -> None:
        if self._safe is not None:
            await self._safe.close()

    def assignment(self) -> set[TopicPartition]:
        return set(self.client.assignment())

    def pause(self, tps: Iterable[TopicPartition]) -> None:
        tps = list(tps)
        if tps:
            self.client.pause(*tps)

    def hold(self) -> None:
        """Stop fetching from every assigned partition (intake is full)."""
        self.client.pause(*self.client.assignment())

    async def keep_polling(self) -> int:
        """One poll while held: keeps the member alive in the group; returns how many records
        came (none: every partition is paused)."""
        batches = await self.client.getmany(timeout_ms=0)
        return sum(len(records) for records in batches.values())

    def resume(self, *, blocked: set[TopicPartition]) -> None:
        """Fetch again from every paused partition except the ``blocked`` ones."""
        paused = self.client.paused() - blocked
        if paused:
            self.client.resume(*paused)

    async def fetch(self, max_records: int) -> tuple[dict[TopicPartition, list[Polled]], int]:
        """One poll of the partitions not paused; returns the records and how many
        undecodable-record recoveries the poll needed."""
        assert self._safe is not None, "fetch before start"
        recoveries = self._safe.recoveries
        batches = await self._safe.getmany(timeout_ms=POLL_TIMEOUT_MS, max_records=max_records)
        return batches, self._safe.recoveries - recoveries

    def forget(self, tps: set[TopicPartition]) -> None:
        """The reader's positions for partitions no longer ours."""
        if self._safe is not None:
            self._safe.forget(tps)

    def lag(self) -> dict[TopicPartition, int]:
        """Records behind the high watermark, per assigned partition with both known."""
        # The high watermark from fetch responses (Tansu's end_offsets() is unreliable).
        lags: dict[TopicPartition, int] = {}
        if self._safe is None:
            return lags
        for tp in self.client.assignment():
            highwater = self.client.highwater(tp)
            position = self._safe.next_offset(tp)
            if highwater is not None and position is not None:
                lags[tp] = max(0, highwater - position)
        return lags


class GroupWatch:
    """How long the group has gone without a settled assignment: a metric, a health problem,
    one log line per episode, and an attempt to free a group wedged on a departed leader."""

    def __init__(
        self,
        kafka: KafkaSettings,
        metrics: PipelineMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kafka = kafka
        self._metrics = metrics
        self._clock = clock
        self._bootstrap: str | None = None  # known once the clients are being opened
        # Since when the group has had no settled assignment (None: it has one); from start-up.
        self._unsettled_since: float | None = clock()
        metrics.group_unsettled.set_function(self.unsettled_s)
        metrics.group_stalled.set_function(lambda: float(self.problem() is not None))

    def connect(self, bootstrap: str) -> None:
        """Recovery needs the broker's address, known only once the clients are being opened."""
        self._bootstrap = bootstrap

    def settled(self) -> None:
        self._unsettled_since = None

    def unsettled(self) -> None:
        """A rebalance begins: it should end soon."""
        if self._unsettled_since is None:
            self._unsettled_since = self._clock()

    def unsettled_s(self) -> float:
        """How long the group has been without a settled assignment (0 when it has one)."""
        since = self._unsettled_since
        return 0.0 if since is None else self._clock() - since

    def problem(self) -> str | None:
        unsettled = self.unsettled_s()
        if unsettled <= self._kafka.rebalance_stall_s:
            return None
        return f"consumer group not settled for {unsettled:.0f}s (a rebalance that does not end)"

    async def run(self) -> None:
        """Says once per episode, in the log, that the group has not settled in time, and
        tries to free it from a departed leader at most once per stall period."""
        reported = False
        last_attempt = -math.inf
        stall_s = self._kafka.rebalance_stall_s
        while True:
            await asyncio.sleep(GROUP_WATCH_S)
            problem = self.problem()
            if problem is not None and not reported:
                log.warning("%s; see docs/operations.md, ModerationGroupUnsettled", problem)
            reported = problem is not None
            now = self._clock()
            if problem is not None and now - last_attempt >= stall_s and self._can_recover():
                last_attempt = now
                # Replicas stuck together should not all act at the same instant.
                await asyncio.sleep(random.uniform(0, min(RECOVERY_JITTER_S, stall_s / 4)))  # noqa: S311
                if self.problem() is not None:
                    await self._recover()

    def _can_recover(self) -> bool:
        return self._kafka.rebalance_recovery and self._bootstrap is not None

    async def _recover(self) -> None:
        kafka = self._kafka
        assert self._bootstrap is not None
        outcome = await release_departed_leader(
            kafka_client_options(kafka, self._bootstrap),
            kafka.group_id,
            [kafka.input_topic],
            timeout_s=max(RECOVERY_TIMEOUT_S, kafka.session_timeout_ms / 1000),
            session_timeout_ms=kafka.session_timeout_ms,
        )
        self._metrics.group_recoveries.labels(outcome=outcome.value).inc()
