"""Static membership (KIP-345) against the real broker: the pipeline joins under its instance id,
and a restart under the same id takes its partitions back and goes on."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from service.policy import Thresholds, load_policy
from service.runner import Runner
from tests.fakes.rekognition import FakeRekognition
from tests.images import b64, png
from tests.integration.test_pipeline import http_probes, make_settings, running, sample
from tests.kafka_helpers import Topics, by_topic, collect, create_topics, produce, request

pytestmark = pytest.mark.kafka


async def member_ids(bootstrap: str, group: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_consumer_groups([group])
        [described] = response.groups
        return [member[0] for member in described[-1]]
    finally:
        await admin.close()


async def test_a_static_member_restarts_under_its_own_name(
    kafka_bootstrap: str, topics: Topics, fake_rekognition: FakeRekognition
) -> None:
    await create_topics(kafka_bootstrap, [topics.input, *topics.outputs.values()], 2)
    settings = make_settings(
        kafka_bootstrap, topics, fake_rekognition, KAFKA_GROUP_INSTANCE_ID="pipeline-0"
    )
    assert settings.kafka.group_instance_id == "pipeline-0"
    await produce(
        kafka_bootstrap, topics.input, [(b"a", request("first", {"bytes": b64(png())}), [])]
    )
    async with running(settings):
        await collect(kafka_bootstrap, [topics.approved], 1)
        # Brokers name a static member after its instance id (Apache Kafka and Tansu alike).
        members = await member_ids(kafka_bootstrap, topics.group)
    assert len(members) == 1
    assert members[0].startswith("pipeline-0-"), members

    await produce(
        kafka_bootstrap, topics.input, [(b"b", request("second", {"bytes": b64(png())}), [])]
    )
    async with running(settings):
        outputs = by_topic(await collect(kafka_bootstrap, [topics.approved], 2))
    ids = sorted(orjson.loads(r.value)["id"] for r in outputs[topics.approved])
    assert ids == ["first", "second"]


async def test_a_group_that_does_not_settle_is_reported(
    kafka_bootstrap: str, topics: Topics, fake_rekognition: FakeRekognition
) -> None:
    """The embedded broker holds a group's first join for half its session timeout: with a 60 s
    session that is a rebalance of about 30 s, far past a 2 s stall limit."""
    await create_topics(kafka_bootstrap, [topics.input, *topics.outputs.values()], 2)
    settings = make_settings(
        kafka_bootstrap,
        topics,
        fake_rekognition,
        KAFKA_SESSION_TIMEOUT_MS="60000",
        KAFKA_REBALANCE_STALL_S="2",
    )
    runner = Runner(settings, load_policy(None, Thresholds(80, 50)))
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        probes: dict[str, tuple[int, str]] = {}
        for _ in range(100):
            await asyncio.sleep(0.2)
            if runner.http_port is None:
                continue
            probes = await http_probes(runner.http_port)
            if "not settled" in probes["/readyz"][1]:
                break
        assert probes["/readyz"][0] == 503, probes
        assert "consumer group not settled" in probes["/readyz"][1]
        assert sample(probes["/metrics"][1], "moderation_group_stalled") == 1
        assert sample(probes["/metrics"][1], "moderation_group_unsettled_seconds") > 2
    finally:
        stop.set()
        await asyncio.wait_for(task, settings.shutdown_grace_s + 5)
