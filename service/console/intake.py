"""Review records from the review topic into the console's store.

All console replicas share one store and one consumer group (``MODERATION_CONSOLE_GROUP_ID``):
Kafka gives each partition to one replica, which writes its records into the shared store, so
every replica's queue shows every item. An offset is committed only after its records are in
the store, so a crash means redelivery, never a lost item; storing is an idempotent upsert keyed
by loop name, so a redelivery changes nothing and a requeue (the sink's ``requeue`` fallback,
``review.requeued`` higher) renews the deadline of an item still pending.

Items of managed A2I loops are left to A2I's workers unless ``MODERATION_CONSOLE_INCLUDE_MANAGED``
is set; two paths answering one loop would be decided by whichever came first.

Every record is parsed with the shared :func:`~service.review.records.parse_review_record` (the
sink's parser too) before it is stored. One that is not a review record (bad JSON, a confidence
of ``"abc"``, a list for a bucket) goes to the DLQ with reason ``invalid_review_record`` and
``consumer: console``, and the offset is committed only after the broker acknowledged that dead
letter: a bad record is neither lost nor stored, so it can never break a page for every reviewer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import CommitFailedError, KafkaError

from service.console.metrics import ConsoleMetrics
from service.console.storage import ConsoleStore, StoreError
from service.errors import InputError, Reason
from service.kafka.client import kafka_client_options
from service.kafka.poison import Polled, UndecodableRecord, reader_for
from service.kafka.publisher import Publisher, publish_dead_letter
from service.messages import DeadLetter, Source, id_of_invalid
from service.retry import full_jitter
from service.review.records import ReviewRecord, parse_review_record, review_record_limit
from service.settings import KafkaSettings

log = logging.getLogger(__name__)

CONSUMER = "console"  # the DLQ record's ``consumer``: who dead-lettered it


async def store_review(store: ConsoleStore, review: ReviewRecord, value: bytes, now: float) -> bool:
    """Add or refresh the queue item of a parsed review record; whether anything changed."""
    return await store.upsert_item(
        loop_name=review.loop_name,
        request_id=review.id,
        record=value,
        created_at=review.created_at.timestamp(),
        deadline=review.deadline.timestamp(),
        requeued=review.requeued,
        now=now,
    )


class Intake:
    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        bootstrap: str,
        topic: str,
        group_id: str,
        store: ConsoleStore,
        metrics: ConsoleMetrics,
        clock: Callable[[], float],
        include_managed: bool,
        dlq_max_record_bytes: int,
    ) -> None:
        self._kafka = kafka
        self._bootstrap = bootstrap
        self._topic = topic
        self._group_id = group_id
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._include_managed = include_managed
        self._max_record_bytes = review_record_limit(kafka.max_input_bytes)
        self._dlq_max_record_bytes = dlq_max_record_bytes
        self.started = False

    def parse(self, value: bytes | None) -> ReviewRecord:
        """The shared parser (the sink's too), with the largest record the pipeline may write."""
        return parse_review_record(value, max_bytes=self._max_record_bytes)

    async def store_record(self, review: ReviewRecord, value: bytes) -> str:
        """Store one valid record; returns the outcome. Raises StoreError to retry."""
        if review.mode == "managed" and not self._include_managed:
            return "skipped_managed"
        changed = await store_review(self._store, review, value, self._clock())
        return "stored" if changed else "unchanged"

    async def run(self, stop: asyncio.Event) -> None:
        producer = AIOKafkaProducer(
            acks="all",
            enable_idempotence=self._kafka.enable_idempotence,
            linger_ms=0,
            request_timeout_ms=15_000,
            **kafka_client_options(self._kafka, self._bootstrap),
        )
        consumer, safe = reader_for(
            self._kafka,
            self._bootstrap,
            group_id=self._group_id,
            topics=[self._topic],
            max_record_bytes=self._max_record_bytes,
        )
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(producer.stop)  # also after a failed start
            await producer.start()
            publisher = Publisher(producer, self._metrics)
            stack.push_async_callback(self._stop_consumer, consumer)
            stack.push_async_callback(safe.close)
            await consumer.start()
            self.started = True
            log.info("console intake consuming %s as group %s", self._topic, self._group_id)
            while not stop.is_set():
                batches = await safe.getmany(timeout_ms=500, max_records=200)
                records = [record for batch in batches.values() for record in batch]
                if not records:
                    continue
                await self._handle_all(records, publisher, stop)
                if stop.is_set():
                    break  # not all handled: leave the offsets, the records come again
                try:
                    await consumer.commit()
                except (CommitFailedError, KafkaError) as exc:
                    # A rebalance took the partitions away: the new owner re-reads and
                    # re-stores them (idempotently).
                    log.warning("console intake commit failed: %r", exc)

    async def _stop_consumer(self, consumer: AIOKafkaConsumer) -> None:
        self.started = False
        with contextlib.suppress(KafkaError):
            await consumer.stop()

    async def _handle_all(
        self,
        records: list[Polled],
        publisher: Publisher,
        stop: asyncio.Event,
    ) -> None:
        """Store each valid record and dead-letter each invalid one, in order; a store or
        broker failure is retried (with backoff) until it works or the console stops."""
        index = 0
        attempt = 0
        while index < len(records) and not stop.is_set():
            record = records[index]
            try:
                outcome = await self._handle(record, publisher)
            except StoreError as exc:
                attempt += 1
                delay = full_jitter(attempt, base=0.5, cap=30.0)
                log.warning(
                    "console store unavailable (%s); retry %d in %.1fs", exc, attempt, delay
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                continue
            except Exception as exc:  # a bug on one record must not wedge the intake
                log.exception("console intake failed on %s@%d", record.topic, record.offset)
                bug = InputError(Reason.INTERNAL_ERROR, repr(exc))
                await self._dead_letter(record, bug, publisher)
                outcome = "dead_lettered"
            self._metrics.console_intake.labels(outcome=outcome).inc()
            attempt = 0
            index += 1

    async def _handle(self, record: Polled, publisher: Publisher) -> str:
        if isinstance(record, UndecodableRecord):
            await self._dead_letter(
                record, InputError(Reason.UNDECODABLE_RECORD, record.error), publisher
            )
            return "dead_lettered"
        try:
            review = self.parse(record.value)
        except InputError as exc:
            await self._dead_letter(record, exc, publisher)
            return "dead_lettered"
        assert record.value is not None  # the parser refuses tombstones
        return await self.store_record(review, record.value)

    async def _dead_letter(self, record: Polled, error: InputError, publisher: Publisher) -> None:
        """Publish the record to the DLQ and wait for the broker's ack (before any commit).

        Broker trouble is retried inside :class:`Publisher` (the offset waits); a DLQ that refuses
        even the sized dead letter gets one without the original, as the pipeline does.
        """
        log.warning(
            "review record %s/%d@%d dead-lettered: %s",
            record.topic,
            record.partition,
            record.offset,
            error.message,
        )
        source = Source(record.topic, record.partition, record.offset, record.timestamp)
        request_id = id_of_invalid(record.value, self._max_record_bytes)
        letter = DeadLetter(
            source=source,
            key=record.key,
            value=record.value,
            headers=list(record.headers),
            reason=error.reason,
            message=error.message,
            request_id=request_id,
            consumer=CONSUMER,
        )
        await publish_dead_letter(
            publisher,
            self._kafka.dlq_topic,
            letter,
            max_record_bytes=self._dlq_max_record_bytes,
        )
        self._metrics.dead_letters.labels(reason=str(error.reason)).inc()
