"""Writes verdict and dead-letter records, and waits for the broker's acknowledgement.

A record counts as done only once the broker acknowledged it; until then its input offset is not
committed. This is the one place producer errors are translated: a refusal of the record itself
(too large, invalid) raises :class:`RecordRefused` at once, so the caller can dead-letter instead;
anything else (connections, leaders, timeouts, authorisation) is the broker's or the
deployment's trouble, retried with backoff for as long as the caller waits, counted and logged,
and visible as stuck work (a cancelled publish leaves the input uncommitted: redelivered).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors
from aiokafka.errors import KafkaError

from service.errors import RecordRefused
from service.kafka.client import kafka_client_options
from service.messages import DeadLetter, Headers, dead_letter_output
from service.metrics import PublishMetrics
from service.retry import full_jitter
from service.settings import KafkaSettings

log = logging.getLogger(__name__)

#: Errors about the record itself: the same record is refused however often it is sent.
_REFUSALS: tuple[type[KafkaError], ...] = tuple(
    error
    for name in (
        "MessageSizeTooLargeError",  # over max.message.bytes (broker) or max_request_size (client)
        "RecordTooLargeError",
        "RecordListTooLargeError",
        "InvalidTimestampError",
        "CorruptRecordException",
        "InvalidRecordError",
    )
    if isinstance(error := getattr(kafka_errors, name, None), type)
)


class SupportsPublish(Protocol):
    async def publish(
        self, topic: str, key: bytes | None, value: bytes, headers: Headers
    ) -> None: ...


def is_refusal(exc: BaseException) -> bool:
    return isinstance(exc, _REFUSALS)


def producer_for(
    kafka: KafkaSettings, bootstrap: str, *, max_request_size: int
) -> AIOKafkaProducer:
    """The at-least-once producer: every record acknowledged by all in-sync replicas."""
    return AIOKafkaProducer(
        **kafka_client_options(kafka, bootstrap),
        acks="all",
        enable_idempotence=kafka.enable_idempotence,
        linger_ms=5,
        max_request_size=max_request_size,
    )


class Publisher:
    def __init__(self, producer: AIOKafkaProducer, metrics: PublishMetrics) -> None:
        self._producer = producer
        self._metrics = metrics

    async def publish(self, topic: str, key: bytes | None, value: bytes, headers: Headers) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._producer.send_and_wait(topic, value=value, key=key, headers=headers)
            except KafkaError as exc:
                if is_refusal(exc):
                    self._metrics.publish_refused.inc()
                    raise RecordRefused(topic, type(exc).__name__, str(exc)) from exc
                self._metrics.publish_retries.inc()
                delay = full_jitter(attempt, base=0.2, cap=10.0)
                log.warning(
                    "publish to %s failed (%r); retry %d in %.2fs", topic, exc, attempt, delay
                )
                await asyncio.sleep(delay)
            else:
                return


async def publish_dead_letter(
    sink: SupportsPublish, topic: str, letter: DeadLetter, *, max_record_bytes: int
) -> None:
    """Publish one dead letter, sized to fit; if the DLQ takes even less than we were told,
    keep the facts and drop the original rather than wedge the partition."""
    out = dead_letter_output(letter, max_record_bytes=max_record_bytes)
    try:
        await sink.publish(topic, out.key, out.value, out.headers)
    except RecordRefused as exc:
        log.error("the DLQ refused a dead letter (%s); sending it without the original", exc)
        out = dead_letter_output(
            letter.without_original(f"the DLQ refused it: {exc}"), max_record_bytes=4096
        )
        await sink.publish(topic, out.key, out.value, out.headers)
