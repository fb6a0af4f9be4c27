"""Delivering decisions: write ``output.json``, then publish the completion event (an outbox).

A decision is first recorded in the store (the outbox row holds the exact bytes of both), then
delivered. If the output store or the broker fails, or the process dies in between, the
decision is not lost: :meth:`Delivery.run_outbox` delivers every row not yet marked published,
again and again until it succeeds. Delivering twice is harmless: the same file is rewritten
with the same bytes, and the sink counts a second event for a decided loop as a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from service.console.a2i import DeliveryError, OutputWriter
from service.console.metrics import ConsoleMetrics
from service.console.storage import ConsoleStore, Decision, StoreError
from service.kafka.client import kafka_client_options
from service.settings import KafkaSettings

log = logging.getLogger(__name__)

OUTBOX_INTERVAL_S = 5.0
OUTBOX_GRACE_S = 15.0  # leave fresh decisions to the request that is delivering them


class EventPublisher(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def publish(self, key: bytes, value: bytes) -> None: ...


class KafkaEventPublisher:
    """Completion events onto the completions topic, acknowledged by all in-sync replicas."""

    def __init__(self, kafka: KafkaSettings, bootstrap: str, topic: str) -> None:
        self._kafka = kafka
        self._bootstrap = bootstrap
        self._topic = topic
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        producer = AIOKafkaProducer(
            acks="all",
            enable_idempotence=self._kafka.enable_idempotence,
            linger_ms=0,
            request_timeout_ms=15_000,
            **kafka_client_options(self._kafka, self._bootstrap),
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def publish(self, key: bytes, value: bytes) -> None:
        if self._producer is None:
            raise DeliveryError("the completion-event producer is not started")
        try:
            await self._producer.send_and_wait(self._topic, key=key, value=value)
        except KafkaError as exc:
            raise DeliveryError(f"publishing to {self._topic}: {exc!r}") from exc


class Delivery:
    def __init__(
        self,
        store: ConsoleStore,
        writer: OutputWriter,
        publisher: EventPublisher,
        metrics: ConsoleMetrics,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._writer = writer
        self._publisher = publisher
        self._metrics = metrics
        self._clock = clock

    async def deliver(self, decision: Decision) -> bool:
        """Write the output, publish the event, mark the row; False if it must be retried."""
        try:
            await self._writer.write(decision.output_uri, decision.output)
            await self._publisher.publish(decision.loop_name.encode(), decision.event)
            await self._store.mark_published(decision.loop_name, self._clock())
        except (DeliveryError, StoreError) as exc:
            log.warning("decision for %s not delivered yet: %s", decision.loop_name, exc)
            self._metrics.console_deliveries.labels(outcome="failed").inc()
            return False
        self._metrics.console_deliveries.labels(outcome="delivered").inc()
        log.info("decision for %s delivered to %s", decision.loop_name, decision.output_uri)
        return True

    async def flush_outbox(self) -> int:
        """Deliver what earlier attempts (or an earlier process) left undelivered."""
        delivered = 0
        for decision in await self._store.unpublished(self._clock() - OUTBOX_GRACE_S):
            if await self.deliver(decision):
                delivered += 1
            else:
                break  # the store or broker is down: try again on the next round
        return delivered

    async def run_outbox(self, stop: asyncio.Event, interval_s: float = OUTBOX_INTERVAL_S) -> None:
        while not stop.is_set():
            try:
                await self.flush_outbox()
            except StoreError as exc:
                log.warning("outbox: store unavailable: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
