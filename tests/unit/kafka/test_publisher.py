"""The publisher's error translation: a refused record is refused at once (the caller
dead-letters it), anything else is retried; a dead letter the DLQ refuses goes again without
its original. Against a producer-shaped fake and a fake of our SupportsPublish, no broker."""

from __future__ import annotations

import orjson
import pytest
from aiokafka import errors as kafka_errors

from service.errors import RecordRefused
from service.kafka.publisher import Publisher, is_refusal, publish_dead_letter
from service.messages import DeadLetter, Headers, Source
from service.metrics import PipelineMetrics

REFUSALS = [
    kafka_errors.MessageSizeTooLargeError(),
    kafka_errors.RecordTooLargeError(),
    kafka_errors.InvalidTimestampError(),
    kafka_errors.CorruptRecordException(),
]
TRANSIENT = [
    kafka_errors.KafkaConnectionError(),
    kafka_errors.RequestTimedOutError(),
    kafka_errors.NotLeaderForPartitionError(),
    kafka_errors.TopicAuthorizationFailedError(),
    kafka_errors.KafkaTimeoutError(),
]


@pytest.mark.parametrize("exc", REFUSALS, ids=lambda e: type(e).__name__)
def test_errors_about_the_record_itself_are_refusals(exc: Exception) -> None:
    assert is_refusal(exc)


@pytest.mark.parametrize("exc", [*TRANSIENT, ValueError("x")], ids=lambda e: type(e).__name__)
def test_the_brokers_or_the_deployments_trouble_is_not_a_refusal(exc: Exception) -> None:
    assert not is_refusal(exc)


class Producer:
    """Shaped like AIOKafkaProducer's send_and_wait: fails with the queued errors, then takes."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.sent: list[tuple[str, bytes | None, bytes, Headers]] = []

    async def send_and_wait(
        self, topic: str, *, value: bytes, key: bytes | None, headers: Headers
    ) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.sent.append((topic, key, value, headers))


def _count(metrics: PipelineMetrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


async def test_a_refused_record_raises_at_once_and_is_counted() -> None:
    metrics = PipelineMetrics()
    producer = Producer(kafka_errors.MessageSizeTooLargeError("too big"))
    with pytest.raises(RecordRefused) as refused:
        await Publisher(producer, metrics).publish("out", b"k", b"v", [])
    assert refused.value.topic == "out"
    assert refused.value.code == "MessageSizeTooLargeError"
    assert producer.sent == []
    assert _count(metrics, "moderation_publish_refused_total") == 1
    assert _count(metrics, "moderation_publish_retries_total") == 0


async def test_other_failures_are_retried_until_the_broker_acknowledges() -> None:
    metrics = PipelineMetrics()
    producer = Producer(kafka_errors.KafkaConnectionError())
    await Publisher(producer, metrics).publish("out", b"k", b"v", [("h", b"1")])
    assert producer.sent == [("out", b"k", b"v", [("h", b"1")])]
    assert _count(metrics, "moderation_publish_retries_total") == 1
    assert _count(metrics, "moderation_publish_refused_total") == 0


class Sink:
    """Our SupportsPublish: refuses records larger than ``limit`` as the broker would."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent: list[bytes] = []
        self.refused = 0

    async def publish(self, topic: str, key: bytes | None, value: bytes, headers: Headers) -> None:
        if len(value) > self.limit:
            self.refused += 1
            raise RecordRefused(topic, "MessageSizeTooLargeError", f"{len(value)} bytes")
        self.sent.append(value)


def _letter() -> DeadLetter:
    return DeadLetter(
        source=Source("moderation.requests", 0, 7),
        key=b"key",
        value=b"x" * 20_000,
        reason="invalid_json",
        message="not JSON",
    )


async def test_a_dead_letter_that_fits_keeps_the_original() -> None:
    sink = Sink(limit=1_000_000)
    await publish_dead_letter(sink, "dlq", _letter(), max_record_bytes=256 * 1024)
    assert sink.refused == 0
    record = orjson.loads(sink.sent[0])
    assert record["original"]["value_size"] == 20_000


async def test_a_dead_letter_the_dlq_refuses_goes_again_without_the_original() -> None:
    sink = Sink(limit=8_000)  # takes less than we were told it would
    await publish_dead_letter(sink, "dlq", _letter(), max_record_bytes=256 * 1024)
    assert sink.refused == 1
    (value,) = sink.sent
    record = orjson.loads(value)
    assert record["original"]["value"] is None
    assert "original dropped" in record["error"]["message"]
