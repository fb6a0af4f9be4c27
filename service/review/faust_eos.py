"""faust's ``exactly_once``, corrected for the sink's deciding stage.

faust runs a read_committed consumer and one transactional producer per per-loop partition
(``{app}-{group}-{partition}``), committing changelog writes with the partition's offsets. Three
things it does not do for us, done here:

* a verdict or dead letter goes into the transaction of the event that produced it (faust would
  pick the producer of the *output's* partition: another transaction, or none);
* a commit waits for the event in hand, whose changelog writes are delivered first, so a
  transaction never holds half an event (:class:`EventGate`, :class:`RecordedTable`);
* a commit that fails stops the worker instead of being logged and passed over (a restart
  resumes from the last committed transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any

import faust
from faust.streams import current_event
from faust.transport.consumer import TransactionManager

from service.errors import PublishError

log = logging.getLogger(__name__)

CHANGELOG_WAIT_S = 30.0  # an event's table writes must reach the broker by then

#: The changelog writes of the event in hand, awaited before it is acknowledged.
_CHANGES: ContextVar[list[Any] | None] = ContextVar("moderation_sink_changes", default=None)


class EventGate:
    """One event at a time against the commits; once an event stops half done, no commit."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()  # held through one event, and by every commit
        self.broken = False

    @contextlib.asynccontextmanager
    async def event(self, app: faust.App) -> AsyncIterator[None]:
        """Around one event: its table writes reach the producer before it is acknowledged."""
        async with self.lock:  # no commit in the middle of an event
            changes: list[Any] = []
            token = _CHANGES.set(changes)
            try:
                yield
                await asyncio.wait_for(asyncio.gather(*changes), CHANGELOG_WAIT_S)
            except PublishError:
                self.broken = True  # half an event: its transaction must never commit
                raise
            except Exception as exc:  # its table writes failed: stop, a restart redoes it
                self.broken = True
                log.error("an event's table writes failed (%r); the worker stops", exc)
                await app.crash(exc)
                raise
            finally:
                _CHANGES.reset(token)


class SinkApp(faust.App):
    """The sink's faust app; with a gate (exactly_once) its transport makes
    :class:`SinkTransactions`."""

    def __init__(self, app_id: str, *, gate: EventGate | None, **options: Any) -> None:
        super().__init__(app_id, **options)
        self.moderation_gate = gate

    def _new_transport(self) -> Any:
        transport = super()._new_transport()
        if self.moderation_gate is not None:
            transport.TransactionManager = SinkTransactions  # type: ignore[misc]
        return transport


class RecordedTable(faust.Table[Any, Any]):
    """A table whose writes the event in hand waits for (see :class:`EventGate`)."""

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        sent = super().send_changelog(*args, **kwargs)
        changes = _CHANGES.get()
        if changes is not None:
            changes.append(sent)
        return sent


class SinkTransactions(TransactionManager):
    """faust's exactly_once producers, corrected for the sink (see the module docstring)."""

    async def send(  # noqa: PLR0917  # faust's signature
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
        *,
        transactional_id: str | None = None,
    ) -> Any:
        event = current_event()
        if event is None:  # table writes from faust's buffer, timers: by destination partition
            return await super().send(topic, key, value, partition, timestamp, headers)
        source = event.message.tp  # the per-loop partition whose transaction this belongs to
        group = self.app.assignor.group_for_topic(source.topic)
        owner = f"{self.app.conf.id}-{group}-{source.partition}"
        target = self.consumer.key_partition(topic, key, partition)
        return await self.producer.send(
            topic, key, value, target, timestamp, headers, transactional_id=owner
        )

    def _in_transaction(self, tp: Any) -> bool:
        group = self.app.assignor.group_for_topic(tp.topic)
        tid = f"{self.app.conf.id}-{group}-{tp.partition}"
        producer = self.producer._transaction_producers.get(tid)  # type: ignore[attr-defined]
        manager = producer._txn_manager if producer is not None else None  # no public question
        return manager is not None and bool(manager.is_in_transaction())

    async def commit(self, offsets: Any, start_new_transaction: bool = True) -> bool:
        gate: EventGate = self.app.moderation_gate  # type: ignore[attr-defined]
        async with gate.lock:  # never between an event's writes
            if gate.broken:
                log.error("an event stopped half done: nothing more is committed (restart)")
                return False
            # At shutdown faust commits again after ending the transactions (on leaving the
            # group): partitions whose producer is no longer in a transaction have nothing left.
            offsets = {tp: at for tp, at in offsets.items() if self._in_transaction(tp)}
            if not offsets:
                return False
            try:
                return bool(await super().commit(offsets, start_new_transaction))
            except Exception as exc:  # noqa: BLE001  # whatever it was, the worker stops
                # faust would log it and go on; its events are acknowledged but their outputs
                # lost with the transaction. Stop: a restart resumes from the last commit.
                gate.broken = True
                log.error("transaction commit failed (%r); the worker stops", exc)
                await self.app.crash(exc)
                return False
