"""The console against a real broker: review records in from the review topic (redeliveries and
requeues included), completion events out on the completions topic, in A2I's exact shape."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from service.console.app import Console
from service.review.events import parse_event
from tests.console.harness import (
    FakeClock,
    base_env,
    review_record,
    reviewers,
    settings_from,
    url_of,
)
from tests.kafka_helpers import (
    Topics,
    collect,
    committed,
    create_topics,
    produce,
    raw_header_name,
    send_records_with_raw_headers,
)

pytestmark = [pytest.mark.kafka]


async def wait_for_queue(reviewer: object, count: int, timeout_s: float = 45.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        status, body = await reviewer.get("/api/queue")  # type: ignore[attr-defined]
        assert status == 200
        if len(body["items"]) >= count or asyncio.get_running_loop().time() > deadline:
            return body
        await asyncio.sleep(0.3)


async def test_intake_and_completion_events_through_the_broker(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    completions = f"{topics.input}.completions"
    await create_topics(kafka_bootstrap, [topics.review, completions], 2)
    env = base_env(
        tmp_path,
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        KAFKA_SESSION_TIMEOUT_MS="6000",
        KAFKA_ENABLE_IDEMPOTENCE="false",  # the embedded broker refuses it
        MODERATION_COMPLETIONS_TOPIC=completions,
        **topics.env(),
    )
    clock = FakeClock()
    base, console_settings = settings_from(env)
    now = clock()
    loop_a, record_a = review_record("kafka-a", created=now - 30, deadline=now + 600)
    loop_b, record_b = review_record("kafka-b", created=now - 30, deadline=now + 900)
    _, managed = review_record("kafka-managed", created=now, deadline=now + 60, mode="managed")
    _, requeued_b = review_record(
        "kafka-b", created=now, deadline=now + 5000, requeued=1, loop=loop_b
    )
    # Records that are not review records: each is dead-lettered once, and the rest goes on.
    _, abc = review_record(
        "bad-confidence",
        created=now,
        deadline=now + 600,
        labels=[{"name": "Explicit", "parent": "", "confidence": "abc", "taxonomy_level": 1}],
    )
    _, list_bucket = review_record(
        "bad-bucket", created=now, deadline=now + 600, image={"s3": {"bucket": ["a"], "key": "k"}}
    )
    bad = {b"junk": b"not json", b"abc": abc, b"list": list_bucket, b"tomb": None}
    await produce(
        kafka_bootstrap,
        topics.review,
        [
            (b"kafka-a", record_a, []),
            (b"kafka-b", record_b, []),
            (b"kafka-a", record_a, []),  # a redelivery
            (b"kafka-m", managed, []),  # A2I's workers handle managed loops
            *((key, value, [("trace-id", b"t-" + key)]) for key, value in bad.items()),
            (b"kafka-b", requeued_b, []),  # the sink's requeue fallback: new deadline
        ],
    )
    # A header name that is not UTF-8: the client cannot decode it; read raw and dead-lettered.
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=0)
    await producer.start()
    try:
        await send_records_with_raw_headers(
            producer,
            topics.review,
            0,
            [
                (
                    b"rawhdr",
                    record_a,
                    [(raw_header_name(b"\xff\xfe"), b"x"), ("trace-id", b"t-rawhdr")],
                )
            ],
        )
    finally:
        await producer.stop()
    bad[b"rawhdr"] = record_a
    console = Console(base, console_settings, clock=clock)
    await console.start()
    try:
        async with reviewers(url_of(console), "alice") as (alice,):
            queue = await wait_for_queue(alice, 2)
            assert [item["loop_name"] for item in queue["items"]] == [loop_a, loop_b]
            assert queue["items"][1]["deadline"] == pytest.approx(now + 5000, abs=0.01)
            assert (await alice.claim(loop_a))[0] == 200
            status, body = await alice.decide(loop_a, ["Violence"])
            assert status == 200 and body["delivered"] is True
        sample = console.metrics.registry.get_sample_value
        counted = {
            outcome: sample("moderation_console_intake_records_total", {"outcome": outcome})
            for outcome in ("stored", "unchanged", "skipped_managed", "dead_lettered")
        }
        assert counted == {"stored": 3, "unchanged": 1, "skipped_managed": 1, "dead_lettered": 5}
    finally:
        await console.stop()
    dead = await collect(kafka_bootstrap, [topics.dlq], len(bad), timeout_s=20)
    assert sorted(record.key for record in dead) == sorted(bad)
    for record in dead:
        letter = orjson.loads(record.value)
        reason = "undecodable_record" if record.key == b"rawhdr" else "invalid_review_record"
        assert letter["error"]["reason"] == reason
        assert letter["consumer"] == "console"
        assert letter["source"]["topic"] == topics.review
        assert ("moderation-error-reason", reason.encode()) in record.headers
        assert ("trace-id", b"t-" + record.key) in record.headers
        original = bad[record.key]
        assert letter["original"]["value"] == (None if original is None else original.decode())
    # Every record, bad ones included, was handled: the group's offsets reach the end.
    offsets = await committed(kafka_bootstrap, console_settings.group_id, topics.review, 2)
    assert sum(offsets.values()) == 5 + len(bad)  # the raw one included
    records = await collect(kafka_bootstrap, [completions], 1, timeout_s=20)
    assert len(records) == 1
    event = parse_event(records[0].value)
    assert (event.loop_name, event.status, event.output_uri) == (
        loop_a,
        "Completed",
        body["output_uri"],
    )
    assert records[0].key == loop_a.encode()
    assert orjson.loads(records[0].value)["detail-type"] == "SageMaker A2I HumanLoop Status Change"
