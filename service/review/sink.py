"""The completion sink (faust-streaming): reviewers' answers back into the stream as verdicts.

Two inputs, one decision per human loop:

* the **review topic** (our own pipeline's review records), so the final verdict can carry the
  original request even when the completion event arrives first;
* the **completions topic**: A2I's EventBridge events ("SageMaker A2I HumanLoop Status Change"),
  from managed A2I through an EventBridge-to-Kafka bridge, or from our self-hosted console, which
  writes the same events and the same ``output.json``.

Both are read by the sink's own consumer (:mod:`service.review.intake`, which survives records
the Kafka client cannot decode), checked at the door (review records by the parser the console
uses too, :func:`~service.review.records.parse_review_record`; events by
:func:`~service.review.events.parse_event`, after a size check) and re-keyed by loop name onto one
internal topic, so every decision about a loop happens in one partition, next to its state in
changelog-backed tables (:mod:`service.review.state`).

The decisions themselves are :func:`service.review.decider.decide`, a pure function; this module
is the adapter around it. For each event of the per-loop topic it loads the loop's state from
the tables, feeds the event (and the time) to the decider, writes back what changed, then carries
out the decider's outputs in order: a verdict or requeued review record to its topic, a dead
letter, a metric, a log line, or a read of ``output.json`` whose answer it feeds back as the
next event. Timers only send commands (``sla``, ``orphan``, ``retry``) to the loop's own
partition; which loops are due is decided by the decider's helpers too.

No event can hold the others up. An agent handles its partition's events one at a time, so
nothing in an agent sleeps: a read of ``output.json`` is one attempt bounded by timeouts, and when
the store is unavailable the event waits in ``output-retries`` (a table) while a timer sends it
back to its loop when its backoff is over. Every send waits for the broker's answer: a record the
broker refuses for good is dead-lettered instead of killing the agent.

``at_least_once`` (the default) de-duplicates by loop: a graceful restart (SIGTERM) emits no
duplicate; a SIGKILL between sending a verdict and recording the loop as decided can repeat that
one verdict, with the same key.

``exactly_once`` (MODERATION_PROCESSING_GUARANTEE; the broker must have transactions, checked at
start) makes both stages transactional. The intake holds each record's sends and commits them
with its input offsets (:mod:`service.review.intake`). The deciding stage runs faust's own
``processing_guarantee="exactly_once"``, with the corrections in :mod:`service.review.faust_eos`
(outputs in the transaction of the event that produced them, no commit in the middle of an event,
a failed commit stops the worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

import faust
import mode
import orjson
from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError

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
    TransactionalCommitter,
    probe_transactions,
)
from service.kafka.transactions import (
    Output as HeldOutput,
)
from service.messages import DeadLetter, Headers, Source, id_of_invalid
from service.metrics import SinkMetrics
from service.retry import full_jitter
from service.review.decider import (
    CompletionArrived,
    Config,
    Duplicate,
    EarlyGrew,
    Event,
    OrphanDue,
    Orphaned,
    Output,
    OutputRead,
    OutputUnavailable,
    OutputUnreadable,
    Publish,
    ReadOutput,
    ReadResult,
    Requests,
    RetryDue,
    RetryScheduled,
    ReviewArrived,
    ReviewTook,
    SendToDlq,
    SlaDue,
    Superseded,
    TimedOut,
    decide,
    due,
    evictions,
    expired,
    overdue,
)
from service.review.events import parse_event
from service.review.faust_eos import EventGate, RecordedTable, SinkApp
from service.review.intake import SinkIntake
from service.review.outputs import OutputStore
from service.review.records import (
    parse_review_record,
    review_deadline,
    review_record_limit,
    review_record_of,
)
from service.review.state import (
    LoopState,
    completion_of,
    held_json,
    held_of,
    held_since,
    retry_json,
    retry_of,
    review_of,
)
from service.settings import Settings

log = logging.getLogger(__name__)

SLA_SWEEP_S = 5.0
UPKEEP_S = 1.0  # the worker's heartbeat, and how often due output retries are sent back
SHUTDOWN_SEND_S = 5.0  # how long a send may still wait for the broker once shutdown began
_FORWARD_HEADROOM = 64 * 1024  # the re-keyed command wraps the record in a few bytes of JSON


class CompletionSink:
    """Builds the faust app and owns the clients its agents use."""

    def __init__(self, settings: Settings, bootstrap: str, *, partitions: int = 4) -> None:
        self.settings = settings
        self._bootstrap = bootstrap
        self.metrics = SinkMetrics()
        self.metrics.initialise()
        kafka = settings.kafka
        review = settings.review
        self.health = Health(started=False, stall_after_s=review.liveness_s)
        #: Set when the worker starts to stop: retry waits end, so SIGTERM exits in time.
        self.stopping = asyncio.Event()
        # What the pipeline may write to the review topic, the sink must be able to forward.
        self._max_review_bytes = review_record_limit(kafka.max_input_bytes)
        self.exactly_once = kafka.processing_guarantee == "exactly_once"
        #: exactly_once: one event at a time against the commits (see service.review.faust_eos).
        self.gate = EventGate() if self.exactly_once else None
        eos: dict[str, Any] = {"Table": RecordedTable} if self.exactly_once else {}
        self.app = SinkApp(
            f"{kafka.group_id}-review-sink",
            gate=self.gate,
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
        self.output_topics = {
            "approved": app.topic(kafka.approved_topic),
            "rejected": app.topic(kafka.rejected_topic),
            "review": self.reviews,
            "dlq": app.topic(kafka.dlq_topic),
        }
        self._channels = {topic.get_topic_name(): topic for topic in self.output_topics.values()}
        table_schema: Any = faust.Schema(
            key_type=str, value_type=None, key_serializer="raw", value_serializer="json"
        )
        self.pending = app.Table("pending-reviews", default=None, schema=table_schema)
        self.early = app.Table("early-completions", default=None, schema=table_schema)
        self.decided = app.Table("decided-loops", default=None, schema=table_schema)
        # loop -> completion waiting for the output store: command, first failure, attempts, due.
        self.retrying = app.Table("output-retries", default=None, schema=table_schema)
        # The timers' commands on their way, so each is sent once at a time.
        self._requests = Requests()
        self.decider_config = Config(
            fallback=review.fallback,
            consensus=review.consensus,
            sla_s=review.sla_s,
            orphan_ttl_s=review.orphan_ttl_s,
            max_early=review.max_early,
            output_retry_s=review.output_retry_s,
            backoff=_store_backoff,
        )
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
            held.outputs.append(HeldOutput(name, key, value, list(headers or ())))
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

    # -- routing onto the per-loop topic ------------------------------------------------------

    async def route_review(self, record: Polled) -> None:
        """A record of the review topic: re-keyed by loop, or dead-lettered (with its request id
        when it has a usable one, as the console's intake does)."""
        request_id = id_of_invalid(record.value, self._max_review_bytes)
        if isinstance(record, UndecodableRecord):
            await self._dead_letter_record(
                record, Reason.UNDECODABLE_RECORD, record.error, request_id=request_id
            )
            return
        try:
            review = parse_review_record(record.value, max_bytes=self._max_review_bytes)
        except InputError as exc:
            await self._dead_letter_record(record, exc.reason, exc.message, request_id=request_id)
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

    # -- the per-loop decisions: the decider decides, this executes --------------------------

    async def _decide(self, stream: Any) -> None:
        async for event in stream.events():
            if self.gate is None:
                await self._decide_one(event)
                continue
            async with self.gate.event(self.app):  # exactly_once: never half an event
                await self._decide_one(event)

    async def _decide_one(self, event: Any) -> None:
        loop = event.key.decode() if isinstance(event.key, bytes) else str(event.key)
        kind = None
        try:
            command = orjson.loads(event.value)
            kind = command.get("kind")
            decision = self._event_of(loop, kind, command)
            if decision is not None:
                await self._run(loop, decision)
        except PublishError:
            raise  # shutting down with a send unacknowledged: leave the event unacked
        except InputError as exc:  # a review record the sink forwarded that is not one (a bug)
            await self._dead_letter_event(event, exc.reason, exc.message)
        except Exception as exc:  # a bug must not stop the sink: keep the event, go on
            log.exception("failed on %s for loop %s", kind, loop)
            await self._dead_letter_event(event, Reason.INTERNAL_ERROR, repr(exc))
        self.metrics.reviews_pending.set(len(self.pending))
        self.metrics.review_early.set(len(self.early))

    def _event_of(self, loop: str, kind: object, command: dict[str, Any]) -> Event | None:
        """The decider's event for a command of the per-loop topic (None: unknown, ignored)."""
        if kind == "review":
            return ReviewArrived(review_record_of(command["record"]))
        if kind == "completion":
            return CompletionArrived(completion_of(command))
        if kind == "sla":
            self._requests.handled("sla", loop)
            return SlaDue()
        if kind == "retry":
            self._requests.handled("retry", loop)
            return RetryDue()
        if kind == "orphan":
            evict = bool(command.get("evict"))
            self._requests.handled("evict" if evict else "orphan", loop)
            return OrphanDue(evict, float(command.get("early_at", 0.0)))
        return None

    async def _run(self, loop: str, event: Event) -> None:
        """Feed the event to the decider, store its state, carry out its outputs; an output
        read's answer is the next event, until the decider asks for nothing more."""
        state = await self._load(loop)
        next_event: Event | None = event
        while next_event is not None:
            new, outputs = decide(
                state, next_event, loop=loop, now=time.time(), config=self.decider_config
            )
            self._store(loop, state, new)  # the decision is recorded before it is sent
            state, next_event = new, None
            for output in outputs:
                if isinstance(output, ReadOutput):  # always the last one
                    next_event = await self._read(output.uri)
                else:
                    await self._execute(loop, output)

    async def _load(self, loop: str) -> LoopState:
        """The loop's state from the tables."""
        stored = self.pending.get(loop)
        try:
            review = review_of(stored)
        except InputError as exc:
            # Only an older sink, which did not check records at the door, could have kept it:
            # dead-letter it once, as the door would have, and go on without it.
            log.error("loop %s: its stored review record is not one (%s)", loop, exc.message)
            self.pending.pop(loop, None)
            value = orjson.dumps(stored)
            await self._dead_letter(
                DeadLetter(Source("pending-reviews", -1, -1), None, value, exc.reason, exc.message)
            )
            review = None
        decided = self.decided.get(loop)
        return LoopState(
            review=review,
            held=held_of(self.early.get(loop)),
            decided=str(decided) if decided is not None else None,
            retry=retry_of(self.retrying.get(loop)),
        )

    def _store(self, loop: str, old: LoopState, new: LoopState) -> None:
        """Write what changed (each write is a changelog record)."""
        if new.review is not old.review:
            if new.review is None:
                self.pending.pop(loop, None)
            else:
                self.pending[loop] = new.review.raw
        if new.held is not old.held:
            if new.held is None:
                self.early.pop(loop, None)
            else:
                self.early[loop] = held_json(new.held)
        if new.decided != old.decided:
            if new.decided is None:
                self.decided.pop(loop, None)
            else:
                self.decided[loop] = new.decided
        if new.retry is not old.retry:
            if new.retry is None:
                self.retrying.pop(loop, None)
            else:
                self.retrying[loop] = retry_json(new.retry)

    async def _read(self, uri: str) -> ReadResult:
        """One read of an ``output.json``, bounded by the store's timeouts, never retried here."""
        try:
            data = await self.store.read(uri)
        except BackendError as exc:
            return OutputUnavailable(str(exc))
        except InputError as exc:
            return OutputUnreadable(exc.reason, exc.message)
        return OutputRead(data)

    async def _execute(self, loop: str, output: Output) -> None:
        metrics = self.metrics
        if isinstance(output, Publish):
            await self._publish(loop, output)
        elif isinstance(output, SendToDlq):
            completion = output.completion
            value = orjson.dumps(completion.event)
            await self._dead_letter(
                DeadLetter(
                    completion.source,
                    None,
                    value,
                    output.reason,
                    output.message,
                    attempts=output.attempts,
                )
            )
        elif isinstance(output, Duplicate):
            log.info("duplicate completion for %s ignored", loop)
            metrics.reviews_completed.labels(outcome="duplicate").inc()
        elif isinstance(output, Superseded):
            log.info("a completion for %s was set aside: the loop was decided meanwhile", loop)
        elif isinstance(output, TimedOut):
            metrics.reviews_timed_out.inc()
        elif isinstance(output, Orphaned):
            metrics.review_orphans.labels(why=output.why).inc()
        elif isinstance(output, ReviewTook):
            metrics.review_duration.observe(output.seconds)
        elif isinstance(output, RetryScheduled):
            log.warning(
                "output store unavailable for loop %s (%s); retry in %.1fs",
                loop,
                output.error,
                output.delay_s,
            )
        elif isinstance(output, EarlyGrew):
            await self._bound_early()
        # StaleReview: a redelivered review record for a decided loop; nothing to do.

    async def _publish(self, loop: str, output: Publish) -> None:
        """Send a verdict or a requeued review; one the broker refuses goes to the DLQ instead."""
        record = output.record
        try:
            await self._send(
                self.output_topics[output.topic],
                key=record.key,
                value=record.value,
                headers=record.headers,
            )
            sent = True
        except RecordRefused as exc:
            await self._dead_letter(
                DeadLetter(
                    source=output.source,
                    key=record.key,
                    value=record.value,
                    headers=record.headers,
                    reason=Reason.OUTPUT_TOO_LARGE,
                    message=str(exc),
                    request_id=output.request_id or None,
                )
            )
            sent = False
        if output.topic == "review":
            self.metrics.reviews_completed.labels(outcome="requeued").inc()
            return
        if not sent:
            return
        verdict, decided_by = output.topic, output.decided_by
        self.metrics.verdicts.labels(verdict=verdict, decided_by=decided_by).inc()
        outcome = verdict if decided_by == "human" else f"fallback_{verdict}"
        self.metrics.reviews_completed.labels(outcome=outcome).inc()
        log.info(
            "loop %s decided: %s by %s",
            loop,
            verdict,
            decided_by,
            extra={"message_id": output.request_id},
        )

    async def _bound_early(self) -> None:
        """Over ``MODERATION_SINK_MAX_EARLY``: send the oldest held events to the DLQ."""
        victims = evictions(
            len(self.early),
            self._held_since(),
            limit=self.settings.review.max_early,
            evicting=self._requests.evicting(),
        )
        now = time.time()
        for loop, since in victims:
            self._requests.sent("evict", loop, now)
            await self._command(loop, {"kind": "orphan", "evict": True, "early_at": since})

    def _held_since(self) -> Iterator[tuple[str, float]]:
        """(loop, held since) of each loop holding events, oldest first (insertion order)."""
        for loop, value in self.early.items():
            since = held_since(value)
            if since is not None:
                yield loop, since

    # -- timers: they only send commands; the loop's own partition acts on them ------------------

    async def _sla_sweep(self) -> None:
        now = time.time()
        try:
            deadlines = [
                (loop, _epoch(review_deadline(record)))
                for loop, record in list(self.pending.items())
            ]
            for loop in overdue(deadlines, now):
                if self._requests.ask("sla", loop, now):
                    await self._command(loop, {"kind": "sla"})
            for loop in expired(self._held_since(), now, self.settings.review.orphan_ttl_s):
                if self._requests.ask("orphan", loop, now):
                    await self._command(loop, {"kind": "orphan"})
        except RecordRefused:
            log.exception("sweep could not send a command")  # tiny commands: never expected

    async def _upkeep(self) -> None:
        """The worker's heartbeat (liveness), and output reads whose backoff is over."""
        self.health.polled()
        now = time.time()
        try:
            waiting = [
                (loop, retry.next_at)
                for loop, value in list(self.retrying.items())
                if (retry := retry_of(value)) is not None
            ]
            for loop in due(waiting, now):
                if self._requests.ask("retry", loop, now):
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

    async def _dead_letter_record(
        self, record: Polled, reason: str, message: str, *, request_id: str | None = None
    ) -> None:
        """A record of the review or completions topic, as the intake read it."""
        source = Source(record.topic, record.partition, record.offset)
        headers = list(record.headers or ())
        await self._dead_letter(
            DeadLetter(
                source,
                record.key,
                record.value,
                reason,
                message,
                headers=headers,
                request_id=request_id,
            )
        )

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


def _epoch(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


def _store_backoff(attempts: int) -> float:
    """Seconds until the output store is asked again after ``attempts`` failures."""
    return full_jitter(attempts, base=1.0, cap=30.0)


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
