"""Owns every task of the pipeline's process and shuts them down in order.

Intake is bounded: at most ``max_in_flight`` records are being processed at once; when full, the
assigned partitions are paused but the consumer keeps polling (:mod:`service.kafka.consumer`),
so the group never evicts us however long the backend stalls. Offsets are committed per
partition up to the contiguous prefix whose outputs the broker acknowledged
(:mod:`service.kafka.offsets`).

Shutdown order: stop intake, drain in-flight work until the grace deadline
(:mod:`service.grace`), cancel the rest (uncommitted, so redelivered), commit, leave the group,
flush the producer, close the clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TypeVar

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from service.activation import ActivationConditions, parse_conditions
from service.backends.base import ModerationBackend
from service.backends.factory import build_backend
from service.capacity import ConcurrencyBudget, InFlightBytes
from service.dlq_guard import DeadLetterGuard, outcome_of
from service.errors import Reason
from service.fetch import FetchPolicy, ImageFetcher
from service.grace import GracePeriod
from service.http_server import Health, HttpServer
from service.kafka.admin import ensure_topics
from service.kafka.consumer import GroupConsumer, GroupWatch
from service.kafka.embedded import EmbeddedBroker
from service.kafka.offsets import OffsetTracker, Ticket
from service.kafka.poison import Polled, UndecodableRecord
from service.kafka.publisher import Publisher, producer_for
from service.kafka.transactions import (
    CURRENT,
    PROBE_TIMEOUT_S,
    BufferedSink,
    PendingOutputs,
    TransactionalCommitter,
)
from service.messages import Source
from service.metrics import PipelineMetrics
from service.objectstore import ObjectStore, S3Options
from service.pipeline import InputRecord, Pipeline
from service.policy import RoutingPolicy
from service.ratelimit import AdaptiveRateLimiter
from service.retry import CircuitBreaker
from service.review.records import review_record_limit
from service.settings import KafkaSettings, Settings

log = logging.getLogger(__name__)

COMMIT_INTERVAL_S = 1.0
REVOKE_DRAIN_S = 10.0  # at most; and at most half the rebalance (= session) timeout
COMMIT_TIMEOUT_S = 10.0  # a commit the coordinator does not answer is given up (redelivery)

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


def load_conditions(settings: Settings) -> ActivationConditions | None:
    """Parse the A2I activation conditions at start-up: invalid JSON stops the service."""
    review = settings.review
    if review.activation_conditions is None:
        return None
    conditions = parse_conditions(review.activation_conditions, source=review.activation_source)
    for warning in conditions.warnings:
        log.warning("%s: %s", review.activation_source, warning)
    return conditions


class Runner:
    def __init__(
        self,
        settings: Settings,
        policy: RoutingPolicy,
        *,
        backend: ModerationBackend | None = None,
        metrics: PipelineMetrics | None = None,
    ) -> None:
        self._settings = settings
        self._conditions = load_conditions(settings)
        self.metrics = metrics or PipelineMetrics()
        self.metrics.initialise(settings.backend.kind)
        self.health = Health()
        self.http_port: int | None = None
        self._policy = policy
        self._backend: ModerationBackend = backend or build_backend(settings)
        self._tracker = OffsetTracker()
        self._tasks: dict[asyncio.Task[None], TopicPartition] = {}
        self._task_bytes: dict[asyncio.Task[None], int] = {}
        self._task_started: dict[asyncio.Task[None], float] = {}
        self._guard = DeadLetterGuard(settings.safety)
        self._stuck: dict[TopicPartition, float] = {}
        self._in_flight_bytes = InFlightBytes(settings.backend.max_in_flight_bytes)
        self._budget: ConcurrencyBudget
        self._slot_freed = asyncio.Event()
        self._consumer: GroupConsumer | None = None
        # exactly_once: outputs held per record, committed with the offsets per partition.
        self._committer: TransactionalCommitter | None = None
        self._last_commit = 0.0
        self._grace = GracePeriod(settings.shutdown_grace_s)
        self._group = GroupWatch(settings.kafka, self.metrics)
        self.health.checks += [self._group.problem, self._guard_problem, self._stuck_problem]
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then return within the shutdown grace period whatever
        state the group or the broker is in: joining, rebalancing, or gone."""
        watch = asyncio.create_task(self._note_stop(stop))
        settle = asyncio.create_task(self._group.run())
        try:
            async with contextlib.AsyncExitStack() as stack:
                started = await _unless_stopped(self._open(stack), stop)
                if started is None:
                    log.info("stopped while starting")
                    return
                consumer, pipeline = started
                try:
                    await self._intake(consumer, pipeline, stop)
                finally:
                    await self._drain(self._grace.drain_budget())
                    await self._commit(force=True)
        finally:
            watch.cancel()
            settle.cancel()
            await asyncio.gather(watch, settle, return_exceptions=True)

    async def _note_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._grace.begin()

    def _closing(
        self, name: str, close: Callable[[], Awaitable[None]]
    ) -> Callable[[], Awaitable[None]]:
        """An exit-stack callback that closes one client within the time left, whatever it does."""

        async def bounded() -> None:
            budget = self._grace.remaining()
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
    ) -> tuple[GroupConsumer, Pipeline]:
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
        self._group.connect(bootstrap)

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
        objects = await self._open_image_store(stack)

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
            in_flight=self._in_flight_bytes,
            objects=objects,
        )
        # Closed after the consumer: the decode pool stops once in-flight work is done.
        stack.push_async_callback(self._closing("decode pool", pipeline.close))
        consumer = GroupConsumer(
            kafka,
            bootstrap,
            self,
            max_poll_records=settings.backend.max_in_flight,
            read_committed=self._committer is not None,
        )
        self._consumer = consumer
        if self._committer is not None:
            self._committer.bind(consumer.client)
        # Leaves the group (we commit ourselves); start() waits for the first join, which a
        # stop may cut short: the consumer is closed all the same.
        stack.push_async_callback(self._closing("consumer", consumer.stop))
        await consumer.start()
        stack.push_async_callback(self._closing("raw reader", consumer.close_reader))
        log.info("consuming %s as group %s from %s", kafka.input_topic, kafka.group_id, bootstrap)
        self.health.started = True
        self.ready.set()
        return consumer, pipeline

    async def _open_image_store(
        self, stack: contextlib.AsyncExitStack[bool | None]
    ) -> ObjectStore | None:
        """The S3 client images are read with: by a backend that reads S3 itself, to decide
        whether it can read an object as it is (else it is downloaded and converted); by one
        that cannot, only with MODERATION_LOCAL_READ_S3. Its endpoint: ours when set
        (MODERATION_LOCAL_S3_ENDPOINT_URL, then S3_ENDPOINT_URL), else the SDK's own variables
        (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL), else AWS."""
        settings = self._settings
        backend = settings.backend
        if self._backend.input.s3_max_bytes is None and not backend.local.read_s3:
            return None
        timeout = settings.fetch.timeout_s
        store = ObjectStore(
            S3Options(
                region=backend.region,
                endpoint_url=backend.local.s3_endpoint_url or settings.review.s3_endpoint_url,
                connect_timeout_s=min(10.0, timeout),
                read_timeout_s=timeout,
                max_attempts=1,  # the normalize stage retries, within its own bounds
            )
        )
        await store.start()
        stack.push_async_callback(self._closing("image store", store.close))
        return store

    async def _open_sink(
        self, stack: contextlib.AsyncExitStack[bool | None], kafka: KafkaSettings, bootstrap: str
    ) -> Publisher | BufferedSink:
        """at_least_once: one producer, every output acknowledged before its offset commits.
        exactly_once: outputs held per record, a transactional producer per input partition."""
        max_request_size = review_record_limit(kafka.max_input_bytes)
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
        producer = producer_for(kafka, bootstrap, max_request_size=max_request_size)
        # Flushes what is still buffered; pushed first, so a start cut short is closed too.
        stack.push_async_callback(self._closing("producer", producer.stop))
        await producer.start()
        return Publisher(producer, self.metrics)

    async def _close_transactions(self) -> None:
        if self._committer is not None:
            await self._committer.close(self._grace.remaining())

    async def _intake(
        self, consumer: GroupConsumer, pipeline: Pipeline, stop: asyncio.Event
    ) -> None:
        max_bytes = self._settings.backend.max_in_flight_bytes
        while not stop.is_set():
            self.health.polled()
            capacity = self._budget.limit - len(self._tasks)
            held = self._committer.held_bytes() if self._committer is not None else 0
            if self._in_flight_bytes.total + held >= max_bytes or not self._guard_admits():
                capacity = 0
            self.metrics.intake_paused.set(1 if capacity <= 0 else 0)
            if capacity <= 0:
                # Full: stop fetching but keep polling so the group does not evict us.
                consumer.hold()
                self._slot_freed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slot_freed.wait(), timeout=0.2)
                if await _unless_stopped(consumer.keep_polling(), stop) is None:
                    break
            else:
                # exactly_once: a partition fenced, or without a producer yet, stays paused.
                blocked = self._committer.blocked() if self._committer is not None else set()
                consumer.resume(blocked=blocked)
                # A poll waits for the group to settle; a rebalance that never ends must not
                # keep a stop waiting.
                fetched = await _unless_stopped(consumer.fetch(capacity), stop)
                if fetched is None:
                    break
                batches, recoveries = fetched
                self.metrics.undecodable_recoveries.inc(recoveries)
                for tp, records in batches.items():
                    for record in records:
                        self._start(pipeline, tp, record)
            self._update_lag(consumer)
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

    def _observe_oldest(self, consumer: GroupConsumer) -> None:
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

    def _update_lag(self, consumer: GroupConsumer) -> None:
        for tp, lag in consumer.lag().items():
            self.metrics.consumer_lag.labels(partition=str(tp.partition)).set(lag)

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """exactly_once: open the partitions' producers (fencing old owners) before fetching."""
        if self._committer is not None:
            await self._committer.assign(assigned, self._grace.remaining(PROBE_TIMEOUT_S))
            consumer = self._consumer
            blocked = self._committer.blocked() & assigned
            if consumer is not None and blocked:
                consumer.pause(blocked)
        self.assigned(assigned)

    def assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("assigned %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
        self._group.settled()
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
        self._in_flight_bytes.add(size)
        task.add_done_callback(self._forget)
        self.metrics.consumed.inc()
        self.metrics.in_flight.set(len(self._tasks))

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self._task_started.pop(task, None)
        self._in_flight_bytes.remove(self._task_bytes.pop(task, 0))
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
        self._group.unsettled()
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
            await self._committer.revoke(revoked, self._grace.remaining(REVOKE_DRAIN_S))
        self._tracker.revoke(revoked)
        if self._consumer is not None:
            self._consumer.forget(revoked)
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
            result = await self._committer.commit(points, self._grace.remaining(COMMIT_TIMEOUT_S))
            self._tracker.mark_committed(result.committed)
            if result.fenced:
                self._fenced(result.fenced)
            return
        if not points:
            return
        try:
            await asyncio.wait_for(
                self._consumer.client.commit(points), self._grace.remaining(COMMIT_TIMEOUT_S)
            )
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
        consumer = self._consumer
        if consumer is not None:
            consumer.forget(tps)
            consumer.pause(tps & consumer.assignment())
