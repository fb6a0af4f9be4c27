"""Owns the consumer, the producer, the clients and every per-message task, and shuts them down
in order.

Intake is bounded: at most ``max_in_flight`` records are being processed at once; when full, the
assigned partitions are paused but the consumer keeps polling, so heartbeats and the poll interval
never lapse however long the backend stalls. Offsets are committed per partition up to the
contiguous prefix whose outputs the broker acknowledged.

Shutdown order: stop intake, drain in-flight work until the grace deadline, cancel the rest
(uncommitted, so redelivered), commit, leave the group, flush the producer, close the clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from service.activation import ActivationConditions, parse_conditions
from service.backends.base import ModerationBackend
from service.backends.rekognition import RekognitionBackend
from service.capacity import ConcurrencyBudget
from service.dlq_guard import DeadLetterGuard, outcome_of
from service.errors import ConfigError, Reason
from service.fetch import FetchPolicy, ImageFetcher
from service.http_server import Health, HttpServer
from service.kafka.admin import ensure_topics
from service.kafka.client import kafka_client_options
from service.kafka.embedded import EmbeddedBroker
from service.kafka.group_recovery import release_departed_leader
from service.kafka.offsets import OffsetTracker, Ticket
from service.kafka.poison import PoisonSafeConsumer, Polled, UndecodableRecord
from service.kafka.publisher import Publisher
from service.kafka.transactions import (
    CURRENT,
    PROBE_TIMEOUT_S,
    BufferedSink,
    PendingOutputs,
    TransactionalCommitter,
)
from service.messages import Source
from service.metrics import Metrics
from service.pipeline import InputRecord, Pipeline
from service.policy import RoutingPolicy
from service.ratelimit import AdaptiveRateLimiter
from service.retry import CircuitBreaker
from service.settings import KafkaSettings, Settings

log = logging.getLogger(__name__)

COMMIT_INTERVAL_S = 1.0
POLL_TIMEOUT_MS = 100
REVOKE_DRAIN_S = 10.0  # at most; and at most half the rebalance (= session) timeout
CLOSE_TIMEOUT_S = 10.0  # one client's close, when no stop deadline is set (start-up failures)
CLOSE_RESERVE_S = 3.0  # of the grace period, kept for the final commit and the closes
COMMIT_TIMEOUT_S = 10.0  # a commit the coordinator does not answer is given up (redelivery)
MIN_CLOSE_S = 0.1
GROUP_WATCH_S = 1.0
RECOVERY_JITTER_S = 5.0  # spread of replicas' recovery attempts
RECOVERY_TIMEOUT_S = 10.0  # one recovery attempt, at least

T = TypeVar("T")


async def _unless_stopped(work: Awaitable[T], stop: asyncio.Event) -> T | None:
    """``work``'s result, or None when ``stop`` is set first (``work`` is then cancelled)."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task in done:
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return None


def make_backend(settings: Settings) -> ModerationBackend:
    backend = settings.backend
    if backend.kind == "rekognition":
        return RekognitionBackend(backend)
    try:
        from service.backends.local import LocalModelBackend  # noqa: PLC0415  (optional extra)
    except ImportError as exc:
        raise ConfigError(
            "MODERATION_BACKEND", f"'local' needs the local extra: pip install '.[local]' ({exc})"
        ) from exc
    local = backend.local
    return LocalModelBackend(
        workers=local.workers,
        max_queue=local.max_queue,
        models=local.models,
        threads_per_worker=local.threads_per_worker,
        model_paths=dict(local.model_paths) or None,
        read_s3=local.read_s3,
        s3_region=backend.region,
        s3_endpoint_url=local.s3_endpoint_url,
        s3_timeout_s=backend.call_timeout_s,
        max_image_pixels=local.max_image_pixels,
    )


def load_conditions(settings: Settings) -> ActivationConditions | None:
    """Parse the A2I activation conditions at start-up: invalid JSON stops the service."""
    review = settings.review
    if review.activation_conditions is None:
        return None
    conditions = parse_conditions(review.activation_conditions, source=review.activation_source)
    for warning in conditions.warnings:
        log.warning("%s: %s", review.activation_source, warning)
    return conditions


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._runner.release(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._runner.on_assigned(set(assigned))


class Runner:
    def __init__(
        self,
        settings: Settings,
        policy: RoutingPolicy,
        *,
        backend: ModerationBackend | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._conditions = load_conditions(settings)
        self.metrics = metrics or Metrics()
        self.metrics.initialise(settings.backend.kind)
        self.health = Health()
        self.http_port: int | None = None
        self._policy = policy
        self._backend: ModerationBackend = backend or make_backend(settings)
        self._tracker = OffsetTracker()
        self._tasks: dict[asyncio.Task[None], TopicPartition] = {}
        self._task_bytes: dict[asyncio.Task[None], int] = {}
        self._task_started: dict[asyncio.Task[None], float] = {}
        self._guard = DeadLetterGuard(settings.safety)
        self._stuck: dict[TopicPartition, float] = {}
        self._safe: PoisonSafeConsumer | None = None
        self._in_flight_bytes = 0
        self._budget: ConcurrencyBudget
        self._slot_freed = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._bootstrap: str | None = None  # known once the clients are being opened
        # exactly_once: outputs held per record, committed with the offsets per partition.
        self._committer: TransactionalCommitter | None = None
        self._last_commit = 0.0
        self._deadline: float | None = None  # set when a stop is asked: monotonic time
        # Since when the group has had no settled assignment (None: it has one); from start-up.
        self._unsettled_since: float | None = time.monotonic()
        self.metrics.group_unsettled.set_function(self._unsettled_s)
        self.metrics.group_stalled.set_function(lambda: float(self._group_problem() is not None))
        self.health.checks += [self._group_problem, self._guard_problem, self._stuck_problem]
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then return within the shutdown grace period whatever
        state the group or the broker is in: joining, rebalancing, or gone."""
        watch = asyncio.create_task(self._note_stop(stop))
        settle = asyncio.create_task(self._watch_group())
        try:
            async with contextlib.AsyncExitStack() as stack:
                started = await _unless_stopped(self._open(stack), stop)
                if started is None:
                    log.info("stopped while starting")
                    return
                consumer, safe, pipeline = started
                try:
                    await self._intake(consumer, safe, pipeline, stop)
                finally:
                    await self._drain(self._drain_budget())
                    await self._commit(force=True)
        finally:
            watch.cancel()
            settle.cancel()
            await asyncio.gather(watch, settle, return_exceptions=True)

    def _unsettled_s(self) -> float:
        """How long the group has been without a settled assignment (0 when it has one)."""
        since = self._unsettled_since
        return 0.0 if since is None else time.monotonic() - since

    def _group_problem(self) -> str | None:
        unsettled = self._unsettled_s()
        if unsettled <= self._settings.kafka.rebalance_stall_s:
            return None
        return f"consumer group not settled for {unsettled:.0f}s (a rebalance that does not end)"

    async def _watch_group(self) -> None:
        """Says once per episode, in the log, that the group has not settled in time, and
        tries to free it from a departed leader at most once per stall period."""
        reported = False
        last_attempt = -math.inf
        stall_s = self._settings.kafka.rebalance_stall_s
        while True:
            await asyncio.sleep(GROUP_WATCH_S)
            problem = self._group_problem()
            if problem is not None and not reported:
                log.warning("%s; see docs/operations.md, ModerationGroupUnsettled", problem)
            reported = problem is not None
            now = time.monotonic()
            if problem is not None and now - last_attempt >= stall_s and self._can_recover():
                last_attempt = now
                # Replicas stuck together should not all act at the same instant.
                await asyncio.sleep(random.uniform(0, min(RECOVERY_JITTER_S, stall_s / 4)))  # noqa: S311
                if self._group_problem() is not None:
                    await self._recover_group()

    def _can_recover(self) -> bool:
        return self._settings.kafka.rebalance_recovery and self._bootstrap is not None

    async def _recover_group(self) -> None:
        kafka = self._settings.kafka
        assert self._bootstrap is not None
        outcome = await release_departed_leader(
            kafka_client_options(kafka, self._bootstrap),
            kafka.group_id,
            [kafka.input_topic],
            timeout_s=max(RECOVERY_TIMEOUT_S, kafka.session_timeout_ms / 1000),
            session_timeout_ms=kafka.session_timeout_ms,
        )
        self.metrics.group_recoveries.labels(outcome=outcome.value).inc()

    async def _note_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._deadline = time.monotonic() + self._settings.shutdown_grace_s

    def _remaining(self, default: float = CLOSE_TIMEOUT_S) -> float:
        """Time left before the shutdown deadline (a fixed bound before any stop)."""
        if self._deadline is None:
            return default
        return max(MIN_CLOSE_S, self._deadline - time.monotonic())

    def _drain_budget(self) -> float:
        """In-flight work gets the grace period less a reserve to commit and close in."""
        grace = self._settings.shutdown_grace_s
        return max(0.0, self._remaining(grace) - min(CLOSE_RESERVE_S, grace * 0.3))

    def _closing(
        self, name: str, close: Callable[[], Awaitable[None]]
    ) -> Callable[[], Awaitable[None]]:
        """An exit-stack callback that closes one client within the time left, whatever it does."""

        async def bounded() -> None:
            budget = self._remaining()
            try:
                await asyncio.wait_for(close(), budget)
            except TimeoutError:
                log.warning("%s did not close within %.1fs; left behind", name, budget)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                log.warning("%s was cancelled inside its own close", name)  # aiokafka's fetcher
            except Exception:  # one client's failure must not keep the others open
                log.exception("%s failed to close", name)

        return bounded

    async def _open(
        self, stack: contextlib.AsyncExitStack[bool | None]
    ) -> tuple[AIOKafkaConsumer, PoisonSafeConsumer, Pipeline]:
        """Start every client, each closed by ``stack`` in reverse order, and the pipeline."""
        settings = self._settings
        kafka = settings.kafka
        bootstrap = kafka.bootstrap_servers
        if bootstrap is None:  # local runs: our own broker, so our own topics too
            broker = EmbeddedBroker()
            await broker.start()
            stack.push_async_callback(self._closing("embedded broker", broker.stop))
            bootstrap = broker.bootstrap_servers
            await ensure_topics(kafka, bootstrap, 4, (settings.review.completions_topic,))
        self._bootstrap = bootstrap

        http = HttpServer(self.metrics, self.health, settings.http_host, settings.http_port)
        await http.start()
        # Closed last: probes answer while draining.
        stack.push_async_callback(self._closing("http server", http.close))
        self.http_port = http.port

        # Closed after the consumer and producer: draining tasks still use them.
        await self._backend.start()
        stack.push_async_callback(self._closing("backend", self._backend.close))
        fetcher = ImageFetcher(
            FetchPolicy(
                max_bytes=settings.fetch.max_bytes,
                timeout_s=settings.fetch.timeout_s,
                allowed_networks=settings.fetch.allowed_networks,
            )
        )
        await fetcher.start()
        stack.push_async_callback(self._closing("image fetcher", fetcher.close))

        sink = await self._open_sink(stack, kafka, bootstrap)

        limiter = AdaptiveRateLimiter(settings.backend.tps, settings.backend.tps_burst)
        breaker = CircuitBreaker()
        self.metrics.limiter_rate.set_function(lambda: limiter.rate)
        self.metrics.limiter_max_rate.set(limiter.max_rate)
        self.metrics.circuit_open.set_function(lambda: float(breaker.is_open))
        budget = ConcurrencyBudget(limiter, ceiling=settings.backend.max_in_flight)
        self._budget = budget
        self.metrics.max_in_flight.set_function(lambda: budget.limit)
        self.health.backend_ok = lambda: not breaker.is_open
        pipeline = Pipeline(
            settings,
            backend=self._backend,
            fetcher=fetcher,
            limiter=limiter,
            breaker=breaker,
            policy=self._policy,
            sink=sink,
            metrics=self.metrics,
            budget=budget,
            conditions=self._conditions,
            backend_name=settings.backend.kind,
        )
        consumer = AIOKafkaConsumer(
            **kafka_client_options(kafka, bootstrap),
            group_id=kafka.group_id,
            # Static membership: a restart within the session timeout takes its partitions back
            # without a rebalance, and a static member does not leave the group on stop.
            group_instance_id=kafka.group_instance_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=kafka.session_timeout_ms,
            heartbeat_interval_ms=max(1000, kafka.session_timeout_ms // 3),
            max_poll_records=settings.backend.max_in_flight,
            fetch_max_wait_ms=kafka.fetch_max_wait_ms,
            # exactly_once reads no aborted input either (transactional upstream producers).
            isolation_level="read_committed" if self._committer else "read_uncommitted",
        )
        self._consumer = consumer
        if self._committer is not None:
            self._committer.bind(consumer)
        consumer.subscribe([kafka.input_topic], listener=_Rebalance(self))
        # Leaves the group (we commit ourselves); start() waits for the first join, which a
        # stop may cut short: the consumer is closed all the same.
        stack.push_async_callback(self._closing("consumer", consumer.stop))
        await consumer.start()
        safe = PoisonSafeConsumer(consumer, kafka_client_options(kafka, bootstrap))
        self._safe = safe
        stack.push_async_callback(self._closing("raw reader", safe.close))
        log.info("consuming %s as group %s from %s", kafka.input_topic, kafka.group_id, bootstrap)
        self.health.started = True
        self.ready.set()
        return consumer, safe, pipeline

    async def _open_sink(
        self, stack: contextlib.AsyncExitStack[bool | None], kafka: KafkaSettings, bootstrap: str
    ) -> Publisher | BufferedSink:
        """at_least_once: one producer, every output acknowledged before its offset commits.
        exactly_once: outputs held per record, a transactional producer per input partition."""
        max_request_size = 2 * kafka.max_input_bytes + 64 * 1024
        if kafka.processing_guarantee == "exactly_once":
            committer = TransactionalCommitter(
                kafka,
                bootstrap,
                self.metrics,
                max_request_size=max_request_size,
                dlq_max_record_bytes=self._settings.safety.dlq_max_record_bytes,
            )
            await committer.probe(PROBE_TIMEOUT_S)  # a ConfigError on a broker without them
            self._committer = committer
            stack.push_async_callback(self._closing("transactions", self._close_transactions))
            return BufferedSink()
        producer = AIOKafkaProducer(
            **kafka_client_options(kafka, bootstrap),
            acks="all",
            enable_idempotence=kafka.enable_idempotence,
            linger_ms=5,
            max_request_size=max_request_size,
        )
        # Flushes what is still buffered; pushed first, so a start cut short is closed too.
        stack.push_async_callback(self._closing("producer", producer.stop))
        await producer.start()
        return Publisher(producer, self.metrics)

    async def _close_transactions(self) -> None:
        if self._committer is not None:
            await self._committer.close(self._remaining())

    async def _intake(
        self,
        consumer: AIOKafkaConsumer,
        safe: PoisonSafeConsumer,
        pipeline: Pipeline,
        stop: asyncio.Event,
    ) -> None:
        max_bytes = self._settings.backend.max_in_flight_bytes
        while not stop.is_set():
            self.health.polled()
            capacity = self._budget.limit - len(self._tasks)
            held = self._committer.held_bytes() if self._committer is not None else 0
            if self._in_flight_bytes + held >= max_bytes or not self._guard_admits():
                capacity = 0
            self.metrics.intake_paused.set(1 if capacity <= 0 else 0)
            if capacity <= 0:
                # Full: stop fetching but keep polling so the group does not evict us.
                consumer.pause(*consumer.assignment())
                self._slot_freed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slot_freed.wait(), timeout=0.2)
                if await _unless_stopped(consumer.getmany(timeout_ms=0), stop) is None:
                    break
            else:
                paused = consumer.paused()
                if self._committer is not None:  # fenced, or no producer yet: stays paused
                    paused -= self._committer.blocked()
                if paused:
                    consumer.resume(*paused)
                recoveries = safe.recoveries
                # A poll waits for the group to settle; a rebalance that never ends must not
                # keep a stop waiting.
                batches = await _unless_stopped(
                    safe.getmany(timeout_ms=POLL_TIMEOUT_MS, max_records=capacity), stop
                )
                if batches is None:
                    break
                self.metrics.undecodable_recoveries.inc(safe.recoveries - recoveries)
                for tp, records in batches.items():
                    for record in records:
                        self._start(pipeline, tp, record)
            self._update_lag(consumer, safe)
            self._observe_oldest(consumer)
            await self._commit()

    def _guard_admits(self) -> bool:
        admits = self._guard.admits()
        for kind in ("input", "internal"):
            tripped = 1 if self._guard.tripped == kind else 0
            self.metrics.dlq_guard_tripped.labels(kind=kind).set(tripped)
        return admits

    def _guard_problem(self) -> str | None:
        return f"dead-letter limit: {self._guard.detail}" if self._guard.tripped else None

    def _observe_oldest(self, consumer: AIOKafkaConsumer) -> None:
        """The stuck-work detector: the age of each partition's oldest in-flight message."""
        now = time.monotonic()
        oldest: dict[TopicPartition, float] = {}
        for task, started in self._task_started.items():
            tp = self._tasks.get(task)
            if tp is not None:
                oldest[tp] = max(oldest.get(tp, 0.0), now - started)
        limit = self._settings.safety.stuck_after_s
        stuck: dict[TopicPartition, float] = {}
        for tp in consumer.assignment() | set(oldest):
            age = oldest.get(tp, 0.0)
            self.metrics.oldest_in_flight.labels(partition=str(tp.partition)).set(age)
            if age > limit:
                stuck[tp] = age
                if tp not in self._stuck:
                    log.warning(
                        "work on %s[%d] stuck for %.0fs (limit %.0fs)",
                        tp.topic, tp.partition, age, limit,
                    )  # fmt: skip
        self._stuck = stuck
        self.metrics.stuck.set(len(stuck))

    def _stuck_problem(self) -> str | None:
        if not self._stuck:
            return None
        tp, age = max(self._stuck.items(), key=lambda item: item[1])
        return f"work stuck on partition {tp.partition} for {age:.0f}s ({len(self._stuck)} stuck)"

    def _update_lag(self, consumer: AIOKafkaConsumer, safe: PoisonSafeConsumer) -> None:
        # The high watermark from fetch responses (Tansu's end_offsets() is unreliable).
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            position = safe.next_offset(tp)
            if highwater is not None and position is not None:
                self.metrics.consumer_lag.labels(partition=str(tp.partition)).set(
                    max(0, highwater - position)
                )

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """exactly_once: open the partitions' producers (fencing old owners) before fetching."""
        if self._committer is not None:
            await self._committer.assign(assigned, self._remaining(PROBE_TIMEOUT_S))
            consumer = self._consumer
            blocked = self._committer.blocked() & assigned
            if consumer is not None and blocked:
                consumer.pause(*blocked)
        self.assigned(assigned)

    def assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("assigned %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
        self._unsettled_since = None
        self.health.partitions = len(assigned)
        self.metrics.partitions_assigned.set(len(assigned))

    def _start(self, pipeline: Pipeline, tp: TopicPartition, record: Polled) -> None:
        ticket = self._tracker.track(tp, record.offset)
        item = InputRecord(
            source=Source(record.topic, record.partition, record.offset, record.timestamp),
            key=record.key,
            value=record.value,
            headers=list(record.headers or ()),
        )
        held = None
        if self._committer is not None:
            held = self._committer.hold(tp, record.offset, item)
        if isinstance(record, UndecodableRecord):
            work = self._dead_letter_undecodable(pipeline, item, record.error)
        else:
            work = pipeline.handle(item)
        task = asyncio.create_task(self._process(pipeline, item, ticket, work, held))
        self._tasks[task] = tp
        self._task_started[task] = time.monotonic()
        size = len(record.value or b"") + len(record.key or b"")
        self._task_bytes[task] = size
        self._in_flight_bytes += size
        task.add_done_callback(self._forget)
        self.metrics.consumed.inc()
        self.metrics.in_flight.set(len(self._tasks))

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self._task_started.pop(task, None)
        self._in_flight_bytes -= self._task_bytes.pop(task, 0)
        self.metrics.in_flight.set(len(self._tasks))
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("message task failed", exc_info=task.exception())

    async def _process(
        self,
        pipeline: Pipeline,
        item: InputRecord,
        ticket: Ticket,
        work: Coroutine[object, object, str],
        held: PendingOutputs | None = None,
    ) -> None:
        CURRENT.set(held)  # this task's context only: where exactly_once holds its outputs
        try:
            result = await work
        except Exception as exc:  # a bug must not stall the partition: dead-letter the message
            log.exception("unexpected error on offset %d", item.source.offset)
            await pipeline.dead_letter(item, None, Reason.INTERNAL_ERROR, repr(exc), 1)
            result = Reason.INTERNAL_ERROR.value
        self._guard.record(outcome_of(result))
        self._tracker.finish(ticket)

    @staticmethod
    async def _dead_letter_undecodable(pipeline: Pipeline, item: InputRecord, error: str) -> str:
        await pipeline.dead_letter(item, None, Reason.UNDECODABLE_RECORD, error, 1)
        return Reason.UNDECODABLE_RECORD.value

    async def release(self, revoked: set[TopicPartition]) -> None:
        """Called on rebalance: finish what we can, commit it, and give the rest up uncommitted."""
        if self._unsettled_since is None:  # a rebalance begins: it should end soon
            self._unsettled_since = time.monotonic()
        tasks = [task for task, tp in self._tasks.items() if tp in revoked]
        if tasks:
            # The group waits for this member to rejoin only so long (aiokafka's rebalance
            # timeout is the session timeout): past it, the member is dropped and the group
            # rebalances again. Unfinished work is redelivered to the next owner.
            drain_s = min(REVOKE_DRAIN_S, self._settings.kafka.session_timeout_ms / 2000)
            _, pending = await asyncio.wait(tasks, timeout=drain_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._commit(force=True)
        if self._committer is not None:
            await self._committer.revoke(revoked, self._remaining(REVOKE_DRAIN_S))
        self._tracker.revoke(revoked)
        if self._safe is not None:
            self._safe.forget(revoked)
        for tp in revoked:
            with contextlib.suppress(KeyError):  # no sample yet for that partition
                self.metrics.consumer_lag.remove(str(tp.partition))
            with contextlib.suppress(KeyError):
                self.metrics.oldest_in_flight.remove(str(tp.partition))
            self._stuck.pop(tp, None)
        self.health.partitions = 0
        self.metrics.partitions_assigned.set(0)

    async def _drain(self, grace_s: float) -> None:
        tasks = list(self._tasks)
        if not tasks:
            return
        log.info("draining %d in-flight messages (grace %.1fs)", len(tasks), grace_s)
        _, pending = await asyncio.wait(tasks, timeout=grace_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending:
            log.warning(
                "%d messages unfinished at the deadline; they will be redelivered", len(pending)
            )

    async def _commit(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if self._consumer is None or (not force and now - self._last_commit < COMMIT_INTERVAL_S):
            return
        self._last_commit = now
        points = self._tracker.commit_points()
        if self._committer is not None:
            # Even with nothing to commit: a partition fenced while the group kept it here has
            # no work to commit, and is reclaimed (or its producer reopened) only on this call.
            result = await self._committer.commit(points, self._remaining(COMMIT_TIMEOUT_S))
            self._tracker.mark_committed(result.committed)
            if result.fenced:
                self._fenced(result.fenced)
            return
        if not points:
            return
        try:
            await asyncio.wait_for(self._consumer.commit(points), self._remaining(COMMIT_TIMEOUT_S))
        except (CommitFailedError, KafkaError, TimeoutError) as exc:
            log.warning("commit failed (%r); those records will be redelivered", exc)
            self.metrics.commit_failures.inc()
            return
        self._tracker.mark_committed(points)

    def _fenced(self, tps: set[TopicPartition]) -> None:
        """exactly_once: another producer owns these partitions now; stop working on them (the
        new owner redoes what was not committed) until the group hands them back."""
        for task, tp in list(self._tasks.items()):
            if tp in tps:
                task.cancel()
        self._tracker.revoke(tps)
        if self._safe is not None:
            self._safe.forget(tps)
        consumer = self._consumer
        if consumer is not None:
            ours = tps & consumer.assignment()
            if ours:
                consumer.pause(*ours)
