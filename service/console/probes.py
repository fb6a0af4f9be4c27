"""The console's probes and metrics: ``/healthz`` (alive), ``/readyz`` (serving, the review-topic
consumer running, the store reachable) and ``/metrics``. All public: no session needed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from service.console.storage import ConsoleStore, StoreError


@dataclass
class Readiness:
    started: bool = False
    intake_required: bool = False
    intake_started: Callable[[], bool] = lambda: True


class Probes:
    def __init__(
        self, *, readiness: Readiness, store: ConsoleStore, registry: CollectorRegistry
    ) -> None:
        self._readiness = readiness
        self._store = store
        self._registry = registry

    async def healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, _: web.Request) -> web.Response:
        readiness = self._readiness
        if not readiness.started:
            return web.Response(status=503, text="starting\n")
        if readiness.intake_required and not readiness.intake_started():
            return web.Response(status=503, text="review-topic consumer not running\n")
        try:
            await self._store.ping()
        except StoreError:
            return web.Response(status=503, text="store unavailable\n")
        return web.Response(text="ok\n")

    async def metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
