"""Small helpers for tests that talk to a real broker: topics, producing, collecting outputs."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord


@dataclass(frozen=True)
class Topics:
    input: str
    approved: str
    rejected: str
    review: str
    dlq: str
    group: str

    @classmethod
    def unique(cls, tag: str) -> Topics:
        return cls(
            input=f"t{tag}.requests",
            approved=f"t{tag}.approved",
            rejected=f"t{tag}.rejected",
            review=f"t{tag}.review",
            dlq=f"t{tag}.dlq",
            group=f"g{tag}",
        )

    @property
    def outputs(self) -> dict[str, str]:
        return {
            "approved": self.approved,
            "rejected": self.rejected,
            "review": self.review,
            "dlq": self.dlq,
        }

    def env(self) -> dict[str, str]:
        return {
            "MODERATION_INPUT_TOPIC": self.input,
            "MODERATION_APPROVED_TOPIC": self.approved,
            "MODERATION_REJECTED_TOPIC": self.rejected,
            "MODERATION_REVIEW_TOPIC": self.review,
            "MODERATION_DLQ_TOPIC": self.dlq,
            "MODERATION_GROUP_ID": self.group,
        }


async def create_topics(bootstrap: str, names: list[str], partitions: int = 3) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1) for name in names])
    finally:
        await admin.close()


async def produce(
    bootstrap: str,
    topic: str,
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]],
) -> None:
    # One record per batch: Tansu's end_offsets() is wrong after multi-record batches.
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        max_batch_size=16,
        linger_ms=0,
        max_request_size=16 * 1024 * 1024,
    )
    await producer.start()
    try:
        futures = [
            await producer.send(topic, key=key, value=value, headers=headers)
            for key, value, headers in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def request(request_id: str, image: Mapping[str, object], **extra: object) -> bytes:
    return orjson.dumps({"id": request_id, "image": image, **extra})


async def collect(
    bootstrap: str, topics: list[str], expected: int, timeout_s: float = 60.0
) -> list[ConsumerRecord]:
    """Read the topics from the beginning until ``expected`` records arrived or time runs out."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(await _partitions_for(consumer, topic))
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[ConsumerRecord] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(records) < expected and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def _partitions_for(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    for _ in range(50):
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return set(partitions)
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)
    raise AssertionError(f"topic {topic} has no partitions")


async def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
        return {tp.partition: meta.offset for tp, meta in offsets.items()}
    finally:
        await admin.close()


def by_topic(records: list[ConsumerRecord]) -> dict[str, list[ConsumerRecord]]:
    grouped: dict[str, list[ConsumerRecord]] = {}
    for record in records:
        grouped.setdefault(record.topic, []).append(record)
    return grouped


class _RawHeaderName(str):
    """A header name whose "UTF-8" is arbitrary bytes: how a hostile producer writes one."""

    raw: bytes

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


def raw_header_name(raw: bytes) -> str:
    name = _RawHeaderName("raw")
    name.raw = raw
    return name


async def send_records_with_raw_headers(
    producer: AIOKafkaProducer,
    topic: str,
    partition: int,
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]],
) -> None:
    """Send records as ONE batch built by aiokafka's pure-Python builder, which writes whatever a
    header name's ``encode()`` returns (the C builder would refuse a non-UTF-8 name).
    """
    from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

    batch = producer.create_batch()
    batch._builder = _DefaultRecordBatchBuilderPy(
        2,
        0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=0,
        batch_size=64 * 1024 * 1024,
    )
    for key, value, headers in records:
        assert batch.append(timestamp=None, key=key, value=value, headers=headers) is not None
    future = await producer.send_batch(batch, topic, partition=partition)
    await future
