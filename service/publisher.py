"""Writes verdict and dead-letter records, and waits for the broker's acknowledgement.

A record counts as done only once the broker acknowledged it; until then its input offset is not
committed. Broker trouble is retried with backoff for as long as the caller waits (a cancelled
publish leaves the input uncommitted, so it is redelivered: at-least-once, nothing lost).
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from service.messages import Headers
from service.metrics import Metrics
from service.retry import full_jitter

log = logging.getLogger(__name__)


class Publisher:
    def __init__(self, producer: AIOKafkaProducer, metrics: Metrics) -> None:
        self._producer = producer
        self._metrics = metrics

    async def publish(self, topic: str, key: bytes | None, value: bytes, headers: Headers) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._producer.send_and_wait(topic, value=value, key=key, headers=headers)
            except KafkaError as exc:
                self._metrics.publish_retries.inc()
                delay = full_jitter(attempt, base=0.2, cap=10.0)
                log.warning(
                    "publish to %s failed (%r); retry %d in %.2fs", topic, exc, attempt, delay
                )
                await asyncio.sleep(delay)
            else:
                return
