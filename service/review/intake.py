"""The sink's door for the two topics anyone can write to: the review and completions topics.

faust reads its topics through aiokafka, which raises on a record it cannot decode (a header
name that is not UTF-8), and faust's consumer does not survive that: one hostile record stops
every review. So the sink does not let faust read untrusted topics. This service reads them with
our own consumer (:class:`~service.kafka.poison.PoisonSafeConsumer`), hands each record, in
order, to the sink's router (which validates it and re-keys it onto the sink's internal per-loop
topic, or dead-letters it), and commits a batch once every record of it was handled. The internal
topic is written only by the sink itself, so faust reads nothing it did not write.

Its consumer group is ``<group>-review-sink-intake``, apart from faust's own group (faust uses its
own assignor; one group cannot mix the two). Delivery is at least once; the router's effects are
idempotent per loop (a review record for a decided loop and a second completion are ignored).

With exactly_once the consumer reads ``read_committed`` and each record's sends are held (the
pipeline's :class:`~service.kafka.transactions.TransactionalCommitter`, through the same ``CURRENT``
context): a batch's re-keyed commands and dead letters commit in one transaction per input
partition with that partition's offsets, by a producer whose transactional id follows the
partition, so a new owner fences the old one and aborts what it left open.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

import mode
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from service.errors import PublishError
from service.kafka.poison import PoisonSafeConsumer, Polled, reader_for
from service.kafka.transactions import CURRENT, TransactionalCommitter
from service.messages import Source
from service.pipeline import InputRecord
from service.retry import full_jitter
from service.settings import KafkaSettings

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 500
MAX_RECORDS = 100
TRANSACTION_WAIT_S = 30.0  # one transactional step (open, commit, close) at most

Router = Callable[[Polled], Awaitable[None]]


class SinkIntake(mode.Service):
    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        bootstrap: str,
        group_id: str,
        routes: dict[str, Router],
        on_bug: Callable[[Polled, str], Awaitable[None]],
        max_record_bytes: int,
        committer: TransactionalCommitter | None = None,
    ) -> None:
        super().__init__()
        self._kafka = kafka
        self._bootstrap = bootstrap
        self._group_id = group_id
        self._routes = routes
        self._on_bug = on_bug  # dead-letters the record as internal_error
        self._max_record_bytes = max_record_bytes
        self._consumer: AIOKafkaConsumer | None = None
        self._safe: PoisonSafeConsumer | None = None
        self._committer = committer  # exactly_once
        self._owned: set[TopicPartition] = set()  # partitions whose producer fenced the last owner
        self.handled = 0

    async def on_start(self) -> None:
        consumer, safe = reader_for(
            self._kafka,
            self._bootstrap,
            group_id=self._group_id,
            topics=list(self._routes),
            max_record_bytes=self._max_record_bytes,
            read_committed=self._committer is not None,
            group_instance_id=self._kafka.group_instance_id,  # static membership, if set
        )
        if self._committer is not None:
            self._committer.bind(consumer)
        await consumer.start()
        self._consumer, self._safe = consumer, safe
        log.info("sink intake reading %s as group %s", sorted(self._routes), self._group_id)

    async def on_stop(self) -> None:
        consumer, safe = self._consumer, self._safe
        self._consumer = self._safe = None
        if self._committer is not None:  # aborts what is open; the next owner redoes it
            await self._committer.close(TRANSACTION_WAIT_S)
            self._owned.clear()
        if safe is not None:
            await safe.close()
        if consumer is not None:
            with contextlib.suppress(KafkaError):
                await consumer.stop()

    @mode.Service.task
    async def _run(self) -> None:
        """Read, route each record in order, commit: until the service stops."""
        while not self.should_stop:
            consumer, safe = self._consumer, self._safe
            if consumer is None or safe is None:
                await self.sleep(0.1)
                continue
            if self._committer is not None:
                await self._follow_assignment(consumer)
            try:
                batches = await safe.getmany(timeout_ms=POLL_TIMEOUT_MS, max_records=MAX_RECORDS)
            except KafkaError as exc:  # the broker's trouble: poll again shortly
                log.warning("sink intake poll failed (%r); polling again", exc)
                await self.sleep(1.0)
                continue
            if self._committer is not None:
                await self._transactional(consumer, safe, batches, self._committer)
                continue
            for records in batches.values():
                for record in records:
                    if self.should_stop:
                        return  # not committed: those records come again
                    if not await self._route(record):
                        return
            if batches:
                try:
                    await consumer.commit()
                except (CommitFailedError, KafkaError) as exc:
                    # A rebalance took partitions away: their new owner handles them again.
                    log.warning("sink intake commit failed: %r", exc)

    async def _route(self, record: Polled) -> bool:
        """Hand one record to its router; False when shutdown cut a send short."""
        try:
            await self._routes[record.topic](record)
        except PublishError:
            return False  # shutting down with a send unacknowledged: redelivered later
        except Exception as exc:  # a bug must not stop every review: keep the record
            log.exception("sink intake failed on %s[%d]@%d", record.topic,
                          record.partition, record.offset)  # fmt: skip
            await self._on_bug(record, repr(exc))
        self.handled += 1
        return True

    # -- exactly_once ---------------------------------------------------------------------------

    async def _follow_assignment(self, consumer: AIOKafkaConsumer) -> None:
        """Open a producer for each new partition before handling its records (fencing the
        previous owner, then seeking to the committed offset); close revoked ones; keep
        partitions without a working producer paused."""
        committer = self._committer
        assert committer is not None
        assigned = set(consumer.assignment())
        gone, new = self._owned - assigned, assigned - self._owned
        if gone:
            await committer.revoke(gone, TRANSACTION_WAIT_S)
        if new:
            await committer.assign(new, TRANSACTION_WAIT_S)
        self._owned = assigned
        blocked = committer.blocked() & assigned
        if blocked:
            consumer.pause(*blocked)
        resumed = (assigned - blocked) & set(consumer.paused())
        if resumed:
            consumer.resume(*resumed)

    async def _transactional(
        self,
        consumer: AIOKafkaConsumer,
        safe: PoisonSafeConsumer,
        batches: dict[TopicPartition, list[Polled]],
        committer: TransactionalCommitter,
    ) -> None:
        """Route each record with its sends held, then commit them with the offsets."""
        points: dict[TopicPartition, int] = {}
        for tp, records in batches.items():
            if tp not in self._owned or tp in committer.blocked():
                # Assigned during the poll (not fenced yet) or fenced: not ours to handle now;
                # read again from here once its producer is open.
                consumer.seek(tp, records[0].offset)
                safe.forget([tp])
                continue
            for record in records:
                if self.should_stop:
                    return  # nothing committed: the held sends are aborted on stop
                held = committer.hold(tp, record.offset, _input_record(record))
                token = CURRENT.set(held)
                try:
                    if not await self._route(record):
                        return
                finally:
                    CURRENT.reset(token)
            points[tp] = records[-1].offset + 1
        attempt = 0
        while points and not self.should_stop:
            result = await committer.commit(points, TRANSACTION_WAIT_S)
            for tp in set(result.committed) | result.fenced:
                points.pop(tp, None)
            for tp in result.fenced:  # its new owner handles those records
                consumer.pause(tp)
            if points:
                attempt += 1
                await self.sleep(full_jitter(attempt, base=0.2, cap=5.0))


def _input_record(record: Polled) -> InputRecord:
    """What a dead letter needs of the record should the broker refuse its outputs."""
    source = Source(record.topic, record.partition, record.offset)
    return InputRecord(source, record.key, record.value, list(record.headers or ()))
