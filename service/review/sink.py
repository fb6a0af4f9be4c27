"""The completion sink (faust-streaming): reviewers' answers back into the stream as verdicts.

Two inputs, one state machine per human loop:

* the **review topic** (our own pipeline's review records), so the final verdict can carry the
  original request even when the completion event arrives first;
* the **completions topic**: A2I's EventBridge events ("SageMaker A2I HumanLoop Status Change"),
  from managed A2I through an EventBridge-to-Kafka bridge, or from our self-hosted console, which
  writes the same events and the same ``output.json``.

Both are read by the sink's own consumer (:mod:`service.review.intake`, which survives records
the Kafka client cannot decode) and re-keyed by loop name onto one internal topic, so every
decision about a loop happens in one partition, next to its state in changelog-backed tables:

* ``pending``: loop -> review record, waiting for people;
* ``early``: loop -> completion event that arrived before its review record;
* ``decided``: loop -> final verdict; a second event for a decided loop (EventBridge delivers at
  least once) is counted and ignored, never a second verdict.

``Completed`` loops are decided from ``output.json`` (see :mod:`service.review.answers`);
``Failed``, ``Stopped`` and expired loops, and reviews past their SLA, get the configured fallback
(``reject``, ``approve`` or ``requeue``) with ``decided_by: fallback``. Malformed events and
unreadable outputs go to the DLQ; the sink never stops on bad input.

No event can hold the others up. An agent handles its partition's events one at a time, so
nothing in an agent sleeps: a read of ``output.json`` is one attempt bounded by timeouts, and when
the store is unavailable the event waits in ``output-retries`` (a table) while a timer sends it
back to its loop when its backoff is over; past ``MODERATION_SINK_OUTPUT_RETRY_S`` it is
dead-lettered (``unreadable_output``) and the review stays pending for its SLA. Events are
checked before anything is read (size, URI, the loop's own prefix), answers are checked against
the loop they claim (``forged_event``), events held for loops that never get a review record are
bounded in age and number (``orphan_completion``), and every send waits for the broker's answer:
a record the broker refuses for good is dead-lettered instead of killing the agent.

``at_least_once`` (the default) de-duplicates by loop: a graceful restart (SIGTERM) emits no
duplicate; a SIGKILL between sending a verdict and recording the loop as decided can repeat that
one verdict, with the same key.

``exactly_once`` (MODERATION_PROCESSING_GUARANTEE; the broker must have transactions, checked at
start) makes both stages transactional. The intake holds each record's sends and commits them
with its input offsets (:mod:`service.review.intake`). The deciding stage runs faust's own
``processing_guarantee="exactly_once"`` (read_committed consumer and table recovery, one
transactional producer per per-loop partition, ``{app}-{group}-{partition}``, committing its
changelog writes with the partition's offsets), with three corrections (:class:`_SinkTransactions`):
a verdict or dead letter goes into the transaction of the event that produced it (faust would
pick the producer of the *output's* partition, another transaction or none); a commit waits for
the event in hand, whose changelog writes are delivered first, so a transaction never holds
half an event; and a commit that fails stops the worker instead of being logged and passed over
(a restart resumes from the last committed transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from contextvars import ContextVar
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import faust
import mode
import orjson
from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError
from faust.streams import current_event
from faust.transport.consumer import TransactionManager

from service.clock import utc_now
from service.errors import (
    BackendError,
    ConfigError,
    InputError,
    PublishError,
    Reason,
    RecordRefused,
)
from service.http_server import Health, HttpServer
from service.kafka.poison import Polled, UndecodableRecord
from service.kafka.publisher import is_refusal, publish_dead_letter
from service.kafka.transactions import (
    CURRENT,
    PROBE_TIMEOUT_S,
    Output,
    TransactionalCommitter,
    probe_transactions,
)
from service.messages import DeadLetter, Headers, Source, output_headers
from service.metrics import Metrics
from service.retry import full_jitter
from service.review.answers import check_origin, decide_from_output
from service.review.events import parse_event
from service.review.intake import SinkIntake
from service.review.outputs import OutputStore
from service.review.records import parse_review_record, review_record_limit
from service.settings import Settings

log = logging.getLogger(__name__)

SLA_SWEEP_S = 5.0
UPKEEP_S = 1.0  # the worker's heartbeat, and how often due output retries are sent back
REQUEST_AGAIN_S = 60.0  # a sweep's command lost in a rebalance is sent again after this
SHUTDOWN_SEND_S = 5.0  # how long a send may still wait for the broker once shutdown began
_FORWARD_HEADROOM = 64 * 1024  # the re-keyed command wraps the record in a few bytes of JSON
MAX_EVENTS_PER_LOOP = 8  # events held or queued for one loop; more are dead-lettered
CHANGELOG_WAIT_S = 30.0  # exactly_once: an event's table writes must reach the broker by then

#: exactly_once: the changelog writes of the event in hand, awaited before it is acknowledged.
_CHANGES: ContextVar[list[Any] | None] = ContextVar("moderation_sink_changes", default=None)


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _source_of(origin: Any) -> Source:
    origin = origin if isinstance(origin, dict) else {}
    try:
        return Source(
            str(origin.get("topic", "")),
            int(origin.get("partition", -1)),
            int(origin.get("offset", -1)),
        )
    except (TypeError, ValueError):
        return Source("", -1, -1)


class CompletionSink:
    """Builds the faust app and owns the clients its agents use."""

    def __init__(self, settings: Settings, bootstrap: str, *, partitions: int = 4) -> None:
        self.settings = settings
        self._bootstrap = bootstrap
        self.metrics = Metrics()
        self.metrics.initialise(settings.backend.kind)
        kafka = settings.kafka
        review = settings.review
        self.health = Health(started=False, stall_after_s=review.liveness_s)
        #: Set when the worker starts to stop: retry waits end, so SIGTERM exits in time.
        self.stopping = asyncio.Event()
        # What the pipeline may write to the review topic, the sink must be able to forward.
        self._max_review_bytes = review_record_limit(kafka.max_input_bytes)
        self.exactly_once = kafka.processing_guarantee == "exactly_once"
        #: exactly_once: held by the agent through one event, and by every commit.
        self.event_lock = asyncio.Lock()
        #: exactly_once: set when an event stopped half done; nothing is committed after it.
        self.broken = False
        eos: dict[str, Any] = {"Table": _RecordedTable} if self.exactly_once else {}
        self.app = _SinkApp(
            self,
            f"{kafka.group_id}-review-sink",
            broker=f"kafka://{bootstrap}",
            store="memory://",
            key_serializer="raw",
            value_serializer="raw",
            topic_partitions=partitions,
            topic_replication_factor=1,
            table_standby_replicas=0,
            broker_session_timeout=kafka.session_timeout_ms / 1000,
            # Static membership (KAFKA_GROUP_INSTANCE_ID), as the pipeline's: a restarted sink
            # takes its partitions back (noida-db never expires a killed member otherwise).
            consumer_group_instance_id=kafka.group_instance_id,
            broker_heartbeat_interval=max(1.0, kafka.session_timeout_ms / 3000),
            producer_max_batch_size=settings.sink_producer_max_batch_size,
            producer_max_request_size=self._max_review_bytes + _FORWARD_HEADROOM,
            consumer_auto_offset_reset="earliest",
            web_enabled=False,
            # faust creates its data directory even for the memory store: never in the cwd.
            datadir=str(settings.sink_data_dir / "{conf.name}-data"),
            processing_guarantee=kafka.processing_guarantee,
            **eos,
        )
        app = self.app
        self.store = OutputStore(
            region=settings.backend.region,
            s3_endpoint_url=review.s3_endpoint_url,
            local_root=review.local_store,
        )
        self.reviews = app.topic(kafka.review_topic)
        self.by_loop = app.topic(f"{app.conf.id}-by-loop", internal=True, partitions=partitions)
        self.outputs = {
            "approved": app.topic(kafka.approved_topic),
            "rejected": app.topic(kafka.rejected_topic),
            "review": self.reviews,
            "dlq": app.topic(kafka.dlq_topic),
        }
        self._channels = {channel.get_topic_name(): channel for channel in self.outputs.values()}
        table_schema: Any = faust.Schema(
            key_type=str, value_type=None, key_serializer="raw", value_serializer="json"
        )
        self.pending = app.Table("pending-reviews", default=None, schema=table_schema)
        self.early = app.Table("early-completions", default=None, schema=table_schema)
        self.decided = app.Table("decided-loops", default=None, schema=table_schema)
        # loop -> completion waiting for the output store: command, first failure, attempts, due.
        self.retrying = app.Table("output-retries", default=None, schema=table_schema)
        # (kind, loop) -> when a sweep last sent that command, so each is sent once at a time.
        self._requested: dict[tuple[str, str], float] = {}
        self._http = HttpServer(self.metrics, self.health, settings.http_host, settings.http_port)

        # Untrusted topics come in through our own consumer (see service.review.intake); faust
        # reads only the per-loop topic, which the sink alone writes.
        intake_group = f"{app.conf.id}-intake"
        committer = None
        if self.exactly_once:
            committer = TransactionalCommitter(
                kafka.model_copy(update={"group_id": intake_group}),
                bootstrap,
                self.metrics,
                max_request_size=self._max_review_bytes + _FORWARD_HEADROOM,
                dlq_max_record_bytes=settings.safety.dlq_max_record_bytes,
                consumer_name="sink",
            )
        self.intake = SinkIntake(
            kafka=kafka,
            bootstrap=bootstrap,
            group_id=intake_group,
            routes={
                kafka.review_topic: self.route_review,
                review.completions_topic: self.route_completion,
            },
            on_bug=self._intake_bug,
            max_record_bytes=self._max_review_bytes,
            committer=committer,
        )
        # Started once the tables are recovered, stopped with the app (faust takes an instance
        # as well as a class there, though its annotation names only the class).
        app.service(self.intake)  # type: ignore[arg-type]
        app.agent(self.by_loop, name="decide")(self._decide)
        app.timer(SLA_SWEEP_S, name="sla-sweep")(self._sla_sweep)
        app.timer(UPKEEP_S, name="upkeep")(self._upkeep)
        app.add_dependency(_Clients(self))

    async def probe(self) -> None:
        """exactly_once: a ConfigError unless the broker has transactions (Tansu has none)."""
        if self.exactly_once:
            await probe_transactions(self.settings.kafka, self._bootstrap, PROBE_TIMEOUT_S)

    async def start_clients(self) -> None:
        await self.store.start()
        await self._http.start()
        self.health.polled()
        self.health.started = True
        self.health.partitions = 1  # readiness: the worker is up; faust owns assignment
        log.info("review sink started (http port %s)", self._http.port)

    async def stop_clients(self) -> None:
        self.stopping.set()
        await self._http.close()
        await self.store.close()

    # -- sending: the one place producer errors are translated ---------------------------------

    async def _send(
        self, channel: Any, *, key: bytes | None, value: bytes, headers: Any = None
    ) -> None:
        """Send and wait for the broker's acknowledgement.

        A refusal for good (too large, invalid) is ``RecordRefused`` for the caller to
        dead-letter; a transient failure is retried with backoff until shutdown begins, which
        raises ``PublishError`` so the event is not acknowledged (it is redelivered).

        In the intake under exactly_once the send is held instead, and goes out with the input
        offsets in one transaction (refusals are handled there).
        """
        held = CURRENT.get()
        if held is not None:
            name = str(channel.get_topic_name())
            held.outputs.append(Output(name, key, value, list(headers or ())))
            return
        attempt = 0
        while True:
            attempt += 1
            try:
                delivery = await channel.send(key=key, value=value, headers=headers)
                await self._acknowledged(delivery)
            except (ProducerSendError, KafkaError) as exc:
                cause = exc.__cause__ if isinstance(exc, ProducerSendError) else exc
                if cause is not None and is_refusal(cause):
                    # The same translation as the pipeline's Publisher: the record itself is
                    # refused for good; anything else is the broker's or the deployment's
                    # trouble and is retried (an authorisation error must not lose events).
                    self.metrics.publish_refused.inc()
                    topic = str(getattr(channel, "get_topic_name", lambda: "?")())
                    raise RecordRefused(
                        topic, type(cause).__name__, f"a {len(value)}-byte record: {cause!r}"
                    ) from exc
                self.metrics.publish_retries.inc()
                log.warning("send failed (%r); retry %d", cause, attempt)
                if self.stopping.is_set():
                    raise PublishError(f"not sent before shutdown: {cause!r}") from exc
                await self._pause(full_jitter(attempt, base=0.5, cap=10.0))
            else:
                return

    async def _acknowledged(self, delivery: Any) -> None:
        """Wait for the broker's answer; once shutdown begins, for a few seconds at most."""
        if not self.stopping.is_set():
            stop = asyncio.ensure_future(self.stopping.wait())
            try:
                done, _ = await asyncio.wait({delivery, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
            if delivery in done:
                delivery.result()
                return
        try:  # shutting down: a healthy broker still answers in time, a dead one is not waited for
            await asyncio.wait_for(asyncio.shield(delivery), SHUTDOWN_SEND_S)
        except TimeoutError as exc:
            raise PublishError("no acknowledgement from the broker before shutdown") from exc

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when shutdown begins."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def _command(self, loop: str, command: dict[str, Any]) -> None:
        """Send a command about ``loop`` to the partition that owns it."""
        await self._send(self.by_loop, key=loop.encode(), value=orjson.dumps(command))

    def _request(self, kind: str, loop: str, now: float) -> bool:
        """True (and remembered) unless a ``kind`` command for ``loop`` is already on its way."""
        sent = self._requested.get((kind, loop))
        if sent is not None and now - sent < REQUEST_AGAIN_S:
            return False
        self._requested[(kind, loop)] = now
        return True

    # -- routing onto the per-loop topic ------------------------------------------------------

    async def route_review(self, record: Polled) -> None:
        """A record of the review topic: re-keyed by loop, or dead-lettered."""
        if isinstance(record, UndecodableRecord):
            await self._dead_letter_record(record, Reason.UNDECODABLE_RECORD, record.error)
            return
        try:
            review = parse_review_record(record.value, max_bytes=self._max_review_bytes)
        except InputError as exc:
            await self._dead_letter_record(record, exc.reason, exc.message)
            return
        await self._forward(record, review.loop_name, {"kind": "review", "record": review.raw})

    async def route_completion(self, record: Polled) -> None:
        """A record of the completions topic: checked, re-keyed by loop, or dead-lettered."""
        if isinstance(record, UndecodableRecord):
            await self._dead_letter_record(record, Reason.UNDECODABLE_RECORD, record.error)
            return
        limit = self.settings.review.max_event_bytes
        size = len(record.value or b"")
        if size > limit:
            await self._dead_letter_record(
                record,
                Reason.RECORD_TOO_LARGE,
                f"completion event is {size} bytes, over MODERATION_SINK_MAX_EVENT_BYTES ({limit})",
            )
            return
        try:
            completion = parse_event(record.value)
        except InputError as exc:
            await self._dead_letter_record(record, exc.reason, exc.message)
            return
        command = {
            "kind": "completion",
            "event": orjson.loads(record.value),
            # Where the event came from, so a later DLQ entry still points at it.
            "source": Source(record.topic, record.partition, record.offset).as_json(),
        }
        await self._forward(record, completion.loop_name, command)

    async def _intake_bug(self, record: Polled, error: str) -> None:
        await self._dead_letter_record(record, Reason.INTERNAL_ERROR, error)

    async def _forward(self, record: Polled, loop: str, command: dict[str, Any]) -> None:
        try:
            await self._command(loop, command)
        except RecordRefused as exc:
            await self._dead_letter_record(
                record, Reason.RECORD_TOO_LARGE, f"could not re-key it: {exc}"
            )

    # -- the per-loop state machine -----------------------------------------------------------

    async def _decide(self, stream: Any) -> None:
        async for event in stream.events():
            if not self.exactly_once:
                await self._decide_one(event)
                continue
            async with self.event_lock:  # no commit in the middle of an event
                changes: list[Any] = []
                token = _CHANGES.set(changes)
                try:
                    await self._decide_one(event)
                    # Its table writes are in the producer before the event is acknowledged.
                    await asyncio.wait_for(asyncio.gather(*changes), CHANGELOG_WAIT_S)
                except PublishError:
                    self.broken = True  # half an event: its transaction must never commit
                    raise
                except Exception as exc:  # its table writes failed: stop, a restart redoes it
                    self.broken = True
                    log.error("an event's table writes failed (%r); the worker stops", exc)
                    await self.app.crash(exc)
                    raise
                finally:
                    _CHANGES.reset(token)

    async def _decide_one(self, event: Any) -> None:
        loop = event.key.decode() if isinstance(event.key, bytes) else str(event.key)
        kind = None
        try:
            command = orjson.loads(event.value)
            kind = command.get("kind")
            if kind == "review":
                await self._on_review(loop, command["record"])
            elif kind == "completion":
                await self._on_completion(loop, command)
            elif kind == "sla":
                await self._on_sla(loop)
            elif kind == "retry":
                await self._on_retry(loop)
            elif kind == "orphan":
                await self._on_orphan(loop, command)
        except PublishError:
            raise  # shutting down with a send unacknowledged: leave the event unacked
        except Exception as exc:  # a bug must not stop the sink: keep the event, go on
            log.exception("failed on %s for loop %s", kind, loop)
            await self._dead_letter_event(event, Reason.INTERNAL_ERROR, repr(exc))
        self.metrics.reviews_pending.set(len(self.pending))
        self.metrics.review_early.set(len(self.early))

    async def _on_review(self, loop: str, record: dict[str, Any]) -> None:
        if self.decided.get(loop) is not None:
            return  # a redelivered review record for a loop already decided
        self.pending[loop] = record
        held = self.early.pop(loop, None)
        for command in _held_events(held):  # in arrival order: the first good answer decides
            await self._on_completion(loop, command)

    async def _on_completion(self, loop: str, command: dict[str, Any]) -> None:
        if self.decided.get(loop) is not None:
            log.info("duplicate completion for %s ignored", loop)
            self.metrics.reviews_completed.labels(outcome="duplicate").inc()
            return
        record = self.pending.get(loop)
        if record is None:
            await self._hold(loop, command)
            return
        retry = self.retrying.get(loop)
        if isinstance(retry, dict):
            # Another event of this loop waits for the output store: this one waits behind it
            # (it may be the genuine answer where the first is forged), within bounds.
            queued = list(retry.get("queued", []))
            if len(queued) >= MAX_EVENTS_PER_LOOP:
                await self._dead_letter_command(
                    command,
                    Reason.UNREADABLE_OUTPUT,
                    f"more than {MAX_EVENTS_PER_LOOP} events wait for loop {loop!r}'s output",
                )
                return
            self.retrying[loop] = {**retry, "queued": [*queued, command]}
            return
        await self._finish(loop, record, command)

    async def _hold(self, loop: str, command: dict[str, Any]) -> None:
        """Its review record has not arrived yet: keep the event (every one), within bounds."""
        held = self.early.get(loop)
        events = _held_events(held)
        if len(events) >= MAX_EVENTS_PER_LOOP:
            self.metrics.review_orphans.labels(why="overflow").inc()
            await self._dead_letter_command(
                command,
                Reason.ORPHAN_COMPLETION,
                f"more than {MAX_EVENTS_PER_LOOP} events held for loop {loop!r} without its "
                "review record",
            )
            return
        since = held.get("early_at") if isinstance(held, dict) else None
        self.early[loop] = {
            "events": [*events, command],
            "early_at": since if isinstance(since, int | float) else time.time(),
        }
        await self._bound_early()

    async def _bound_early(self) -> None:
        """Over ``MODERATION_SINK_MAX_EARLY``: send the oldest held events to the DLQ."""
        limit = self.settings.review.max_early
        evicting = {loop for kind, loop in self._requested if kind == "evict"}
        excess = len(self.early) - limit - len(evicting)
        if excess <= 0:
            return
        now = time.time()
        victims: list[tuple[str, float]] = []
        for loop, held in self.early.items():  # insertion order: the oldest first
            if loop in evicting or not isinstance(held, dict):
                continue
            victims.append((loop, float(held.get("early_at", 0.0))))
            if len(victims) >= excess:
                break
        for loop, held_since in victims:
            self._requested[("evict", loop)] = now
            await self._command(loop, {"kind": "orphan", "evict": True, "early_at": held_since})

    async def _on_orphan(self, loop: str, command: dict[str, Any]) -> None:
        evict = bool(command.get("evict"))
        self._requested.pop(("evict" if evict else "orphan", loop), None)
        held = self.early.get(loop)
        if not isinstance(held, dict):
            return  # its review record came in time after all
        held_since = float(held.get("early_at", 0.0))
        age = time.time() - held_since
        if evict:
            if held_since > float(command.get("early_at", 0.0)):
                return  # a newer event for this loop replaced the one chosen for eviction
            why = "evicted"
            message = (
                f"no review record for loop {loop!r}; evicted after {age:.0f}s because "
                f"more than MODERATION_SINK_MAX_EARLY ({self.settings.review.max_early}) "
                "events were waiting"
            )
        else:
            if age < self.settings.review.orphan_ttl_s:
                return
            why = "expired"
            message = (
                f"no review record for loop {loop!r} within MODERATION_SINK_ORPHAN_TTL_S "
                f"({self.settings.review.orphan_ttl_s:g}s)"
            )
        self.early.pop(loop, None)
        for event in _held_events(held):
            self.metrics.review_orphans.labels(why=why).inc()
            await self._dead_letter_command(event, Reason.ORPHAN_COMPLETION, message)

    async def _on_sla(self, loop: str) -> None:
        self._requested.pop(("sla", loop), None)
        record = self.pending.get(loop)
        if record is None or self.decided.get(loop) is not None:
            return
        self.metrics.reviews_timed_out.inc()
        queued = self._clear_retry(loop)
        await self._fallback(loop, record, "review SLA exceeded")
        await self._replay(loop, queued)

    async def _on_retry(self, loop: str) -> None:
        self._requested.pop(("retry", loop), None)
        entry = self.retrying.get(loop)
        if not isinstance(entry, dict):
            return
        record = self.pending.get(loop)
        if record is None or self.decided.get(loop) is not None:
            self.retrying.pop(loop, None)
            return
        await self._finish(loop, record, entry["command"])

    async def _finish(self, loop: str, record: dict[str, Any], command: dict[str, Any]) -> None:
        raw_event = orjson.dumps(command["event"])
        try:
            parsed = parse_event(raw_event)
            if parsed.status != "Completed":
                why = f"human loop {parsed.status}"
                if parsed.failure_code:
                    why += f" ({parsed.failure_code}: {parsed.failure_reason or ''})"
                if parsed.expired:
                    self.metrics.reviews_timed_out.inc()
                queued = self._clear_retry(loop)
                await self._fallback(loop, record, why)
                await self._replay(loop, queued)
                return
            assert parsed.output_uri is not None
            raw = await self.store.read(parsed.output_uri)
            human = decide_from_output(raw, self.settings.review.consensus)
            record_flow = (record.get("review") or {}).get("flow_definition_arn")
            check_origin(
                human,
                loop=loop,
                path_flow_name=parsed.output_flow_name,
                event_flow_arn=parsed.flow_definition_arn,
                record_flow_arn=record_flow if isinstance(record_flow, str) else None,
            )
        except BackendError as exc:
            await self._retry_later(loop, command, exc)
            return
        except InputError as exc:
            # Unusable or forged answers: the event goes to the DLQ; the review stays pending,
            # so the next event or the SLA fallback still decides it.
            queued = self._clear_retry(loop)
            await self._dead_letter_command(command, exc.reason, exc.message)
            await self._replay(loop, queued)
            return
        queued = self._clear_retry(loop)
        created = _parse_time(record.get("review", {}).get("created_at"))
        answered = _parse_time(human.submitted_at) or _parse_time(parsed.time) or time.time()
        duration = max(0.0, answered - created) if created is not None else None
        if duration is not None:
            self.metrics.review_duration.observe(duration)
        reasons = [
            {
                "rule": "human_review",
                "policy": f"consensus:{self.settings.review.consensus}",
                "answers": human.answers,
                "rejecting": human.rejecting,
            }
        ]
        extra = {
            "human_review": {
                "human_loop_name": loop,
                "workers": human.workers,
                "answers": human.answers,
                "rejecting": human.rejecting,
                "consensus": self.settings.review.consensus,
                "duration_s": duration,
                "model_labels": record.get("labels", []),
                "output_uri": parsed.output_uri,
            }
        }
        labels = [label.as_json() for label in human.labels]
        await self._publish_final(
            loop=loop,
            record=record,
            verdict=human.verdict,
            decided_by="human",
            labels=labels,
            reasons=reasons,
            extra=extra,
        )
        await self._replay(loop, queued)

    def _clear_retry(self, loop: str) -> list[dict[str, Any]]:
        """Forget the loop's retry; returns the events that waited behind it."""
        entry = self.retrying.pop(loop, None) if loop in self.retrying else None
        queued = entry.get("queued") if isinstance(entry, dict) else None
        return list(queued) if isinstance(queued, list) else []

    async def _replay(self, loop: str, queued: list[dict[str, Any]]) -> None:
        """Events that waited behind a settled one: a duplicate now, or the next answer."""
        for command in queued:
            await self._on_completion(loop, command)

    async def _retry_later(self, loop: str, command: dict[str, Any], exc: BackendError) -> None:
        """The store is unavailable: try again after a backoff, until the deadline passes."""
        now = time.time()
        entry = self.retrying.get(loop)
        entry = entry if isinstance(entry, dict) else {}
        first = float(entry.get("first_failure", now))
        attempts = int(entry.get("attempts", 0)) + 1
        waited = now - first
        if waited >= self.settings.review.output_retry_s:
            queued = self._clear_retry(loop)
            await self._dead_letter_command(
                command,
                Reason.UNREADABLE_OUTPUT,
                f"output store unavailable for {waited:.0f}s ({attempts} attempts): {exc}",
                attempts=attempts,
            )
            await self._replay(loop, queued)
            return
        delay = full_jitter(attempts, base=1.0, cap=30.0)
        log.warning("output store unavailable for loop %s (%s); retry in %.1fs", loop, exc, delay)
        self.retrying[loop] = {
            "command": command,
            "first_failure": first,
            "attempts": attempts,
            "next_at": now + delay,
            "queued": entry.get("queued", []),
        }

    async def _fallback(self, loop: str, record: dict[str, Any], why: str) -> None:
        action = self.settings.review.fallback
        reasons = [{"rule": "review_fallback", "policy": f"fallback:{action}", "why": why}]
        if action == "requeue":
            requeued = dict(record)
            review = dict(record.get("review", {}))
            review["requeued"] = int(review.get("requeued", 0)) + 1
            review["requeue_reason"] = why
            now = time.time()
            review["created_at"] = _iso(now)
            review["deadline"] = _iso(now + self.settings.review.sla_s)
            requeued["review"] = review
            self.pending[loop] = requeued
            request_id = str(record.get("id", ""))
            await self._publish(
                self.reviews,
                key=request_id.encode(),
                value=orjson.dumps(requeued),
                headers=output_headers([], verdict="review", decided_by="fallback", id=request_id),
                record=record,
            )
            self.metrics.reviews_completed.labels(outcome="requeued").inc()
            return
        verdict = "rejected" if action == "reject" else "approved"
        labels = list(record.get("labels", []))
        extra = {"human_review": {"human_loop_name": loop, "fallback": action, "why": why}}
        await self._publish_final(
            loop=loop,
            record=record,
            verdict=verdict,
            decided_by="fallback",
            labels=labels,
            reasons=reasons,
            extra=extra,
        )

    async def _publish_final(
        self,
        *,
        loop: str,
        record: dict[str, Any],
        verdict: str,
        decided_by: str,
        labels: list[dict[str, Any]],
        reasons: list[dict[str, Any]],
        extra: dict[str, Any],
    ) -> None:
        final = {
            "schema_version": 1,
            "id": record.get("id"),
            "verdict": verdict,
            "decided_by": decided_by,
            "labels": labels,
            "model_version": record.get("model_version"),
            "reasons": reasons,
            "attributes": record.get("attributes"),
            "image": record.get("image"),
            "source": record.get("source"),
            "received_at": record.get("received_at"),
            "decided_at": utc_now(),
            **extra,
        }
        request_id = str(record.get("id", ""))
        # Record the decision first: if the process dies after this, a redelivered event is
        # recognised as a duplicate (at worst the verdict below is the one thing repeated).
        self.decided[loop] = verdict
        self.pending.pop(loop, None)
        sent = await self._publish(
            self.outputs[verdict],
            key=request_id.encode(),
            value=orjson.dumps(final),
            headers=output_headers([], verdict=verdict, decided_by=decided_by, id=request_id),
            record=record,
        )
        if not sent:
            return
        self.metrics.verdicts.labels(verdict=verdict, decided_by=decided_by).inc()
        outcome = verdict if decided_by == "human" else f"fallback_{verdict}"
        self.metrics.reviews_completed.labels(outcome=outcome).inc()
        log.info(
            "loop %s decided: %s by %s", loop, verdict, decided_by, extra={"message_id": request_id}
        )

    async def _publish(
        self,
        channel: Any,
        *,
        key: bytes,
        value: bytes,
        headers: list[tuple[str, bytes]],
        record: dict[str, Any],
    ) -> bool:
        """Send one of our outputs; one the broker refuses goes to the DLQ in its place."""
        try:
            await self._send(channel, key=key, value=value, headers=headers)
        except RecordRefused as exc:
            await self._dead_letter(
                DeadLetter(
                    source=_source_of(record.get("source")),
                    key=key,
                    value=value,
                    headers=headers,
                    reason=Reason.OUTPUT_TOO_LARGE,
                    message=str(exc),
                    request_id=str(record.get("id", "")) or None,
                )
            )
            return False
        return True

    # -- timers: they only send commands; the loop's own partition acts on them ------------------

    async def _sla_sweep(self) -> None:
        now = time.time()
        try:
            for loop, record in list(self.pending.items()):
                deadline = _parse_time((record or {}).get("review", {}).get("deadline"))
                if deadline is not None and deadline < now and self._request("sla", loop, now):
                    await self._command(loop, {"kind": "sla"})
            ttl = self.settings.review.orphan_ttl_s
            for loop, held in list(self.early.items()):
                held_since = held.get("early_at") if isinstance(held, dict) else None
                if not isinstance(held_since, int | float):
                    continue
                if now - held_since >= ttl and self._request("orphan", loop, now):
                    await self._command(loop, {"kind": "orphan"})
        except RecordRefused:
            log.exception("sweep could not send a command")  # tiny commands: never expected

    async def _upkeep(self) -> None:
        """The worker's heartbeat (liveness), and output reads whose backoff is over."""
        self.health.polled()
        now = time.time()
        try:
            for loop, entry in list(self.retrying.items()):
                due = entry.get("next_at") if isinstance(entry, dict) else None
                if (
                    isinstance(due, int | float)
                    and due <= now
                    and self._request("retry", loop, now)
                ):
                    await self._command(loop, {"kind": "retry"})
        except RecordRefused:
            log.exception("upkeep could not send a command")
        self.metrics.review_early.set(len(self.early))

    # -- dead letters ---------------------------------------------------------------------------

    async def _dead_letter_event(self, event: Any, reason: str, message: str) -> None:
        """A faust event of the sink's own per-loop topic."""
        msg = event.message
        headers = list(msg.headers.items() if isinstance(msg.headers, dict) else msg.headers or [])
        source = Source(msg.topic, msg.partition, msg.offset)
        await self._dead_letter(
            DeadLetter(source, msg.key, msg.value, reason, message, headers=headers)
        )

    async def _dead_letter_record(self, record: Polled, reason: str, message: str) -> None:
        """A record of the review or completions topic, as the intake read it."""
        source = Source(record.topic, record.partition, record.offset)
        headers = list(record.headers or ())
        await self._dead_letter(
            DeadLetter(source, record.key, record.value, reason, message, headers=headers)
        )

    async def _dead_letter_command(
        self, command: dict[str, Any], reason: str, message: str, *, attempts: int = 1
    ) -> None:
        """Dead-letter a completion event held in a command, pointing at where it came from."""
        value = orjson.dumps(command.get("event"))
        source = _source_of(command.get("source"))
        await self._dead_letter(DeadLetter(source, None, value, reason, message, attempts=attempts))

    async def _dead_letter(self, letter: DeadLetter) -> None:
        source = letter.source
        log.info(
            "dead-lettering %s[%d]@%d: %s (%s)",
            source.topic,
            source.partition,
            source.offset,
            letter.reason,
            letter.message,
        )
        letter = replace(letter, consumer="sink")
        limit = self.settings.safety.dlq_max_record_bytes
        try:
            await publish_dead_letter(
                self, self.settings.kafka.dlq_topic, letter, max_record_bytes=limit
            )
        except RecordRefused as exc:  # even the facts alone: a broker misconfiguration
            log.error("the DLQ refused a dead letter (%s): %s", letter.reason, exc)
            return
        self.metrics.dead_letters.labels(reason=str(letter.reason)).inc()

    async def publish(self, topic: str, key: bytes | None, value: bytes, headers: Headers) -> None:
        """The publishing protocol the shared dead-letter code speaks, over faust's topics."""
        await self._send(self._channels[topic], key=key, value=value, headers=headers)


class _SinkApp(faust.App):
    """The faust app; under exactly_once its transport makes :class:`_SinkTransactions`."""

    def __init__(self, sink: CompletionSink, app_id: str, **options: Any) -> None:
        super().__init__(app_id, **options)
        self.moderation_sink = sink

    def _new_transport(self) -> Any:
        transport = super()._new_transport()
        if self.moderation_sink.exactly_once:
            transport.TransactionManager = _SinkTransactions  # type: ignore[misc]
        return transport


class _RecordedTable(faust.Table[Any, Any]):
    """exactly_once: a table whose writes the event in hand waits for (see ``_CHANGES``)."""

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        sent = super().send_changelog(*args, **kwargs)
        changes = _CHANGES.get()
        if changes is not None:
            changes.append(sent)
        return sent


class _SinkTransactions(TransactionManager):
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
        sink: CompletionSink = self.app.moderation_sink  # type: ignore[attr-defined]
        async with sink.event_lock:  # never between an event's writes
            if sink.broken:
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
                sink.broken = True
                log.error("transaction commit failed (%r); the worker stops", exc)
                await self.app.crash(exc)
                return False


class _Clients(mode.Service):
    """Starts the output store and the HTTP endpoints with the worker, stops them with it."""

    def __init__(self, sink: CompletionSink) -> None:
        super().__init__()
        self._sink = sink

    async def on_start(self) -> None:
        await self._sink.start_clients()

    async def on_stop(self) -> None:
        await self._sink.stop_clients()


class _SinkWorker(faust.Worker):
    """The faust worker, telling the sink as soon as it starts to stop (before the app drains)."""

    def __init__(self, sink: CompletionSink, **kwargs: Any) -> None:
        super().__init__(sink.app, **kwargs)
        self._sink = sink

    async def on_stop(self) -> None:
        # Runs before the app's consumer waits for agents to finish their current event, so a
        # retry wait or an unacknowledged send ends now and SIGTERM exits within the grace.
        self._sink.stopping.set()
        await super().on_stop()


def _held_events(held: object) -> list[dict[str, Any]]:
    """The events an ``early`` entry holds, oldest first."""
    events = held.get("events") if isinstance(held, dict) else None
    return (
        [event for event in events if isinstance(event, dict)] if isinstance(events, list) else []
    )


def _iso(epoch: float) -> str:
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def run_sink(settings: Settings) -> None:
    """Run the faust worker in the foreground; it handles SIGTERM (drain, commit, exit)."""
    if settings.kafka.bootstrap_servers is None:
        raise ConfigError(
            "KAFKA_BOOTSTRAP_SERVERS", "required for the sink (it joins an existing broker)"
        )
    try:  # faust creates only the last level of its data directory
        settings.sink_data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("MODERATION_SINK_DATA_DIR", f"cannot create it: {exc}") from exc
    sink = CompletionSink(settings, settings.kafka.bootstrap_servers)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # the worker runs on it after the check
    try:
        loop.run_until_complete(sink.probe())  # exactly_once without transactions: exit now
    except ConfigError:
        loop.close()
        raise
    worker = _SinkWorker(
        sink,
        loglevel=settings.log_level.lower(),
        override_logging=False,  # keep our JSON logs
        quiet=True,
        redirect_stdouts=False,
        stdout=sys.stderr,
    )
    worker.spinner = None  # it writes terminal control codes even into log files
    worker.execute_from_commandline()
