"""Static membership (KIP-345) against the real broker: the pipeline joins under its instance id,
and a restart under the same id takes its partitions back and goes on."""

from __future__ import annotations

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from tests.fakes.rekognition import FakeRekognition
from tests.images import b64, png
from tests.integration.test_pipeline import make_settings, running
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
