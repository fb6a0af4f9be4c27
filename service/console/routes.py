"""Every URL the console serves and the layer that answers it: probes, pages, the JSON API,
behind the middleware (outermost first: security headers, then authentication)."""

from __future__ import annotations

from aiohttp import web

from service.console.api import Api
from service.console.auth import Auth
from service.console.metrics import ConsoleMetrics
from service.console.middleware import MAX_BODY_BYTES, authentication, security_headers
from service.console.pages import Pages
from service.console.probes import Probes


def application(
    *,
    probes: Probes,
    pages: Pages,
    api: Api,
    auth: Auth,
    metrics: ConsoleMetrics,
    secure_cookies: bool,
) -> web.Application:
    app = web.Application(
        middlewares=[
            security_headers(secure_cookies=secure_cookies),
            authentication(auth, metrics),
        ],
        client_max_size=MAX_BODY_BYTES,
    )
    r = app.router
    r.add_get("/healthz", probes.healthz)
    r.add_get("/readyz", probes.readyz)
    r.add_get("/metrics", probes.metrics)
    r.add_get("/static/console.css", pages.static_file("console.css"))
    r.add_get("/static/console.js", pages.static_file("console.js"))
    r.add_get("/login", pages.login_page)
    r.add_post("/login", pages.login)
    r.add_post("/logout", pages.logout)
    r.add_get("/", pages.home)
    r.add_get("/queue", pages.queue)
    r.add_post("/queue/next", pages.next_item)
    r.add_get("/items/{loop}", pages.item)
    r.add_get("/items/{loop}/image", pages.image)
    r.add_post("/items/{loop}/claim", pages.claim)
    r.add_post("/items/{loop}/release", pages.release)
    r.add_post("/items/{loop}/decision", pages.decision)
    r.add_get("/history", pages.history)
    r.add_get("/api/me", api.me)
    r.add_get("/api/queue", api.queue)
    r.add_post("/api/queue/next", api.next_item)
    r.add_get("/api/items/{loop}", api.item)
    r.add_post("/api/items/{loop}/claim", api.claim)
    r.add_post("/api/items/{loop}/release", api.release)
    r.add_post("/api/items/{loop}/decision", api.decision)
    r.add_get("/api/history", api.history)
    return app
