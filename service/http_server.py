"""The operator's HTTP endpoints: ``/metrics``, ``/healthz`` (alive) and ``/readyz`` (useful).

Liveness fails when the intake loop has not turned for ``stall_after_s``: a wedged event loop or
a stuck consumer is exactly what a restart fixes. Readiness needs assigned partitions and a
closed circuit breaker (backend reachable).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.metrics import PublishMetrics


@dataclass
class Health:
    """Updated by the runner; read by the probes."""

    stall_after_s: float = 60.0
    last_poll: float = field(default_factory=time.monotonic)
    partitions: int = 0
    backend_ok: Callable[[], bool] = lambda: True
    started: bool = False
    #: Further readiness checks: each returns why the service is not ready, or None.
    checks: list[Callable[[], str | None]] = field(default_factory=list)

    def polled(self) -> None:
        self.last_poll = time.monotonic()

    def alive(self) -> tuple[bool, str]:
        idle = time.monotonic() - self.last_poll
        if self.started and idle > self.stall_after_s:
            return False, f"intake loop stalled for {idle:.0f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        for check in self.checks:  # first: a group that never settles also keeps us "starting"
            problem = check()
            if problem is not None:
                return False, problem
        if not self.started:
            return False, "starting"
        if self.partitions == 0:
            return False, "no partitions assigned"
        if not self.backend_ok():
            return False, "backend unreachable (circuit open)"
        return True, "ok"


class HttpServer:
    def __init__(self, metrics: PublishMetrics, health: Health, host: str, port: int) -> None:
        self._metrics = metrics
        self._health = health
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics_page)
        app.router.add_get("/healthz", self._probe(self._health.alive))
        app.router.add_get("/readyz", self._probe(self._health.ready))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _metrics_page(self, _: web.Request) -> web.Response:
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    @staticmethod
    def _probe(
        check: Callable[[], tuple[bool, str]],
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(_: web.Request) -> web.StreamResponse:
            ok, detail = check()
            return web.Response(status=200 if ok else 503, text=detail + "\n")

        return handler
