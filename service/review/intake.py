"""The sink's door for the two topics anyone can write to: the review and completions topics.

faust reads its topics through aiokafka, which raises on a record it cannot decode (a header
name that is not UTF-8), and faust's consumer does not survive that: one hostile record stops
every review. So the sink does not let faust read untrusted topics. This service reads them with
our own consumer (:class:`~service.kafka.poison.PoisonSafeConsumer`), hands each record, in
order, to the sink's router (which validates it and re-keys it onto the sink's internal per-loop
topic, or dead-letters it), and commits a batch once every record of it was handled. The internal
topic is written only by the sink itself, so faust reads nothing it did not write.

Its consumer group is ``<group>-review-sink-intake``, apart from faust's own group (faust uses its
own assignor; one group cannot mix the two). Delivery is at least once; the router's effects are
idempotent per loop (a review record for a decided loop and a second completion are ignored).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

import mode
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError, KafkaError

from service.errors import PublishError
from service.kafka.poison import PoisonSafeConsumer, Polled, reader_for
from service.settings import KafkaSettings

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 500
MAX_RECORDS = 100

Router = Callable[[Polled], Awaitable[None]]


class SinkIntake(mode.Service):
    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        bootstrap: str,
        group_id: str,
        routes: dict[str, Router],
        on_bug: Callable[[Polled, str], Awaitable[None]],
        max_record_bytes: int,
    ) -> None:
        super().__init__()
        self._kafka = kafka
        self._bootstrap = bootstrap
        self._group_id = group_id
        self._routes = routes
        self._on_bug = on_bug  # dead-letters the record as internal_error
        self._max_record_bytes = max_record_bytes
        self._consumer: AIOKafkaConsumer | None = None
        self._safe: PoisonSafeConsumer | None = None
        self.handled = 0

    async def on_start(self) -> None:
        consumer, safe = reader_for(
            self._kafka,
            self._bootstrap,
            group_id=self._group_id,
            topics=list(self._routes),
            max_record_bytes=self._max_record_bytes,
        )
        await consumer.start()
        self._consumer, self._safe = consumer, safe
        log.info("sink intake reading %s as group %s", sorted(self._routes), self._group_id)

    async def on_stop(self) -> None:
        consumer, safe = self._consumer, self._safe
        self._consumer = self._safe = None
        if safe is not None:
            await safe.close()
        if consumer is not None:
            with contextlib.suppress(KafkaError):
                await consumer.stop()

    @mode.Service.task
    async def _run(self) -> None:
        """Read, route each record in order, commit: until the service stops."""
        while not self.should_stop:
            consumer, safe = self._consumer, self._safe
            if consumer is None or safe is None:
                await self.sleep(0.1)
                continue
            try:
                batches = await safe.getmany(timeout_ms=POLL_TIMEOUT_MS, max_records=MAX_RECORDS)
            except KafkaError as exc:  # the broker's trouble: poll again shortly
                log.warning("sink intake poll failed (%r); polling again", exc)
                await self.sleep(1.0)
                continue
            for records in batches.values():
                for record in records:
                    if self.should_stop:
                        return  # not committed: those records come again
                    try:
                        await self._routes[record.topic](record)
                    except PublishError:
                        return  # shutting down with a send unacknowledged: redelivered later
                    except Exception as exc:  # a bug must not stop every review: keep the record
                        log.exception("sink intake failed on %s[%d]@%d", record.topic,
                                      record.partition, record.offset)  # fmt: skip
                        await self._on_bug(record, repr(exc))
                    self.handled += 1
            if batches:
                try:
                    await consumer.commit()
                except (CommitFailedError, KafkaError) as exc:
                    # A rebalance took partitions away: their new owner handles them again.
                    log.warning("sink intake commit failed: %r", exc)
