"""Hostile input through the running pipeline: each record ends in one topic, nothing wedges.

Each test here failed on main before its fix: an undecodable header name crashed the intake loop,
an oversized dead letter was retried forever, a dead-lettering flood emptied the input topic.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from service.kafka.embedded import free_port
from tests.fakes.rekognition import FakeRekognition
from tests.images import b64, png
from tests.integration.test_pipeline import http_probes, make_settings, running, sample, schema
from tests.kafka_helpers import (
    Topics,
    by_topic,
    collect,
    committed,
    create_topics,
    produce,
    raw_header_name,
    request,
    send_records_with_raw_headers,
)

pytestmark = pytest.mark.kafka

PARTITIONS = 2


async def wait_committed(bootstrap: str, topics: Topics, partition: int, offset: int) -> None:
    for _ in range(100):
        got = await committed(bootstrap, topics.group, topics.input, PARTITIONS)
        if got.get(partition) == offset:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"committed {got}, expected {offset} on partition {partition}")


async def test_an_undecodable_header_name_is_dead_lettered_and_the_partition_goes_on(
    kafka_bootstrap: str, topics: Topics, fake_rekognition: FakeRekognition
) -> None:
    import jsonschema

    await create_topics(kafka_bootstrap, [topics.input, *topics.outputs.values()], PARTITIONS)
    good = [request(f"ok-{i}", {"bytes": b64(png())}) for i in range(3)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=0)
    await producer.start()
    try:
        await send_records_with_raw_headers(
            producer,
            topics.input,
            0,
            [
                (b"k0", good[0], [("trace", b"t0")]),
                (b"bad", good[1], [(raw_header_name(b"\xff\xfe"), b"x"), ("trace", b"t1")]),
                (b"k2", good[2], []),
            ],
        )
    finally:
        await producer.stop()
    settings = make_settings(kafka_bootstrap, topics, fake_rekognition)
    async with running(settings) as runner:
        outputs = by_topic(await collect(kafka_bootstrap, list(topics.outputs.values()), 3))
        await wait_committed(kafka_bootstrap, topics, 0, 3)
        probes = await http_probes(runner.http_port)
    assert sorted(orjson.loads(r.value)["id"] for r in outputs[topics.approved]) == ["ok-0", "ok-2"]
    [dead] = outputs[topics.dlq]
    letter = orjson.loads(dead.value)
    jsonschema.validate(letter, schema("dlq"))
    assert letter["error"]["reason"] == "undecodable_record"
    assert letter["source"]["offset"] == 1
    assert letter["original"]["value"] == good[1].decode()
    assert letter["original"]["headers"][0]["key_encoding"] == "base64"
    assert ("trace", b"t1") in list(dead.headers)
    assert sample(probes["/metrics"][1], "moderation_undecodable_recoveries_total") >= 1


async def test_a_huge_poison_value_becomes_a_bounded_dead_letter(
    kafka_bootstrap: str, topics: Topics, fake_rekognition: FakeRekognition
) -> None:
    await create_topics(kafka_bootstrap, [topics.input, *topics.outputs.values()], PARTITIONS)
    poison = b"\x01" * (3 * 1024 * 1024)  # escapes to ~19 MB of JSON
    await produce(
        kafka_bootstrap,
        topics.input,
        [
            (b"p1", poison, []),
            (b"p2", poison, []),
            (b"p3", poison, []),
            (b"ok", request("after", {"bytes": b64(png())}), []),
        ],
    )
    settings = make_settings(kafka_bootstrap, topics, fake_rekognition)
    async with running(settings):
        outputs = by_topic(await collect(kafka_bootstrap, list(topics.outputs.values()), 4))
    dead = outputs[topics.dlq]
    assert len(dead) == 3
    for record in dead:
        assert len(record.value) <= settings.safety.dlq_max_record_bytes
        original = orjson.loads(record.value)["original"]
        assert original["truncated"] == ["value"]
        assert original["value_size"] == len(poison)
    assert [orjson.loads(r.value)["id"] for r in outputs[topics.approved]] == ["after"]


async def test_a_dead_letter_flood_stops_intake_and_fails_readiness(
    kafka_bootstrap: str, topics: Topics, fake_rekognition: FakeRekognition
) -> None:
    await create_topics(kafka_bootstrap, [topics.input, *topics.outputs.values()], PARTITIONS)
    await produce(kafka_bootstrap, topics.input, [(None, b"not json", [])] * 60)
    settings = make_settings(
        kafka_bootstrap,
        topics,
        fake_rekognition,
        MODERATION_DLQ_GUARD_WINDOW="20",
        MODERATION_DLQ_GUARD_MIN_SAMPLES="20",
        MODERATION_DLQ_MAX_RATIO="0.5",
        MODERATION_DLQ_GUARD_COOLDOWN_S="600",
        MODERATION_MAX_IN_FLIGHT="4",
    )
    async with running(settings) as runner:
        dead = await collect(kafka_bootstrap, [topics.dlq], 60, timeout_s=8)
        probes = await http_probes(runner.http_port)
    # The guard trips after 20 and lets at most what was already in flight finish.
    assert 20 <= len(dead) < 30
    assert probes["/readyz"][0] == 503
    assert "dead-letter limit" in probes["/readyz"][1]
    assert probes["/healthz"][0] == 200  # alive: a restart would not help
    assert sample(probes["/metrics"][1], 'moderation_dlq_guard_tripped{kind="input"}') == 1


async def test_a_url_given_up_on_says_how_many_attempts_it_took(
    kafka_bootstrap: str, topics: Topics, fake_rekognition: FakeRekognition
) -> None:
    await create_topics(kafka_bootstrap, [topics.input, *topics.outputs.values()], PARTITIONS)
    closed = f"http://127.0.0.1:{free_port()}/gone.png"  # nothing listens: unreachable
    await produce(
        kafka_bootstrap, topics.input, [(b"u", request("unreachable", {"url": closed}), [])]
    )
    settings = make_settings(kafka_bootstrap, topics, fake_rekognition)
    async with running(settings):
        [dead] = await collect(kafka_bootstrap, [topics.dlq], 1)
    letter = orjson.loads(dead.value)
    assert letter["error"]["reason"] == "unreachable_url"
    assert letter["error"]["message"].endswith("(after 3 attempts)")
    assert letter["attempts"] == 3


async def test_work_that_does_not_finish_is_reported_stuck(
    kafka_bootstrap: str, topics: Topics, fake_rekognition: FakeRekognition
) -> None:
    await create_topics(kafka_bootstrap, [topics.input, *topics.outputs.values()], PARTITIONS)
    fake_rekognition.set_latency(20.0)  # every call hangs far longer than the stuck limit
    await produce(
        kafka_bootstrap, topics.input, [(b"s", request("slow", {"bytes": b64(png())}), [])]
    )
    settings = make_settings(
        kafka_bootstrap, topics, fake_rekognition, MODERATION_STUCK_AFTER_S="1"
    )
    async with running(settings) as runner:
        for _ in range(100):
            probes = await http_probes(runner.http_port)
            if probes["/readyz"][0] == 503 and "stuck" in probes["/readyz"][1]:
                break
            await asyncio.sleep(0.1)
        fake_rekognition.set_latency(0.0)
    assert probes["/readyz"][0] == 503, probes["/readyz"]
    assert "work stuck on partition" in probes["/readyz"][1]
    assert sample(probes["/metrics"][1], "moderation_stuck_partitions") == 1
    assert sample(probes["/metrics"][1], "moderation_oldest_in_flight_seconds") > 1
