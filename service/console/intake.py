"""Review records from the review topic into the console's store.

All console replicas share one store and one consumer group (``MODERATION_CONSOLE_GROUP_ID``):
Kafka gives each partition to one replica, which writes its records into the shared store, so
every replica's queue shows every item. An offset is committed only after its records are in
the store, so a crash means redelivery, never a lost item; storing is an idempotent upsert keyed
by loop name, so a redelivery changes nothing and a requeue (the sink's ``requeue`` fallback,
``review.requeued`` higher) renews the deadline of an item still pending.

Items of managed A2I loops are left to A2I's workers unless ``MODERATION_CONSOLE_INCLUDE_MANAGED``
is set; two paths answering one loop would be decided by whichever came first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError, KafkaError

from service.console.metrics import ConsoleMetrics
from service.console.store import ConsoleStore, StoreError
from service.retry import full_jitter
from service.runner import kafka_client_options
from service.settings import KafkaSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReviewItem:
    loop_name: str
    request_id: str
    mode: str
    created_at: float
    deadline: float
    requeued: int


def _epoch(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def parse_review(value: bytes | None, *, sla_s: float, now: float) -> ReviewItem:
    """The fields the console needs from a review record; ValueError if it is not one."""
    if value is None:
        raise ValueError("record has no value")
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(record, dict) or not isinstance(record.get("review"), dict):
        raise ValueError("not a review record (no 'review' object)")  # noqa: TRY004  (one type)
    review = record["review"]
    loop = review.get("human_loop_name")
    request_id = record.get("id")
    if not isinstance(loop, str) or not loop or len(loop) > 63:
        raise ValueError("review.human_loop_name must be a string of 1-63 characters")
    if not isinstance(request_id, str) or not request_id:
        raise ValueError("id must be a non-empty string")
    created = _epoch(review.get("created_at")) or now
    deadline = _epoch(review.get("deadline")) or created + sla_s
    requeued = review.get("requeued", 0)
    return ReviewItem(
        loop_name=loop,
        request_id=request_id,
        mode=str(review.get("mode", "self_hosted")),
        created_at=created,
        deadline=deadline,
        requeued=requeued if isinstance(requeued, int) else 0,
    )


async def store_review(store: ConsoleStore, item: ReviewItem, record: bytes, now: float) -> bool:
    """Add or refresh the queue item of a parsed review record; whether anything changed."""
    return await store.upsert_item(
        loop_name=item.loop_name,
        request_id=item.request_id,
        record=record,
        created_at=item.created_at,
        deadline=item.deadline,
        requeued=item.requeued,
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
        sla_s: float,
        include_managed: bool,
    ) -> None:
        self._kafka = kafka
        self._bootstrap = bootstrap
        self._topic = topic
        self._group_id = group_id
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._sla_s = sla_s
        self._include_managed = include_managed
        self.started = False

    async def store_record(self, value: bytes | None) -> str:
        """Store one record; returns the outcome (also counted). Raises StoreError to retry."""
        try:
            item = parse_review(value, sla_s=self._sla_s, now=self._clock())
        except ValueError as exc:
            log.warning("review record ignored by the console: %s", exc)
            outcome = "malformed"
        else:
            if item.mode == "managed" and not self._include_managed:
                outcome = "skipped_managed"
            else:
                assert value is not None
                changed = await store_review(self._store, item, value, self._clock())
                outcome = "stored" if changed else "unchanged"
        self._metrics.console_intake.labels(outcome=outcome).inc()
        return outcome

    async def run(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            self._topic,
            group_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self._kafka.session_timeout_ms,
            heartbeat_interval_ms=max(300, self._kafka.session_timeout_ms // 3),
            fetch_max_wait_ms=self._kafka.fetch_max_wait_ms,
            max_partition_fetch_bytes=max(self._kafka.max_input_bytes, 1024 * 1024) * 2,
            fetch_max_bytes=64 * 1024 * 1024,
            **kafka_client_options(self._kafka, self._bootstrap),
        )
        await consumer.start()
        self.started = True
        log.info("console intake consuming %s as group %s", self._topic, self._group_id)
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=500, max_records=200)
                records = [record for batch in batches.values() for record in batch]
                if not records:
                    continue
                await self._store_all([r.value for r in records], stop)
                if stop.is_set():
                    break  # not all stored: leave the offsets, the records come again
                try:
                    await consumer.commit()
                except (CommitFailedError, KafkaError) as exc:
                    # A rebalance took the partitions away: the new owner re-reads and
                    # re-stores them (idempotently).
                    log.warning("console intake commit failed: %r", exc)
        finally:
            self.started = False
            with contextlib.suppress(KafkaError):
                await consumer.stop()

    async def _store_all(self, values: list[bytes | None], stop: asyncio.Event) -> None:
        index = 0
        attempt = 0
        while index < len(values) and not stop.is_set():
            try:
                await self.store_record(values[index])
            except StoreError as exc:
                attempt += 1
                delay = full_jitter(attempt, base=0.5, cap=30.0)
                log.warning(
                    "console store unavailable (%s); retry %d in %.1fs", exc, attempt, delay
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                continue
            attempt = 0
            index += 1
