"""``python -m service publish PATH|URL|s3://bucket/key ...``: send images, print their verdicts.

A convenience for trying the service: it subscribes to the outcome topics *before* sending, so
no verdict can slip past, then prints each outcome as it arrives. With ``--final`` it keeps
waiting past "review" for the human (or fallback) verdict. The broker is
``KAFKA_BOOTSTRAP_SERVERS``, or the one a running ``python -m service local`` wrote down.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from service.errors import ConfigError
from service.images import MAX_IMAGE_BYTES
from service.settings import Settings

BOOTSTRAP_FILE = Path(".moderation-local") / "bootstrap"


def image_of(target: str) -> dict[str, object]:
    if target.startswith(("http://", "https://")):
        return {"url": target}
    if target.startswith("s3://"):
        parts = urlsplit(target)
        return {"s3": {"bucket": parts.netloc, "key": parts.path.lstrip("/")}}
    path = Path(target)
    if not path.is_file():
        raise ConfigError(target, "no such file")
    if path.stat().st_size > MAX_IMAGE_BYTES:
        raise ConfigError(target, f"larger than {MAX_IMAGE_BYTES} bytes")
    return {"bytes": base64.b64encode(path.read_bytes()).decode()}


def bootstrap_of(settings: Settings) -> str:
    if settings.kafka.bootstrap_servers is not None:
        return settings.kafka.bootstrap_servers
    if BOOTSTRAP_FILE.is_file():
        return BOOTSTRAP_FILE.read_text().strip()
    raise ConfigError(
        "KAFKA_BOOTSTRAP_SERVERS", "unset, and no local stack is running (python -m service local)"
    )


async def submit(settings: Settings, targets: list[str], *, final: bool, timeout_s: float) -> int:
    bootstrap = bootstrap_of(settings)
    kafka = settings.kafka
    requests = {f"cli-{uuid.uuid4().hex[:12]}": target for target in targets}
    images = {request_id: image_of(target) for request_id, target in requests.items()}
    outcome_topics = [
        kafka.approved_topic,
        kafka.rejected_topic,
        kafka.review_topic,
        kafka.dlq_topic,
    ]

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, max_request_size=kafka.max_input_bytes + 64 * 1024
    )
    await consumer.start()
    await producer.start()
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in outcome_topics
            for p in (consumer.partitions_for_topic(topic) or await _partitions(consumer, topic))
        ]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for tp in partitions:  # resolve "end" now, before anything is sent
            await consumer.position(tp)
        for request_id, image in images.items():
            value = orjson.dumps({"id": request_id, "image": image})
            await producer.send_and_wait(kafka.input_topic, value=value, key=request_id.encode())
        print(f"sent {len(images)} request(s) to {kafka.input_topic} on {bootstrap}", flush=True)
        return await _print_outcomes(consumer, requests, kafka.dlq_topic, final, timeout_s)
    finally:
        await producer.stop()
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    for _ in range(50):
        await consumer._client.force_metadata_update()  # no public metadata refresh
        found = consumer.partitions_for_topic(topic)
        if found:
            return set(found)
        await asyncio.sleep(0.1)
    raise ConfigError(topic, "topic does not exist on the broker")


async def _print_outcomes(
    consumer: AIOKafkaConsumer,
    requests: dict[str, str],
    dlq_topic: str,
    final: bool,
    timeout_s: float,
) -> int:
    waiting = set(requests)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while waiting and loop.time() < deadline:
        batches = await consumer.getmany(timeout_ms=500)
        for records in batches.values():
            for record in records:
                key = record.key.decode() if record.key else ""
                if key not in waiting:
                    continue
                value = orjson.loads(record.value)
                print(_describe(requests[key], record.topic == dlq_topic, value), flush=True)
                if not (final and value.get("verdict") == "review"):
                    waiting.discard(key)
    for key in sorted(waiting):
        print(f"{requests[key]}: no outcome within {timeout_s:g}s", flush=True)
    return 1 if waiting else 0


def _describe(target: str, dead: bool, value: dict[str, object]) -> str:
    if dead:
        error = value.get("error") or {}
        assert isinstance(error, dict)
        return f"{target}: DEAD-LETTERED {error.get('reason')}: {error.get('message')}"
    labels = value.get("labels") or []
    assert isinstance(labels, list)
    shown = ", ".join(f"{item['name']} {item['confidence']:.0f}" for item in labels[:4])
    return f"{target}: {str(value.get('verdict')).upper()} by {value.get('decided_by')}" + (
        f" ({shown})" if shown else ""
    )
