"""Topic administration: creating the service's topics on a broker we started ourselves.

Real clusters manage their own topics (partitions, replication, retention are an operator's
choice); only the embedded broker, which starts empty, gets them from us.
"""

from __future__ import annotations

import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from service.kafka.client import kafka_client_options
from service.settings import KafkaSettings


async def ensure_topics(
    kafka: KafkaSettings, bootstrap: str, partitions: int, extra_topics: tuple[str, ...] = ()
) -> None:
    """Create the service's topics when missing (embedded runs; real clusters manage their own)."""
    admin = AIOKafkaAdminClient(**kafka_client_options(kafka, bootstrap))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        names = [
            *extra_topics,
            kafka.input_topic,
            kafka.approved_topic,
            kafka.rejected_topic,
            kafka.review_topic,
            kafka.dlq_topic,
        ]
        missing = [NewTopic(name, partitions, 1) for name in names if name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
    finally:
        await admin.close()
