"""The completion sink (faust-streaming): reviewers' answers back into the stream as verdicts.

Two inputs, one state machine per human loop:

* the **review topic** (our own pipeline's review records), so the final verdict can carry the
  original request even when the completion event arrives first;
* the **completions topic**: A2I's EventBridge events ("SageMaker A2I HumanLoop Status Change"),
  from managed A2I through an EventBridge-to-Kafka bridge, or from our self-hosted console, which
  writes the same events and the same ``output.json``.

Both are re-keyed by loop name onto one internal topic, so every decision about a loop happens in
one partition, next to its state in changelog-backed tables:

* ``pending``: loop -> review record, waiting for people;
* ``early``: loop -> completion event that arrived before its review record;
* ``decided``: loop -> final verdict; a second event for a decided loop (EventBridge delivers at
  least once) is counted and ignored, never a second verdict.

``Completed`` loops are decided from ``output.json`` (see :mod:`service.review.answers`);
``Failed``, ``Stopped`` and expired loops, and reviews past their SLA, get the configured fallback
(``reject``, ``approve`` or ``requeue``) with ``decided_by: fallback``. Malformed events and
unreadable outputs go to the DLQ; the sink never stops on bad input.

Exactly-once needs Kafka transactions, which the embedded broker lacks: the sink is at-least-once
with de-duplication by loop. A graceful restart (SIGTERM) emits no duplicate; a SIGKILL between
sending a verdict and recording the loop as decided can repeat that one verdict, with the same key.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

import faust
import mode
import orjson

from service.errors import BackendError, ConfigError, InputError, Reason
from service.http_server import Health, HttpServer
from service.messages import Source, dlq_record, output_headers, utc_now
from service.metrics import Metrics
from service.retry import full_jitter
from service.review.answers import decide_from_output
from service.review.events import parse_event
from service.review.store import OutputStore
from service.settings import Settings

log = logging.getLogger(__name__)

SLA_SWEEP_S = 5.0


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class CompletionSink:
    """Builds the faust app and owns the clients its agents use."""

    def __init__(self, settings: Settings, bootstrap: str, *, partitions: int = 4) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.metrics.initialise(settings.backend.kind)
        self.health = Health(started=False)
        kafka = settings.kafka
        review = settings.review
        self.app = faust.App(
            f"{kafka.group_id}-review-sink",
            broker=f"kafka://{bootstrap}",
            store="memory://",
            key_serializer="raw",
            value_serializer="raw",
            topic_partitions=partitions,
            topic_replication_factor=1,
            table_standby_replicas=0,
            broker_session_timeout=kafka.session_timeout_ms / 1000,
            broker_heartbeat_interval=max(1.0, kafka.session_timeout_ms / 3000),
            producer_max_batch_size=settings.sink_producer_max_batch_size,
            consumer_auto_offset_reset="earliest",
            web_enabled=False,
        )
        app = self.app
        self.store = OutputStore(
            region=settings.backend.region,
            s3_endpoint_url=review.s3_endpoint_url,
            local_root=review.local_store,
        )
        self.reviews = app.topic(kafka.review_topic)
        self.completions = app.topic(review.completions_topic)
        self.by_loop = app.topic(f"{app.conf.id}-by-loop", internal=True, partitions=partitions)
        self.outputs = {
            "approved": app.topic(kafka.approved_topic),
            "rejected": app.topic(kafka.rejected_topic),
            "review": self.reviews,
            "dlq": app.topic(kafka.dlq_topic),
        }
        table_schema: Any = faust.Schema(
            key_type=str, value_type=None, key_serializer="raw", value_serializer="json"
        )
        self.pending = app.Table("pending-reviews", default=None, schema=table_schema)
        self.early = app.Table("early-completions", default=None, schema=table_schema)
        self.decided = app.Table("decided-loops", default=None, schema=table_schema)
        self._sla_requested: set[str] = set()
        self._http = HttpServer(self.metrics, self.health, settings.http_host, settings.http_port)

        app.agent(self.reviews, name="route-reviews")(self._route_reviews)
        app.agent(self.completions, name="route-completions")(self._route_completions)
        app.agent(self.by_loop, name="decide")(self._decide)
        app.timer(SLA_SWEEP_S, name="sla-sweep")(self._sla_sweep)
        app.add_dependency(_Clients(self))

    async def start_clients(self) -> None:
        await self.store.start()
        await self._http.start()
        self.health.started = True
        self.health.partitions = 1  # readiness: the worker is up; faust owns assignment
        log.info("review sink started (http port %s)", self._http.port)

    async def stop_clients(self) -> None:
        await self._http.close()
        await self.store.close()

    # -- routing onto the per-loop topic ------------------------------------------------------

    async def _route_reviews(self, stream: Any) -> None:
        async for event in stream.events():
            try:
                record, loop = _review_of(event.value)
            except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                await self._dead_letter_event(
                    event, Reason.MALFORMED_JSON, f"not a review record: {exc!r}"
                )
                continue
            command = {"kind": "review", "record": record}
            await self.by_loop.send(key=loop.encode(), value=orjson.dumps(command))

    async def _route_completions(self, stream: Any) -> None:
        async for event in stream.events():
            try:
                completion = parse_event(event.value)
            except InputError as exc:
                await self._dead_letter_event(event, exc.reason, exc.message)
                continue
            msg = event.message
            command = {
                "kind": "completion",
                "event": orjson.loads(event.value),
                # Where the event came from, so a later DLQ entry still points at it.
                "source": {"topic": msg.topic, "partition": msg.partition, "offset": msg.offset},
            }
            await self.by_loop.send(key=completion.loop_name.encode(), value=orjson.dumps(command))

    # -- the per-loop state machine -----------------------------------------------------------

    async def _decide(self, stream: Any) -> None:
        async for event in stream.events():
            command = orjson.loads(event.value)
            loop = event.key.decode() if isinstance(event.key, bytes) else str(event.key)
            kind = command.get("kind")
            try:
                if kind == "review":
                    await self._on_review(loop, command["record"])
                elif kind == "completion":
                    await self._on_completion(loop, command)
                elif kind == "sla":
                    await self._on_sla(loop)
            except Exception as exc:  # a bug must not stop the sink: keep the event, go on
                log.exception("failed on %s for loop %s", kind, loop)
                await self._dead_letter_event(event, Reason.INTERNAL_ERROR, repr(exc))
            self.metrics.reviews_pending.set(len(self.pending))

    async def _on_review(self, loop: str, record: dict[str, Any]) -> None:
        if self.decided.get(loop) is not None:
            return  # a redelivered review record for a loop already decided
        self.pending[loop] = record
        waiting = self.early.get(loop)
        if waiting is not None:
            self.early.pop(loop, None)
            await self._finish(loop, record, waiting)

    async def _on_completion(self, loop: str, command: dict[str, Any]) -> None:
        if self.decided.get(loop) is not None:
            log.info("duplicate completion for %s ignored", loop)
            self.metrics.reviews_completed.labels(outcome="duplicate").inc()
            return
        record = self.pending.get(loop)
        if record is None:
            self.early[loop] = command  # its review record has not arrived yet
            return
        await self._finish(loop, record, command)

    async def _on_sla(self, loop: str) -> None:
        self._sla_requested.discard(loop)
        record = self.pending.get(loop)
        if record is None or self.decided.get(loop) is not None:
            return
        self.metrics.reviews_timed_out.inc()
        await self._fallback(loop, record, "review SLA exceeded")

    async def _finish(self, loop: str, record: dict[str, Any], command: dict[str, Any]) -> None:
        raw_event = orjson.dumps(command["event"])
        parsed = parse_event(raw_event)
        if parsed.status != "Completed":
            why = f"human loop {parsed.status}"
            if parsed.failure_code:
                why += f" ({parsed.failure_code}: {parsed.failure_reason or ''})"
            if parsed.expired:
                self.metrics.reviews_timed_out.inc()
            await self._fallback(loop, record, why)
            return
        assert parsed.output_uri is not None
        try:
            raw = await self._read_output(parsed.output_uri)
            human = decide_from_output(raw, self.settings.review.consensus)
        except InputError as exc:
            # Unreadable answers: the event goes to the DLQ; the review stays pending, so the
            # SLA fallback still decides it if nothing better arrives.
            origin = command.get("source") or {}
            source = Source(
                str(origin.get("topic", "")),
                int(origin.get("partition", -1)),
                int(origin.get("offset", -1)),
            )
            await self._dead_letter(
                source,
                key=None,
                value=raw_event,
                headers=[],
                reason=exc.reason,
                message=exc.message,
            )
            return
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

    async def _read_output(self, uri: str) -> bytes:
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self.store.read(uri)
            except BackendError as exc:
                log.warning("output store unavailable (%s); retry %d", exc, attempt)
                await asyncio.sleep(full_jitter(attempt, base=0.5, cap=30.0))

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
            await self.reviews.send(
                key=str(record.get("id", "")).encode(),
                value=orjson.dumps(requeued),
                headers=output_headers(
                    [], verdict="review", decided_by="fallback", id=str(record.get("id", ""))
                ),
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
        await self.outputs[verdict].send(
            key=request_id.encode(),
            value=orjson.dumps(final),
            headers=output_headers([], verdict=verdict, decided_by=decided_by, id=request_id),
        )
        self.metrics.verdicts.labels(verdict=verdict, decided_by=decided_by).inc()
        outcome = verdict if decided_by == "human" else f"fallback_{verdict}"
        self.metrics.reviews_completed.labels(outcome=outcome).inc()
        log.info(
            "loop %s decided: %s by %s", loop, verdict, decided_by, extra={"message_id": request_id}
        )

    async def _sla_sweep(self) -> None:
        now = time.time()
        for loop, record in list(self.pending.items()):
            deadline = _parse_time((record or {}).get("review", {}).get("deadline"))
            if deadline is not None and deadline < now and loop not in self._sla_requested:
                self._sla_requested.add(loop)
                await self.by_loop.send(key=loop.encode(), value=orjson.dumps({"kind": "sla"}))

    async def _dead_letter_event(self, event: Any, reason: str, message: str) -> None:
        msg = event.message
        source = Source(msg.topic, msg.partition, msg.offset)
        headers = list(msg.headers.items() if isinstance(msg.headers, dict) else msg.headers or [])
        await self._dead_letter(
            source, key=msg.key, value=msg.value, headers=headers, reason=reason, message=message
        )

    async def _dead_letter(
        self,
        source: Source,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        reason: str,
        message: str,
    ) -> None:
        log.info(
            "dead-lettering %s[%d]@%d: %s (%s)",
            source.topic,
            source.partition,
            source.offset,
            reason,
            message,
        )
        record = dlq_record(
            key=key,
            value=value,
            source=source,
            reason=reason,
            message=message,
            attempts=1,
            request_id=None,
        )
        out_headers = output_headers(headers, error_reason=str(reason))
        await self.outputs["dlq"].send(key=key, value=record, headers=out_headers)
        self.metrics.dead_letters.labels(reason=str(reason)).inc()


def _review_of(value: bytes) -> tuple[dict[str, Any], str]:
    record = orjson.loads(value)
    loop = record["review"]["human_loop_name"]
    if not isinstance(loop, str) or not loop:
        raise TypeError("review.human_loop_name must be a non-empty string")
    return record, loop


class _Clients(mode.Service):
    """Starts the output store and the HTTP endpoints with the worker, stops them with it."""

    def __init__(self, sink: CompletionSink) -> None:
        super().__init__()
        self._sink = sink

    async def on_start(self) -> None:
        await self._sink.start_clients()

    async def on_stop(self) -> None:
        await self._sink.stop_clients()


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
    sink = CompletionSink(settings, settings.kafka.bootstrap_servers)
    worker = faust.Worker(
        sink.app,
        loglevel=settings.log_level.lower(),
        override_logging=False,  # keep our JSON logs
        quiet=True,
        redirect_stdouts=False,
        stdout=sys.stderr,
    )
    worker.spinner = None  # it writes terminal control codes even into log files
    worker.execute_from_commandline()
