"""Polling that survives records the Kafka client cannot decode.

aiokafka raises out of ``getmany()`` when a fetched record has a header name that is not UTF-8,
and it has already moved its position past the records it read before that one (they are lost
with the exception). Retrying the call retries the same record forever: one hostile producer
stops the partition, and a restart changes nothing.

:class:`PoisonSafeConsumer` wraps the consumer at exactly that call. On a decoding failure it
rewinds every partition it polls to the offset after the last record it really handed out, reads
the same bytes again itself (:mod:`service.kafka.raw_records`), and returns them in order: every
good record as the usual ``ConsumerRecord``, every bad one as an :class:`UndecodableRecord`
with its raw key, value and headers, for the caller to dead-letter. It then seeks past what it
returned, so the partition moves on and nothing is skipped or delivered twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.structs import ConsumerRecord

from service.kafka.client import kafka_client_options
from service.kafka.raw_records import CorruptBatch, RawRecord, split_records
from service.settings import KafkaSettings

log = logging.getLogger(__name__)

#: What aiokafka raises from getmany() on a record it cannot decode (header names).
DECODE_ERRORS: tuple[type[Exception], ...] = (UnicodeDecodeError,)
RECOVERY_RETRY_S = 1.0
RAW_FETCH_WAIT_MS = 500
CORRUPT_TRIES = 3  # reads of a batch our reader cannot parse before its first record is given up


@dataclass(frozen=True, slots=True)
class UndecodableRecord:
    """A record the client could not decode; its parts are kept as raw bytes."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str | bytes, bytes | None], ...]  # names as text where they decode
    error: str


Polled: TypeAlias = "ConsumerRecord | UndecodableRecord"


def reader_for(
    kafka: KafkaSettings,
    bootstrap: str,
    *,
    group_id: str,
    topics: list[str],
    max_record_bytes: int,
    read_committed: bool = False,
    group_instance_id: str | None = None,
) -> tuple[AIOKafkaConsumer, PoisonSafeConsumer]:
    """A consumer of ``topics`` in ``group_id`` (commits by hand, earliest first) and its
    poison-safe reader, for the consumers that need no rebalance listener of their own.

    ``read_committed`` (exactly_once): the consumer hands out no record of an aborted or open
    transaction; the raw re-read of an undecodable batch stops at the last stable offset too
    (but does not drop aborted records: it has no abort index). ``group_instance_id``: static
    membership (KIP-345)."""
    options = kafka_client_options(kafka, bootstrap)
    fetch_bytes = max(max_record_bytes, 1024 * 1024) + 64 * 1024
    consumer = AIOKafkaConsumer(
        group_id=group_id,
        group_instance_id=group_instance_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=max(300, kafka.session_timeout_ms // 3),
        fetch_max_wait_ms=kafka.fetch_max_wait_ms,
        max_partition_fetch_bytes=fetch_bytes,
        isolation_level="read_committed" if read_committed else "read_uncommitted",
        **options,
    )
    safe = PoisonSafeConsumer(
        consumer,
        options,
        max_partition_fetch_bytes=fetch_bytes,
        isolation_level=1 if read_committed else 0,
    )
    consumer.subscribe(topics, listener=safe.listener())
    return consumer, safe


class PoisonSafeConsumer:
    """``getmany()`` that hands out undecodable records instead of raising on them."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        client_options: dict[str, object],
        *,
        max_partition_fetch_bytes: int = 1024 * 1024,
        isolation_level: int = 0,
    ) -> None:
        self._consumer = consumer
        self._client_options = client_options
        self._max_bytes = max_partition_fetch_bytes
        self._isolation_level = isolation_level
        self._client: Any = None
        self._next: dict[TopicPartition, int] = {}
        self._corrupt: dict[tuple[TopicPartition, int], int] = {}
        self.recoveries = 0

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop what we know of revoked partitions (the next owner starts from the commit)."""
        for tp in partitions:
            self._next.pop(tp, None)

    def next_offset(self, tp: TopicPartition) -> int | None:
        """The offset after the last record handed out for ``tp`` (None before the first)."""
        return self._next.get(tp)

    def listener(self) -> ConsumerRebalanceListener:
        """For consumers that need no rebalance listener of their own: forgets on revoke."""
        return _Forget(self)

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int, max_records: int | None = None
    ) -> dict[TopicPartition, list[Polled]]:
        try:
            batches: dict[TopicPartition, list[Polled]] = await self._consumer.getmany(
                *partitions, timeout_ms=timeout_ms, max_records=max_records
            )
        except DECODE_ERRORS as exc:
            log.warning("a fetched record cannot be decoded (%r); reading it raw", exc)
            batches = await self._recover(partitions, max_records or 500, repr(exc))
        for tp, records in batches.items():
            if records:
                self._next[tp] = records[-1].offset + 1
        return batches

    async def _recover(
        self, partitions: tuple[TopicPartition, ...], max_records: int, error: str
    ) -> dict[TopicPartition, list[Polled]]:
        consumer = self._consumer
        paused = consumer.paused()
        polled = [tp for tp in (partitions or consumer.assignment()) if tp not in paused]
        starts: dict[TopicPartition, int] = {}
        result: dict[TopicPartition, list[Polled]] = {}
        budget = max_records
        try:
            for tp in polled:
                starts[tp] = start = await self._start_of(tp)
                records = [] if budget <= 0 else await self._read_or_give_up(tp, start, error)
                records = records[:budget]
                budget -= len(records)
                if records:
                    result[tp] = records
                consumer.seek(tp, records[-1].offset + 1 if records else start)
        except (KafkaError, OSError) as exc:
            # Cannot read it now: put every partition back where it was and let the next poll
            # try again; nothing handed out, so nothing is lost.
            log.warning("raw read failed (%r); retrying in %.0fs", exc, RECOVERY_RETRY_S)
            for tp, start in starts.items():
                with contextlib.suppress(KafkaError):  # revoked meanwhile: its owner re-reads
                    consumer.seek(tp, start)
            await asyncio.sleep(RECOVERY_RETRY_S)
            return {}
        self.recoveries += 1
        return result

    async def _read_or_give_up(self, tp: TopicPartition, start: int, error: str) -> list[Polled]:
        """The records from ``start``; a batch that stays unreadable is given up one offset at
        a time (an UndecodableRecord without its parts), never retried forever."""
        try:
            raw = await self._read(tp, start)
        except CorruptBatch as exc:
            tries = self._corrupt.get((tp, start), 0) + 1
            self._corrupt[(tp, start)] = tries
            if tries < CORRUPT_TRIES:
                raise KafkaError(f"unreadable batch at {tp}@{start}: {exc}") from exc
            del self._corrupt[(tp, start)]
            log.error("giving up on %s@%d after %d unreadable reads: %s", tp, start, tries, exc)
            return [
                UndecodableRecord(
                    topic=tp.topic,
                    partition=tp.partition,
                    offset=start,
                    timestamp=None,
                    key=None,
                    value=None,
                    headers=(),
                    error=f"its batch cannot be read ({exc}; {error})",
                )
            ]
        self._corrupt.pop((tp, start), None)
        return [_polled(tp, record, error) for record in raw]

    async def _start_of(self, tp: TopicPartition) -> int:
        """The offset after the last record handed out, else where the group left off."""
        if tp in self._next:
            return self._next[tp]
        committed = await self._consumer.committed(tp)
        if committed is not None:
            return int(committed)
        beginning = await self._consumer.beginning_offsets([tp])
        return int(beginning[tp])

    async def _read(self, tp: TopicPartition, offset: int) -> list[RawRecord]:
        client = await self._client_ready(tp.topic)
        leader = client.cluster.leader_for_partition(tp)
        if leader is None or leader < 0:
            await client.force_metadata_update()
            leader = client.cluster.leader_for_partition(tp)
            if leader is None or leader < 0:
                raise KafkaError(f"no leader known for {tp}")
        # Wait for one byte at most briefly: some brokers (Tansu) answer a zero-wait fetch empty.
        request = FetchRequest(
            RAW_FETCH_WAIT_MS, 1, self._max_bytes, self._isolation_level,
            [(tp.topic, [(tp.partition, offset, self._max_bytes)])],
        )  # fmt: skip
        response = await client.send(leader, request)
        for _, partition_data in response.topics:
            for partition, error_code, _, *rest in partition_data:
                if partition != tp.partition:
                    continue
                error = for_code(error_code)
                if error_code != 0:
                    raise error()
                data = bytes(rest[-1] or b"")
                return [raw for raw in split_records(data) if raw.offset >= offset]
        return []

    async def _client_ready(self, topic: str) -> Any:
        if self._client is None:
            client = AIOKafkaClient(**self._client_options)
            await client.bootstrap()
            self._client = client
        await self._client.add_topic(topic)
        return self._client


def _polled(tp: TopicPartition, raw: RawRecord, error: str) -> Polled:
    try:
        headers = tuple((name.decode("utf-8"), value) for name, value in raw.headers)
    except UnicodeDecodeError:
        return UndecodableRecord(
            topic=tp.topic,
            partition=tp.partition,
            offset=raw.offset,
            timestamp=raw.timestamp,
            key=raw.key,
            value=raw.value,
            headers=tuple((_text_or_bytes(name), value) for name, value in raw.headers),
            error=f"a header name is not UTF-8 ({error})",
        )
    return ConsumerRecord(
        topic=tp.topic,
        partition=tp.partition,
        offset=raw.offset,
        timestamp=raw.timestamp,
        timestamp_type=raw.timestamp_type,
        key=raw.key,
        value=raw.value,
        checksum=None,
        serialized_key_size=-1 if raw.key is None else len(raw.key),
        serialized_value_size=-1 if raw.value is None else len(raw.value),
        headers=headers,
    )


def _text_or_bytes(name: bytes) -> str | bytes:
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return name


class _Forget(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, safe: PoisonSafeConsumer) -> None:
        self._safe = safe

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._safe.forget(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        return None
