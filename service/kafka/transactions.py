"""Exactly-once: a record's outputs and its input offset commit in one Kafka transaction.

Work still completes out of order, so outputs are *held* per input record (``PendingOutputs``,
found through the record's task context) and only the records inside a partition's contiguous
finished prefix (:class:`service.kafka.offsets.OffsetTracker`) go into a transaction, together with
``send_offsets_to_transaction`` for that prefix.

Fencing without KIP-447: aiokafka 0.14 sends no consumer generation with the offsets, so the
broker cannot tell a zombie from the owner by group membership. Instead every assigned input
partition gets its own transactional producer whose id follows the partition
(``{group}-{topic}-{partition}``): the new owner's ``InitProducerId`` bumps the epoch, which
aborts the previous owner's open transaction (or lets a committing one finish) and fences it.
Only then does the new owner read the committed offset and seek to it, so it never starts from
an offset a finishing zombie is about to move.

Failures: a record the broker refuses (too large) is found by re-sending one record at a time,
then replaced by a dead letter; a fenced producer stops its partition until the group moves it
(or, when the group does not, reclaims it after a session timeout); any other failure throws the
producer away and a new one (a new epoch, which aborts what was open) retries at the next commit,
after asking the group whether the lost transaction committed after all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import InvalidProducerEpoch, KafkaError, ProducerFenced

from service.errors import ConfigError, Reason
from service.kafka.client import kafka_client_options
from service.kafka.publisher import is_refusal
from service.messages import DeadLetter, Headers, dead_letter_output
from service.metrics import StreamMetrics
from service.settings import KafkaSettings

if TYPE_CHECKING:
    from service.pipeline import InputRecord

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 30.0  # the broker must hand out a transactional producer by then
TRANSACTION_TIMEOUT_MS = 30_000  # an orphaned open transaction blocks read_committed readers
MIN_WAIT_S = 0.1
FENCED = (ProducerFenced, InvalidProducerEpoch)
MAX_DOWNGRADES = 2  # verdict -> dead letter with the original -> dead letter without it
SMALL_DEAD_LETTER = 4096


@dataclass(frozen=True, slots=True)
class Output:
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers

    @property
    def size(self) -> int:
        return len(self.value) + len(self.key or b"")

    def header(self, name: str) -> str | None:
        for key, data in self.headers:
            if key == name:
                return data.decode("utf-8", "replace")
        return None


@dataclass(eq=False)
class PendingOutputs:
    """One input record's outputs, held until the record joins its partition's committed prefix."""

    record: InputRecord
    outputs: list[Output] = field(default_factory=list)
    downgrades: int = 0

    @property
    def size(self) -> int:
        value = self.record.value or b""
        return len(value) + sum(out.size for out in self.outputs)


#: The record the running task is working on; set by the runner inside each record's task.
CURRENT: ContextVar[PendingOutputs | None] = ContextVar("moderation_pending_outputs", default=None)


class BufferedSink:
    """The pipeline's sink under exactly-once: publishing holds the record until its commit."""

    async def publish(self, topic: str, key: bytes | None, value: bytes, headers: Headers) -> None:
        pending = CURRENT.get()
        if pending is None:  # a bug: every publish happens inside a record's task
            raise RuntimeError("publish outside a record's task under exactly_once")
        pending.outputs.append(Output(topic, key, value, headers))


class _Refused(Exception):
    def __init__(self, pending: PendingOutputs | None, output: Output, cause: BaseException):
        super().__init__(repr(cause))
        self.pending = pending  # None: which record it was is not known (several in one batch)
        self.output = output
        self.cause = cause


@dataclass(eq=False)
class _Partition:
    tp: TopicPartition
    producer: AIOKafkaProducer | None = None
    pending: dict[int, PendingOutputs] = field(default_factory=dict)
    fenced_at: float | None = None
    unsure: int | None = None  # a commit point whose transaction's outcome is unknown
    one_by_one: bool = False  # after a refusal: one record per batch, to find the refused one

    @property
    def ready(self) -> bool:
        return self.producer is not None and self.fenced_at is None


@dataclass(frozen=True, slots=True)
class CommitResult:
    committed: dict[TopicPartition, int]
    fenced: set[TopicPartition]


class TransactionalCommitter:
    """A transactional producer per assigned input partition, and the commits through them."""

    def __init__(
        self,
        kafka: KafkaSettings,
        bootstrap: str,
        metrics: StreamMetrics,
        *,
        max_request_size: int,
        dlq_max_record_bytes: int,
        consumer_name: str = "pipeline",
    ) -> None:
        self._kafka = kafka
        self._consumer_name = consumer_name  # who dead-letters a refused output
        self._bootstrap = bootstrap
        self._metrics = metrics
        self._max_request_size = max_request_size
        self._dlq_max = dlq_max_record_bytes
        self._parts: dict[TopicPartition, _Partition] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()  # one transaction per partition at a time; revoke waits
        self._reclaim_after_s = kafka.session_timeout_ms / 1000

    def bind(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer

    def _producer(self, transactional_id: str) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            **kafka_client_options(self._kafka, self._bootstrap),
            transactional_id=transactional_id,
            transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
            acks="all",
            linger_ms=5,
            max_request_size=self._max_request_size,
        )

    def transactional_id(self, tp: TopicPartition) -> str:
        return f"{self._kafka.group_id}-{tp.topic}-{tp.partition}"

    # -- start-up -------------------------------------------------------------------------------

    async def probe(self, timeout_s: float) -> None:
        """Refuse to start on a broker without transactions, instead of failing per partition."""
        await probe_transactions(self._kafka, self._bootstrap, timeout_s)

    # -- the partitions' lifecycle --------------------------------------------------------------

    async def assign(self, tps: set[TopicPartition], timeout_s: float) -> None:
        """Open each new partition's producer (fencing its previous owner), then seek the
        consumer to the committed offset as it stands now that no zombie can move it."""
        async with self._lock:
            for tp in tps:
                self._parts.setdefault(tp, _Partition(tp))
            await asyncio.gather(*(self._open(self._parts[tp], timeout_s) for tp in tps))

    async def _open(self, part: _Partition, timeout_s: float) -> bool:
        if part.producer is None:
            producer = self._producer(self.transactional_id(part.tp))
            try:
                await asyncio.wait_for(producer.start(), timeout_s)
            except (KafkaError, TimeoutError) as exc:
                log.warning("no transactional producer for %s yet (%r); retried", part.tp, exc)
                await _bounded(producer.stop(), timeout_s, "transactional producer")
                return False
            part.producer = producer
            part.fenced_at = None
        consumer = self._consumer
        if consumer is None:
            return True
        try:
            committed = await asyncio.wait_for(consumer.committed(part.tp), timeout_s)
        except (KafkaError, TimeoutError) as exc:
            log.warning("committed offset of %s unknown (%r); retried", part.tp, exc)
            await self._discard(part, timeout_s)
            return False
        if part.unsure is not None and committed is not None and committed >= part.unsure:
            self._drop_below(part, committed)  # the lost transaction did commit
        part.unsure = None
        if committed is not None and part.tp in consumer.assignment() and not part.pending:
            consumer.seek(part.tp, committed)
        return True

    def blocked(self) -> set[TopicPartition]:
        """Partitions not to fetch from: fenced, or without a working producer."""
        return {tp for tp, part in self._parts.items() if not part.ready}

    def hold(self, tp: TopicPartition, offset: int, record: InputRecord) -> PendingOutputs:
        part = self._parts.setdefault(tp, _Partition(tp))
        pending = part.pending[offset] = PendingOutputs(record)
        return pending

    def held_bytes(self) -> int:
        return sum(p.size for part in self._parts.values() for p in part.pending.values())

    async def revoke(self, tps: set[TopicPartition], timeout_s: float) -> None:
        """Drop what the revoked partitions held (the new owner redoes it) and close them."""
        async with self._lock:
            parts = [self._parts.pop(tp) for tp in tps if tp in self._parts]
            await asyncio.gather(*(self._discard(part, timeout_s) for part in parts))

    async def close(self, timeout_s: float) -> None:
        await self.revoke(set(self._parts), timeout_s)

    async def _discard(self, part: _Partition, timeout_s: float) -> None:
        producer, part.producer = part.producer, None
        if producer is None:
            return
        manager = producer._txn_manager  # no public "in a transaction?" question in aiokafka
        if manager is not None and manager.is_in_transaction():
            with contextlib.suppress(KafkaError, TimeoutError):
                await asyncio.wait_for(producer.abort_transaction(), timeout_s)
        await _bounded(producer.stop(), timeout_s, "transactional producer")

    # -- commits -------------------------------------------------------------------------------

    async def commit(self, points: dict[TopicPartition, int], timeout_s: float) -> CommitResult:
        """Commit each partition's prefix with its outputs; returns what did commit."""
        committed: dict[TopicPartition, int] = {}
        fenced: set[TopicPartition] = set()
        async with self._lock:
            await self._reopen(timeout_s)
            parts = [
                (self._parts[tp], point)
                for tp, point in points.items()
                if tp in self._parts and self._parts[tp].ready
            ]
            results = await asyncio.gather(
                *(self._commit_bounded(part, point, timeout_s) for part, point in parts)
            )
            for (part, point), outcome in zip(parts, results, strict=True):
                if outcome == "committed":
                    committed[part.tp] = point
                elif outcome == "fenced":
                    fenced.add(part.tp)
        return CommitResult(committed, fenced)

    async def _reopen(self, timeout_s: float) -> None:
        """Retry partitions without a producer; reclaim ones fenced while the group kept them."""
        now = time.monotonic()
        assigned = self._consumer.assignment() if self._consumer is not None else set()
        for part in self._parts.values():
            if part.fenced_at is not None:
                if part.tp not in assigned or now - part.fenced_at < self._reclaim_after_s:
                    continue
                log.warning("%s was fenced but is still ours; reclaiming it", part.tp)
                part.fenced_at = None
            if part.producer is None:
                await self._open(part, timeout_s)

    async def _commit_bounded(self, part: _Partition, point: int, timeout_s: float) -> str:
        try:
            await asyncio.wait_for(self._commit_one(part, point), max(MIN_WAIT_S, timeout_s))
        except FENCED as exc:
            log.warning("%s: producer fenced (%r): another owner has the partition", part.tp, exc)
            part.fenced_at = time.monotonic()
            part.pending.clear()
            await self._discard(part, MIN_WAIT_S)
            self._metrics.commit_failures.inc()
            return "fenced"
        except _Refused as exc:
            self._metrics.publish_refused.inc()
            if exc.pending is None:
                log.warning("%s: a record was refused (%r); finding which", part.tp, exc.cause)
                part.one_by_one = True
            else:
                self._downgrade(exc.pending, exc.output, exc.cause)
            await self._discard(part, timeout_s)  # a new epoch aborts the transaction
            return "retry"
        except (KafkaError, TimeoutError) as exc:
            log.warning("%s: transaction failed (%r); retried with a new producer", part.tp, exc)
            part.unsure = point  # its commit may have reached the coordinator after all
            await self._discard(part, MIN_WAIT_S)
            self._metrics.commit_failures.inc()
            return "retry"
        part.one_by_one = False
        self._drop_below(part, point)
        return "committed"

    async def _commit_one(self, part: _Partition, point: int) -> None:
        producer = part.producer
        assert producer is not None
        held = [part.pending[offset] for offset in sorted(part.pending) if offset < point]
        await producer.begin_transaction()
        sent: list[tuple[PendingOutputs, Output, asyncio.Future[object]]] = []
        for pending in held:
            for output in pending.outputs:
                try:
                    future = await producer.send(
                        output.topic, value=output.value, key=output.key, headers=output.headers
                    )
                except KafkaError as exc:  # refused before sending (client-side size limit)
                    if is_refusal(exc):
                        raise _Refused(pending, output, exc) from exc
                    raise
                if part.one_by_one:
                    await self._delivered(pending, output, future, alone=True)
                else:
                    sent.append((pending, output, future))
        for pending, output, future in sent:
            await self._delivered(pending, output, future, alone=False)
        await producer.send_offsets_to_transaction({part.tp: point}, self._kafka.group_id)
        await producer.commit_transaction()

    @staticmethod
    async def _delivered(
        pending: PendingOutputs, output: Output, future: Awaitable[object], *, alone: bool
    ) -> None:
        try:
            await future
        except KafkaError as exc:
            if is_refusal(exc):
                # Refusals come per batch: several records may share one, so only a record
                # sent alone is known to be the refused one.
                raise _Refused(pending if alone else None, output, exc) from exc
            raise

    def _drop_below(self, part: _Partition, point: int) -> None:
        for offset in [offset for offset in part.pending if offset < point]:
            del part.pending[offset]

    def _downgrade(self, pending: PendingOutputs, refused: Output, cause: BaseException) -> None:
        """Replace a record's outputs by one dead letter: with its original first, then without."""
        pending.downgrades += 1
        record = pending.record
        is_dlq = refused.topic == self._kafka.dlq_topic
        reason = refused.header("moderation-error-reason") if is_dlq else None
        letter = DeadLetter(
            source=record.source,
            key=record.key,
            value=record.value,
            headers=record.headers,
            reason=reason or Reason.OUTPUT_TOO_LARGE.value,
            message=f"{refused.topic} refused the record: {cause!r}",
            request_id=refused.header("moderation-id"),
            consumer=self._consumer_name,
        )
        if pending.downgrades > MAX_DOWNGRADES:
            log.error("even a small dead letter was refused (%r); the partition waits", cause)
        if not is_dlq and pending.downgrades == 1:
            out = dead_letter_output(letter, max_record_bytes=self._dlq_max)
        else:
            letter = letter.without_original(f"the broker refused it: {cause!r}")
            out = dead_letter_output(letter, max_record_bytes=SMALL_DEAD_LETTER)
        log.error("offset %d: %s; dead-lettering it instead", record.source.offset, letter.message)
        self._metrics.dead_letters.labels(reason=letter.reason).inc()
        pending.outputs = [Output(self._kafka.dlq_topic, out.key, out.value, out.headers)]


async def probe_transactions(kafka: KafkaSettings, bootstrap: str, timeout_s: float) -> None:
    """A ConfigError unless the broker hands out a transactional producer (the embedded Tansu
    refuses one): exactly_once refuses to start rather than failing per partition."""
    producer = AIOKafkaProducer(
        **kafka_client_options(kafka, bootstrap),
        transactional_id=f"{kafka.group_id}-probe-{uuid.uuid4().hex[:12]}",
        transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
        acks="all",
    )
    try:
        await asyncio.wait_for(producer.start(), timeout_s)
    except (KafkaError, TimeoutError) as exc:
        what = "did not answer" if isinstance(exc, TimeoutError) else f"refused it ({exc!r})"
        raise ConfigError(
            "MODERATION_PROCESSING_GUARANTEE",
            f"exactly_once needs a broker with Kafka transactions; the broker at "
            f"{bootstrap} was asked for a transactional producer and {what}. Use a "
            f"broker with transactions (Apache Kafka, noida-db) or at_least_once",
        ) from exc
    finally:
        await _bounded(producer.stop(), timeout_s, "probe producer")


async def _bounded(work: Awaitable[None], timeout_s: float, name: str) -> None:
    """A close that may not take longer than ``timeout_s``, whatever the client does."""
    try:
        await asyncio.wait_for(work, max(MIN_WAIT_S, timeout_s))
    except TimeoutError:
        log.warning("%s did not close within %.1fs; left behind", name, timeout_s)
    except KafkaError as exc:
        log.warning("%s failed to close: %r", name, exc)
