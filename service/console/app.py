"""The console process: ``python -m service console`` (entry :func:`run_console`).

:class:`Console` owns every client and task. Start order: store (schema), output writer, image
source, completion-event producer, HTTP, then the background tasks (review-topic intake, outbox,
gauges). Stop order is the reverse: stop taking requests (in-flight ones finish), stop the tasks
(intake commits only what it stored or dead-lettered), close the producer (flushes), then the
clients and the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from service.console.a2i import OutputWriter
from service.console.api import Api
from service.console.auth import Auth
from service.console.delivery import Delivery, EventPublisher, KafkaEventPublisher
from service.console.image_source import ImageSource
from service.console.intake import Intake
from service.console.metrics import ConsoleMetrics
from service.console.pages import Pages
from service.console.probes import Probes, Readiness
from service.console.review_tasks import ReviewTasks
from service.console.routes import application
from service.console.settings import ConsoleSettings
from service.console.storage import ConsoleStore, StoreError, open_store
from service.errors import ConfigError
from service.fetch import FetchPolicy
from service.retry import full_jitter
from service.settings import Settings

log = logging.getLogger(__name__)

GAUGE_INTERVAL_S = 5.0
TASK_STOP_S = 10.0


class Console:
    def __init__(
        self,
        settings: Settings,
        console: ConsoleSettings,
        *,
        clock: Callable[[], float] = time.time,
        publisher: EventPublisher | None = None,
        intake: bool = True,
        registry: CollectorRegistry | None = None,
        store: ConsoleStore | None = None,
    ) -> None:
        self.settings = settings
        self.console = console
        self.clock = clock
        self.metrics = ConsoleMetrics(registry)
        self.metrics.initialise()
        database = console.database
        dsn = database.dsn.get_secret_value() if database.dsn else None
        self.store = store or open_store(database.kind, path=database.path, dsn=dsn)
        review = settings.review
        self.writer = OutputWriter(
            console.output, region=settings.backend.region, s3_endpoint_url=review.s3_endpoint_url
        )
        fetch = settings.fetch
        self.images = ImageSource(
            FetchPolicy(
                max_bytes=fetch.max_bytes,
                timeout_s=fetch.timeout_s,
                allowed_networks=fetch.allowed_networks,
            ),
            region=settings.backend.region,
            s3_endpoint_url=review.s3_endpoint_url,
        )
        bootstrap = settings.kafka.bootstrap_servers
        if (publisher is None or intake) and bootstrap is None:
            raise ConfigError(
                "KAFKA_BOOTSTRAP_SERVERS",
                "required for the console (it joins the broker the pipeline and sink use)",
            )
        if publisher is None:
            assert bootstrap is not None
            publisher = KafkaEventPublisher(settings.kafka, bootstrap, review.completions_topic)
        self.publisher = publisher
        self.intake: Intake | None = None
        if intake:
            assert bootstrap is not None
            self.intake = Intake(
                kafka=settings.kafka,
                bootstrap=bootstrap,
                topic=settings.kafka.review_topic,
                group_id=console.group_id,
                store=self.store,
                metrics=self.metrics,
                clock=clock,
                include_managed=console.include_managed,
                dlq_max_record_bytes=settings.safety.dlq_max_record_bytes,
            )
        self.auth = Auth(console, self.store, self.metrics, clock)
        self.delivery = Delivery(self.store, self.writer, publisher, self.metrics, clock)
        intake_ref = self.intake
        self.readiness = Readiness(
            intake_required=intake_ref is not None,
            intake_started=lambda: intake_ref is not None and intake_ref.started,
        )
        self.review_tasks = ReviewTasks(
            settings=console,
            store=self.store,
            delivery=self.delivery,
            output_uri=self.writer.uri_for,
            images=self.images,
            metrics=self.metrics,
            clock=clock,
            is_lead=self.auth.is_lead,
        )
        self.probes = Probes(
            readiness=self.readiness, store=self.store, registry=self.metrics.registry
        )
        self.pages = Pages(
            settings=console,
            auth=self.auth,
            tasks=self.review_tasks,
            metrics=self.metrics,
            clock=clock,
        )
        self.api = Api(auth=self.auth, tasks=self.review_tasks)
        self._stop = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self._closers: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self.port: int | None = None

    async def start(self) -> None:
        try:
            await self.store.open()
            self._closers.append(self.store.close)
            await self.writer.start()
            self._closers.append(self.writer.close)
            await self.images.start()
            self._closers.append(self.images.close)
            await self.publisher.start()
            self._closers.append(self.publisher.close)
            app = application(
                probes=self.probes,
                pages=self.pages,
                api=self.api,
                auth=self.auth,
                metrics=self.metrics,
                secure_cookies=self.console.secure_cookies,
            )
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.console.host, self.console.port)
            await site.start()
        except BaseException:
            await self.stop()
            raise
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.console.port
        if self.intake is not None:
            self._spawn(self._supervise_intake(self.intake), "console-intake")
        self._spawn(self.delivery.run_outbox(self._stop), "console-outbox")
        self._spawn(self._gauges(), "console-gauges")
        self.readiness.started = True
        log.info(
            "review console on %s:%s (public %s, store %s, outputs %s)",
            self.console.host,
            self.port,
            self.console.public_url,
            self.console.database.shown,
            self.console.output.kind,
        )

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._background.append(asyncio.create_task(coro, name=name))

    async def stop(self) -> None:
        """Idempotent: stop HTTP, then the tasks, then the clients in reverse order."""
        self.readiness.started = False
        self._stop.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        tasks, self._background = self._background, []
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=TASK_STOP_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        closers, self._closers = self._closers, []
        for close in reversed(closers):
            try:
                await close()
            except Exception:  # closing the rest matters more than one failure
                log.exception("closing %s failed", close)

    async def _supervise_intake(self, intake: Intake) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                await intake.run(self._stop)
            except Exception:  # a broker outage must not end the console: restart the intake
                attempt += 1
                delay = full_jitter(attempt, base=1.0, cap=30.0)
                log.exception("review-topic intake failed; restarting in %.1fs", delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
            else:
                return

    async def update_gauges(self) -> None:
        """Read the shared store's counts into the gauges (every replica reports the same)."""
        try:
            counts = await self.store.counts(self.clock())
        except StoreError as exc:
            log.warning("console gauges: %s", exc)
            return
        self.metrics.console_pending.set(counts.pending)
        self.metrics.console_overdue.set(counts.overdue)
        self.metrics.console_claimed.set(counts.claimed)
        self.metrics.console_unpublished.set(counts.unpublished)

    async def _gauges(self) -> None:
        while not self._stop.is_set():
            await self.update_gauges()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), GAUGE_INTERVAL_S)


async def serve(settings: Settings, console_settings: ConsoleSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    console = Console(settings, console_settings)
    await console.start()
    try:
        await stop.wait()
        log.info("review console stopping")
    finally:
        await console.stop()


def run_console(settings: Settings) -> None:
    """Validate the console's settings, then serve until SIGTERM/SIGINT."""
    console_settings = ConsoleSettings.from_env(os.environ, settings)
    asyncio.run(serve(settings, console_settings))
