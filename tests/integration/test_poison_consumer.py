"""A record aiokafka cannot decode, on a real broker: handed out raw, in order, nothing lost."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from service.kafka.poison import PoisonSafeConsumer, UndecodableRecord
from tests.kafka_helpers import create_topics, raw_header_name, send_records_with_raw_headers

pytestmark = pytest.mark.kafka


async def _produce(bootstrap: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    try:
        # One batch: two good records around a poison one, then more records after it.
        await send_records_with_raw_headers(
            producer,
            topic,
            0,
            [
                (b"k0", b"v0", [("trace", b"a")]),
                (b"k1", b"v1", [(raw_header_name(b"\xff\xfe"), b"x"), ("trace", b"b")]),
                (b"k2", b"v2", []),
            ],
        )
        await send_records_with_raw_headers(producer, topic, 0, [(b"k3", b"v3", [])])
        await send_records_with_raw_headers(producer, topic, 1, [(b"k4", b"v4", [])])
    finally:
        await producer.stop()


async def _consumer(bootstrap: str, topic: str) -> AIOKafkaConsumer:
    """Partitions assigned by hand (no group join wait); a group id so committed() works."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=f"g{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=2000,
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    consumer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
    return consumer


async def test_plain_aiokafka_raises_on_the_record(kafka_bootstrap: str) -> None:
    """The failure this module exists for (if aiokafka ever fixes it, this test says so)."""
    topic = f"poison-{uuid.uuid4().hex[:8]}"
    await create_topics(kafka_bootstrap, [topic], partitions=2)
    await _produce(kafka_bootstrap, topic)
    consumer = await _consumer(kafka_bootstrap, topic)
    try:
        with pytest.raises(UnicodeDecodeError):  # noqa: PT012  (the record arrives in some poll)
            for _ in range(100):
                await consumer.getmany(timeout_ms=200)
    finally:
        await consumer.stop()


@pytest.mark.parametrize("max_records", [1, 2, 500])
async def test_every_record_once_in_order(kafka_bootstrap: str, max_records: int) -> None:
    topic = f"poison-{uuid.uuid4().hex[:8]}"
    await create_topics(kafka_bootstrap, [topic], partitions=2)
    await _produce(kafka_bootstrap, topic)
    consumer = await _consumer(kafka_bootstrap, topic)
    safe = PoisonSafeConsumer(consumer, {"bootstrap_servers": kafka_bootstrap})
    seen: dict[int, list[tuple[int, bytes | None, bool]]] = {0: [], 1: []}
    try:
        for _ in range(200):
            batches = await safe.getmany(timeout_ms=100, max_records=max_records)
            for tp, records in batches.items():
                assert len(records) <= max_records
                for record in records:
                    bad = isinstance(record, UndecodableRecord)
                    seen[tp.partition].append((record.offset, record.value, bad))
            if len(seen[0]) >= 4 and len(seen[1]) >= 1:
                break
        # Nothing more arrives afterwards: no duplicates from the rewinds.
        extra = await safe.getmany(timeout_ms=300)
        assert all(not records for records in extra.values())
    finally:
        await safe.close()
        await consumer.stop()
    assert seen[0] == [(0, b"v0", False), (1, b"v1", True), (2, b"v2", False), (3, b"v3", False)]
    assert seen[1] == [(0, b"v4", False)]
    assert safe.recoveries >= 1
    assert await consumer_position_is_end(kafka_bootstrap, topic) == {0: 4, 1: 1}


async def consumer_position_is_end(bootstrap: str, topic: str) -> dict[int, int]:
    probe = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await probe.start()
    try:
        tps = [TopicPartition(topic, p) for p in (0, 1)]
        probe.assign(tps)
        await probe.seek_to_end(*tps)
        return {tp.partition: await probe.position(tp) for tp in tps}
    finally:
        await probe.stop()


async def test_undecodable_record_keeps_its_raw_parts(kafka_bootstrap: str) -> None:
    topic = f"poison-{uuid.uuid4().hex[:8]}"
    await create_topics(kafka_bootstrap, [topic], partitions=2)
    await _produce(kafka_bootstrap, topic)
    consumer = await _consumer(kafka_bootstrap, topic)
    safe = PoisonSafeConsumer(consumer, {"bootstrap_servers": kafka_bootstrap})
    try:
        bad: list[UndecodableRecord] = []
        for _ in range(100):
            batches = await safe.getmany(timeout_ms=100)
            bad += [r for rs in batches.values() for r in rs if isinstance(r, UndecodableRecord)]
            if bad:
                break
    finally:
        await safe.close()
        await consumer.stop()
    assert len(bad) == 1
    assert bad[0].key == b"k1"
    assert bad[0].headers == ((b"\xff\xfe", b"x"), ("trace", b"b"))
    assert "not UTF-8" in bad[0].error
