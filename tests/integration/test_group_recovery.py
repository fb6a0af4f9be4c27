"""The broker's departed-leader wedge, reproduced with the bare group protocol, and its cure.

The reproduction needs no service: two members form a group, a third asks to join, and the two
leave (the leader among them) while that rebalance is pending. Tansu 0.6 then names the departed
leader in every later JoinGroup answer and no SyncGroup ever succeeds. Apache Kafka removes the
leaver and elects a live leader, so there the same steps settle."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from service.kafka.group_recovery import (
    Outcome,
    live_members,
    release_departed_leader,
)
from service.policy import Thresholds, load_policy
from service.runner import Runner
from tests.fakes.rekognition import FakeRekognition
from tests.group_wedge import (
    SESSION_MS,
    broker_is_tansu,
    coordinator,
    leave_during_rebalance,
    settle,
)
from tests.images import b64, png
from tests.integration.test_pipeline import http_probes, make_settings, sample
from tests.kafka_helpers import Topics, by_topic, collect, create_topics, produce, request

pytestmark = pytest.mark.kafka


def plain_consumer(bootstrap: str, topics: Topics) -> AIOKafkaConsumer:
    """A plain aiokafka member of the test's group, as any application would make it."""
    return AIOKafkaConsumer(
        topics.input,
        bootstrap_servers=bootstrap,
        group_id=topics.group,
        session_timeout_ms=SESSION_MS,
        heartbeat_interval_ms=2000,
        auto_offset_reset="earliest",
    )


async def release(bootstrap: str, topics: Topics) -> Outcome:
    return await release_departed_leader(
        {"bootstrap_servers": bootstrap},
        topics.group,
        [topics.input],
        timeout_s=15,
        session_timeout_ms=SESSION_MS,
    )


async def test_a_leader_leaving_mid_rebalance_wedges_the_group_on_tansu(
    kafka_bootstrap: str, topics: Topics
) -> None:
    """The plain-client reproduction: on Tansu the survivor never settles and is told to follow
    a leader that is no longer a member; on a correct broker it settles."""
    await create_topics(kafka_bootstrap, [topics.input], 1)
    async with coordinator(kafka_bootstrap, topics.group) as (client, node):
        departed, survivor = await leave_during_rebalance(client, node, topics.group, topics.input)
        settled = await settle(survivor, topics.input, attempts=2)
        if broker_is_tansu():
            assert not settled
            assert survivor.leader_id == departed
            assert departed not in await live_members(client, node, topics.group)
        else:
            assert settled


@pytest.mark.skipif(not broker_is_tansu(), reason="the wedge is Tansu's")
async def test_release_frees_a_plain_consumer_stuck_in_a_wedged_group(
    kafka_bootstrap: str, topics: Topics
) -> None:
    await create_topics(kafka_bootstrap, [topics.input], 2)
    async with coordinator(kafka_bootstrap, topics.group) as (client, node):
        _, survivor = await leave_during_rebalance(client, node, topics.group, topics.input)
        await survivor.leave()  # the group is empty now, and still wedged
    await produce(kafka_bootstrap, topics.input, [(b"k", b"v", [])])
    consumer = plain_consumer(kafka_bootstrap, topics)
    starting = asyncio.create_task(consumer.start())
    try:
        await asyncio.sleep(3)  # the consumer is joining and failing its syncs by now
        assert not consumer.assignment()
        outcome = await release(kafka_bootstrap, topics)
        assert outcome is Outcome.RELEASED
        await asyncio.wait_for(starting, 60)
        records = await consumer.getmany(timeout_ms=30_000)
        assert [r.value for batch in records.values() for r in batch] == [b"v"]
    finally:
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await consumer.stop()


async def test_release_leaves_a_healthy_group_alone(kafka_bootstrap: str, topics: Topics) -> None:
    """With a live leader (or no bug), nothing is done for anyone."""
    await create_topics(kafka_bootstrap, [topics.input], 1)
    await produce(kafka_bootstrap, topics.input, [(b"k", b"v", [])])
    consumer = plain_consumer(kafka_bootstrap, topics)
    await consumer.start()
    try:
        await consumer.getmany(timeout_ms=10_000)
        outcome = await release(kafka_bootstrap, topics)
        assert outcome in (Outcome.LEADER_ALIVE, Outcome.FAILED)
    finally:
        await consumer.stop()


@pytest.mark.skipif(not broker_is_tansu(), reason="the wedge is Tansu's")
async def test_the_pipeline_frees_its_wedged_group_and_goes_on(
    kafka_bootstrap: str, topics: Topics, fake_rekognition: FakeRekognition
) -> None:
    await create_topics(kafka_bootstrap, [topics.input, *topics.outputs.values()], 2)
    async with coordinator(kafka_bootstrap, topics.group) as (client, node):
        _, survivor = await leave_during_rebalance(client, node, topics.group, topics.input)
        await survivor.leave()
    await produce(
        kafka_bootstrap, topics.input, [(b"a", request("after-wedge", {"bytes": b64(png())}), [])]
    )
    settings = make_settings(
        kafka_bootstrap,
        topics,
        fake_rekognition,
        KAFKA_SESSION_TIMEOUT_MS=str(SESSION_MS),
        KAFKA_REBALANCE_STALL_S="3",
    )
    assert settings.kafka.rebalance_recovery
    runner = Runner(settings, load_policy(None, Thresholds(80, 50)))
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        outputs = by_topic(await collect(kafka_bootstrap, [topics.approved], 1, timeout_s=90))
        assert [orjson.loads(r.value)["id"] for r in outputs[topics.approved]] == ["after-wedge"]
        assert runner.http_port is not None
        metrics = (await http_probes(runner.http_port))["/metrics"][1]
        released = sample(metrics, 'moderation_group_recoveries_total{outcome="released"}')
        assert released >= 1
    finally:
        stop.set()
        await asyncio.wait_for(task, settings.shutdown_grace_s + 5)
