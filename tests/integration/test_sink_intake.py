"""The sink's intake on a real broker: every record routed once in order, a bug in a route
dead-letters that record and the rest goes on, offsets committed to the end."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from service.kafka.poison import Polled
from service.review.intake import SinkIntake
from service.settings import Settings
from tests.kafka_helpers import Topics, committed, create_topics, produce
from tests.processes import local_settings

pytestmark = pytest.mark.kafka


async def test_a_failing_route_costs_one_record_not_the_intake(kafka_bootstrap: str) -> None:
    topics = Topics.unique(uuid.uuid4().hex[:10])
    await create_topics(kafka_bootstrap, [topics.review], 1)
    await produce(kafka_bootstrap, topics.review, [(None, f"r{i}".encode(), []) for i in range(5)])
    routed: list[bytes | None] = []
    bugs: list[tuple[bytes | None, str]] = []

    async def route(record: Polled) -> None:
        if record.value == b"r2":
            raise ValueError("a bug in the router")
        routed.append(record.value)

    async def on_bug(record: Polled, error: str) -> None:
        bugs.append((record.value, error))

    settings = Settings.from_env(local_settings(kafka_bootstrap, topics))
    group = f"{topics.group}-intake"
    intake = SinkIntake(
        kafka=settings.kafka,
        bootstrap=kafka_bootstrap,
        group_id=group,
        routes={topics.review: route},
        on_bug=on_bug,
        max_record_bytes=1024 * 1024,
    )
    await intake.start()
    try:
        for _ in range(150):
            if intake.handled == 5:
                break
            await asyncio.sleep(0.1)
        for _ in range(50):
            if (await committed(kafka_bootstrap, group, topics.review, 1)).get(0) == 5:
                break
            await asyncio.sleep(0.1)
    finally:
        await intake.stop()
    assert routed == [b"r0", b"r1", b"r3", b"r4"]
    assert bugs == [(b"r2", "ValueError('a bug in the router')")]
    assert await committed(kafka_bootstrap, group, topics.review, 1) == {0: 5}
