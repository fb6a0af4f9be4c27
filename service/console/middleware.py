"""What every request passes through: security headers and error pages, then authentication
and CSRF.

Every route needs a logged-in reviewer except the few in :data:`PUBLIC_PATHS` (login, probes,
metrics, the stylesheet). Without a session, pages (``GET``) redirect to ``/login`` and every
other call gets ``401``; a state-changing call without the session's CSRF token gets ``403``.
Every response carries the security headers; pages and images are ``no-store``. Request bodies
are capped at :data:`MAX_BODY_BYTES`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Final
from urllib.parse import quote

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from service.console.auth import Auth, Identity
from service.console.metrics import ConsoleMetrics
from service.console.storage import StoreError

log = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 64 * 1024
PUBLIC_PATHS: Final = frozenset(
    {"/login", "/healthz", "/readyz", "/metrics", "/static/console.css"}
)
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
CACHEABLE_PATH: Final = "/static/console.css"
# A local path to return to after login; "//host" would be another site (protocol-relative).
LOCAL_PATH: Final = re.compile(r"/(?![/\\])[A-Za-z0-9/_.\-]*")

# Set by the authentication middleware around each handler (the request's own task), so it
# needs no request storage key (those differ across aiohttp versions).
_IDENTITY: ContextVar[Identity] = ContextVar("console_identity")


def identity() -> Identity:
    """The caller, as established by the authentication middleware for this request."""
    return _IDENTITY.get()


def local_path(target: str, default: str) -> str:
    """``target`` if it is a path on this site, else ``default``."""
    return target if LOCAL_PATH.fullmatch(target) else default


def json_error(message: str) -> str:
    return orjson.dumps({"error": message}).decode()


def _failure(request: web.Request, status: int, message: str) -> web.Response:
    if request.path.startswith("/api/"):
        return web.Response(
            text=json_error(message), status=status, content_type="application/json"
        )
    return web.Response(text=message + "\n", status=status)


def security_headers(*, secure_cookies: bool) -> Middleware:
    """The outermost layer: every answer, errors included, leaves with the same headers.

    An exception no handler expected becomes a plain 500 here (a store failure a 503) rather
    than aiohttp's own page, which would carry none of the headers.
    """

    def harden(headers: MutableMapping[str, str], path: str) -> None:
        headers.setdefault("Content-Security-Policy", CSP)
        headers["X-Frame-Options"] = "DENY"
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "no-referrer"
        headers["Cross-Origin-Opener-Policy"] = "same-origin"
        headers["Cross-Origin-Resource-Policy"] = "same-origin"
        headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
        if path != CACHEABLE_PATH:
            headers.setdefault("Cache-Control", "no-store")
        if secure_cookies:
            headers["Strict-Transport-Security"] = "max-age=31536000"

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            harden(exc.headers, request.path)
            raise
        except StoreError as exc:
            log.warning("%s %s: the store failed: %s", request.method, request.path, exc)
            response = _failure(request, 503, "the console store is unavailable")
        except Exception:  # one bad request must not leave unhardened (or leak a traceback)
            log.exception("%s %s failed", request.method, request.path)
            response = _failure(request, 500, "internal error")
        harden(response.headers, request.path)
        return response

    return middleware


def authentication(auth: Auth, metrics: ConsoleMetrics) -> Middleware:
    """Who is calling (session or trusted header), and, for a state change, the CSRF token."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        canonical = resource.canonical if resource is not None else None
        if canonical in PUBLIC_PATHS:
            return await handler(request)
        try:
            caller = await auth.identify(request)
        except StoreError as exc:
            log.warning("session lookup failed: %s", exc)
            raise web.HTTPServiceUnavailable(text="the console store is unavailable\n") from exc
        if caller is None:
            metrics.console_refused.labels(reason="unauthenticated").inc()
            navigation = request.headers.get("Sec-Fetch-Dest", "document") == "document"
            api = request.path.startswith("/api/")
            if request.method in ("GET", "HEAD") and navigation and not api:
                raise web.HTTPSeeOther(f"/login?next={quote(local_path(request.path, '/'))}")
            raise web.HTTPUnauthorized(
                text=json_error("login required"), content_type="application/json"
            )
        if request.method not in SAFE_METHODS:
            token = request.headers.get("X-CSRF-Token")
            if token is None and request.content_type in (
                "application/x-www-form-urlencoded",
                "multipart/form-data",
            ):
                form = await request.post()
                field = form.get("csrf_token")
                token = field if isinstance(field, str) else None
            cross_site = request.headers.get("Sec-Fetch-Site") == "cross-site"
            if cross_site or not auth.csrf_ok(caller.session, token):
                metrics.console_refused.labels(reason="csrf").inc()
                raise web.HTTPForbidden(
                    text=json_error("missing or invalid CSRF token"),
                    content_type="application/json",
                )
        bound = _IDENTITY.set(caller)
        try:
            response = await handler(request)
        finally:
            _IDENTITY.reset(bound)
        if caller.new_cookie is not None:
            auth.set_session_cookie(response, caller.new_cookie)
        return response

    return middleware
