"""HTTP: the reviewer pages (server-rendered, a little vanilla JS), the JSON API, the probes.

Every route needs a logged-in reviewer except the few in :data:`PUBLIC_PATHS` (login, probes,
metrics, the stylesheet). Without a session, pages (``GET``) redirect to ``/login`` and every
other call gets ``401``; a state-changing call without the session's CSRF token gets ``403``.
Every response carries the security headers; pages and images are ``no-store``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import jinja2
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.console.a2i import (
    OutputWriter,
    build_event,
    build_output,
    chosen_labels,
    flow_of,
)
from service.console.auth import LOGIN_COOKIE, Auth, Identity
from service.console.delivery import Delivery
from service.console.image_source import ImageSource, ImageUnavailable, image_kind
from service.console.metrics import ConsoleMetrics
from service.console.settings import ConsoleSettings
from service.console.store import ConsoleStore, Decision, Item, StoreError
from service.fetch import redact_url
from service.messages import S3Image, UrlImage
from service.review.records import ReviewRecord
from service.taxonomy import TOP_LEVEL_CATEGORIES, V7_LABELS

log = logging.getLogger(__name__)

# Set by the authentication middleware around each handler (the request's own task), so it
# needs no request storage key (those differ across aiohttp versions).
_IDENTITY: ContextVar[Identity] = ContextVar("console_identity")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HERE: Final = Path(__file__).parent
PUBLIC_PATHS: Final = frozenset(
    {"/login", "/healthz", "/readyz", "/metrics", "/static/console.css"}
)
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# A local path to return to after login; "//host" would be another site (protocol-relative).
_NEXT: Final = re.compile(r"/(?![/\\])[A-Za-z0-9/_.\-]*")

# Flash messages by code: nothing a request supplies is ever echoed back into a page.
MESSAGES: Final = {
    "decided": "Decision recorded and sent.",
    "decided_pending": "Decision recorded; delivery will be retried automatically.",
    "taken": "Someone else holds that item.",
    "gone": "That item is no longer waiting for review (decided, or past its deadline).",
    "empty": "Nothing left to review right now.",
    "released": "Item released back to the queue.",
    "conflict": "That item was decided by someone else, or your claim was taken.",
    "logged_out": "You are logged out.",
}


@dataclass
class Readiness:
    started: bool = False
    intake_required: bool = False
    intake_started: Callable[[], bool] = lambda: True


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(message: str) -> str:
    return orjson.dumps({"error": message}).decode()


def _fmt_time(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _fmt_span(seconds: float) -> str:
    sign = "-" if seconds < 0 else ""
    seconds = abs(int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{sign}{days}d {hours}h"
    if hours:
        return f"{sign}{hours}h {minutes}m"
    return f"{sign}{minutes}m {secs:02d}s"


def taxonomy_tree() -> list[dict[str, Any]]:
    """The v7 labels as nested nodes (level 1 -> 2 -> 3) for the label picker."""

    def children(parent: str) -> list[dict[str, Any]]:
        return [
            {"name": label.name, "level": label.level, "children": children(label.name)}
            for label in V7_LABELS.values()
            if label.parent == parent
        ]

    return [{"name": top, "level": 1, "children": children(top)} for top in TOP_LEVEL_CATEGORIES]


def _image_summary(review: ReviewRecord | None) -> dict[str, Any]:
    if review is None:
        return {"kind": "unreadable"}
    image = review.image
    summary: dict[str, Any] = {"kind": image_kind(image)}
    if isinstance(image, S3Image):
        summary["where"] = f"s3://{image.bucket}/{image.key}"
    elif isinstance(image, UrlImage):
        summary["where"] = redact_url(image.url)
    else:
        summary["sha256"] = image.sha256
        summary["size"] = image.size
    return summary


def _model_labels(review: ReviewRecord | None) -> list[dict[str, Any]]:
    labels = review.labels if review is not None else ()
    return [
        {
            "name": label.name,
            "parent": label.parent,
            "confidence": label.confidence,
            "taxonomy_level": label.taxonomy_level,
        }
        for label in sorted(labels, key=lambda label: -label.confidence)
    ]


class ConsoleWeb:
    def __init__(
        self,
        *,
        settings: ConsoleSettings,
        store: ConsoleStore,
        auth: Auth,
        delivery: Delivery,
        writer: OutputWriter,
        images: ImageSource,
        metrics: ConsoleMetrics,
        clock: Callable[[], float],
        readiness: Readiness,
    ) -> None:
        self.settings = settings
        self.store = store
        self.auth = auth
        self.delivery = delivery
        self.writer = writer
        self.images = images
        self.metrics = metrics
        self.clock = clock
        self.readiness = readiness
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["time"] = _fmt_time
        self.templates.filters["span"] = _fmt_span
        self.static = {
            "console.css": ((HERE / "static" / "console.css").read_bytes(), "text/css"),
            "console.js": ((HERE / "static" / "console.js").read_bytes(), "text/javascript"),
        }

    # -- the application ----------------------------------------------------------------------

    def application(self) -> web.Application:
        app = web.Application(
            middlewares=[self._security_headers, self._authenticate],
            client_max_size=64 * 1024,
        )
        r = app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/metrics", self.metrics_page)
        r.add_get("/static/console.css", self.static_file("console.css"))
        r.add_get("/static/console.js", self.static_file("console.js"))
        r.add_get("/login", self.login_page)
        r.add_post("/login", self.login)
        r.add_post("/logout", self.logout)
        r.add_get("/", self.home)
        r.add_get("/queue", self.queue_page)
        r.add_post("/queue/next", self.next_form)
        r.add_get("/items/{loop}", self.item_page)
        r.add_get("/items/{loop}/image", self.image)
        r.add_post("/items/{loop}/claim", self.claim_form)
        r.add_post("/items/{loop}/release", self.release_form)
        r.add_post("/items/{loop}/decision", self.decision_form)
        r.add_get("/history", self.history_page)
        r.add_get("/api/me", self.api_me)
        r.add_get("/api/queue", self.api_queue)
        r.add_post("/api/queue/next", self.api_next)
        r.add_get("/api/items/{loop}", self.api_item)
        r.add_post("/api/items/{loop}/claim", self.api_claim)
        r.add_post("/api/items/{loop}/release", self.api_release)
        r.add_post("/api/items/{loop}/decision", self.api_decision)
        r.add_get("/api/history", self.api_history)
        return app

    # -- middlewares --------------------------------------------------------------------------

    @web.middleware
    async def _security_headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The outermost layer: every answer, errors included, leaves with the same headers.

        An exception no handler expected becomes a plain 500 here (a store failure a 503)
        rather than aiohttp's own page, which would carry none of the headers.
        """
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            self._harden(exc.headers, request.path)
            raise
        except StoreError as exc:
            log.warning("%s %s: the store failed: %s", request.method, request.path, exc)
            response = self._failure(request, 503, "the console store is unavailable")
        except Exception:  # one bad request must not leave unhardened (or leak a traceback)
            log.exception("%s %s failed", request.method, request.path)
            response = self._failure(request, 500, "internal error")
        self._harden(response.headers, request.path)
        return response

    @staticmethod
    def _failure(request: web.Request, status: int, message: str) -> web.Response:
        if request.path.startswith("/api/"):
            return web.Response(
                text=_error(message), status=status, content_type="application/json"
            )
        return web.Response(text=message + "\n", status=status)

    def _harden(self, headers: Any, path: str) -> None:
        headers.setdefault("Content-Security-Policy", CSP)
        headers["X-Frame-Options"] = "DENY"
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "no-referrer"
        headers["Cross-Origin-Opener-Policy"] = "same-origin"
        headers["Cross-Origin-Resource-Policy"] = "same-origin"
        headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
        if path != "/static/console.css":
            headers.setdefault("Cache-Control", "no-store")
        if self.settings.secure_cookies:
            headers["Strict-Transport-Security"] = "max-age=31536000"

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        canonical = resource.canonical if resource is not None else None
        if canonical in PUBLIC_PATHS:
            return await handler(request)
        try:
            identity = await self.auth.identify(request)
        except StoreError as exc:
            log.warning("session lookup failed: %s", exc)
            raise web.HTTPServiceUnavailable(text="the console store is unavailable\n") from exc
        if identity is None:
            self.metrics.console_refused.labels(reason="unauthenticated").inc()
            navigation = request.headers.get("Sec-Fetch-Dest", "document") == "document"
            api = request.path.startswith("/api/")
            if request.method in ("GET", "HEAD") and navigation and not api:
                target = request.path if _NEXT.fullmatch(request.path) else "/"
                raise web.HTTPSeeOther(f"/login?next={quote(target)}")
            raise web.HTTPUnauthorized(
                text=_error("login required"),
                content_type="application/json",
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
            if cross_site or not self.auth.csrf_ok(identity.session, token):
                self.metrics.console_refused.labels(reason="csrf").inc()
                raise web.HTTPForbidden(
                    text=_error("missing or invalid CSRF token"),
                    content_type="application/json",
                )
        bound = _IDENTITY.set(identity)
        try:
            response = await handler(request)
        finally:
            _IDENTITY.reset(bound)
        if identity.new_cookie is not None:
            self.auth.set_session_cookie(response, identity.new_cookie)
        return response

    # -- helpers ------------------------------------------------------------------------------

    def render(self, name: str, status: int = 200, **context: Any) -> web.Response:
        body = self.templates.get_template(name).render(**context)
        return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")

    @staticmethod
    def identity(_: web.Request) -> Identity:
        """The caller, as established by the authentication middleware for this request."""
        return _IDENTITY.get()

    def base_context(self, request: web.Request) -> dict[str, Any]:
        identity = self.identity(request)
        message = MESSAGES.get(request.query.get("msg", ""), "")
        return {
            "user": identity.user,
            "lead": self.auth.is_lead(identity.user),
            "csrf": identity.session.csrf,
            "message": message,
            "now": self.clock(),
        }

    def item_json(self, item: Item, user: str) -> dict[str, Any]:
        """What pages and the API show of an item; an unreadable record shows as such."""
        now = self.clock()
        review = item.review
        active_claim = item.claim_expires is not None and item.claim_expires > now
        return {
            "loop_name": item.loop_name,
            "request_id": item.request_id,
            "status": item.status,
            "deadline": item.deadline,
            "created_at": item.created_at,
            "claimed_by": item.claimed_by if active_claim or item.claimed_by == user else None,
            "claim_expires": item.claim_expires if item.claimed_by else None,
            "yours": item.held_by(user),
            "unreadable": review is None,
            "labels": _model_labels(review),
            "activation_reasons": list(review.activation_reasons) if review else [],
            "image": _image_summary(review),
        }

    # -- probes and static --------------------------------------------------------------------

    async def healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, _: web.Request) -> web.Response:
        if not self.readiness.started:
            return web.Response(status=503, text="starting\n")
        if self.readiness.intake_required and not self.readiness.intake_started():
            return web.Response(status=503, text="review-topic consumer not running\n")
        try:
            await self.store.ping()
        except StoreError:
            return web.Response(status=503, text="store unavailable\n")
        return web.Response(text="ok\n")

    async def metrics_page(self, _: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def static_file(self, name: str) -> Handler:
        body, content_type = self.static[name]

        async def handler(_: web.Request) -> web.StreamResponse:
            return web.Response(body=body, content_type=content_type, charset="utf-8")

        return handler

    # -- login --------------------------------------------------------------------------------

    async def login_page(
        self, request: web.Request, *, error: str = "", status: int = 200
    ) -> web.Response:
        cookie, token = self.auth.login_token(request.cookies.get(LOGIN_COOKIE))
        target = request.query.get("next", "/queue")
        response = self.render(
            "login.html",
            status=status,
            token=token,
            next=target if _NEXT.fullmatch(target) else "/queue",
            error=error,
            message=MESSAGES.get(request.query.get("msg", ""), ""),
            password_login=bool(self.settings.users),
        )
        self.auth.set_login_cookie(response, cookie)
        return response

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        token = form.get("login_token")
        if not self.auth.login_token_ok(
            request.cookies.get(LOGIN_COOKIE), token if isinstance(token, str) else None
        ):
            self.metrics.console_refused.labels(reason="csrf").inc()
            return await self.login_page(
                request, error="The form expired; please try again.", status=403
            )
        username = str(form.get("username", "")).strip()[:128]
        password = str(form.get("password", ""))[:1024]
        outcome = await self.auth.check_password(username, password)
        if outcome != "ok":
            error = (
                "Too many failed attempts; wait a minute."
                if outcome == "locked"
                else "Unknown user name or wrong password."
            )
            return await self.login_page(request, error=error, status=401)
        cookie, _ = await self.auth.start_session(username)
        target = str(form.get("next", "/queue"))
        response = web.HTTPSeeOther(target if _NEXT.fullmatch(target) else "/queue")
        self.auth.set_session_cookie(response, cookie)
        response.del_cookie(LOGIN_COOKIE, path="/login")
        log.info("reviewer %s logged in", username)
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        await self.auth.end_session(self.identity(request))
        response = web.HTTPSeeOther("/login?msg=logged_out")
        self.auth.clear_session_cookie(response)
        raise response

    # -- pages --------------------------------------------------------------------------------

    async def home(self, _: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther("/queue")

    async def queue_page(self, request: web.Request) -> web.Response:
        user = self.identity(request).user
        now = self.clock()
        items = await self.store.queue(now)
        counts = await self.store.counts(now)
        rows = [self.item_json(item, user) for item in items]
        mine = next((row for row in rows if row["yours"]), None)
        return self.render(
            "queue.html", **self.base_context(request), rows=rows, counts=counts, mine=mine
        )

    async def next_form(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        skip = form.get("skip")
        user = self.identity(request).user
        item = await self._claim_next(user, skip if isinstance(skip, str) else None)
        if item is None:
            raise web.HTTPSeeOther("/queue?msg=empty")
        raise web.HTTPSeeOther(f"/items/{item.loop_name}")

    async def _claim_next(self, user: str, skip: str | None) -> Item | None:
        item = await self.store.claim_next(user, self.clock(), self.settings.claim_ttl_s, skip=skip)
        self.metrics.console_claims.labels(outcome="claimed" if item else "empty").inc()
        return item

    async def item_page(self, request: web.Request) -> web.Response:
        user = self.identity(request).user
        item = await self.store.item(request.match_info["loop"])
        if item is None or item.status != "pending":
            raise web.HTTPSeeOther("/queue?msg=gone")
        if not item.held_by(user):
            raise web.HTTPSeeOther("/queue?msg=taken")
        return self._render_item(request, item)

    def _render_item(
        self, request: web.Request, item: Item, *, error: str = "", status: int = 200
    ) -> web.Response:
        review = item.review
        results = review.activation_results if review else None
        attributes = review.attributes if review else None
        return self.render(
            "item.html",
            status=status,
            **self.base_context(request),
            item=item,
            info=self.item_json(item, self.identity(request).user),
            fallback_reason=review.fallback_reason if review else None,
            results=orjson.dumps(results, option=orjson.OPT_INDENT_2).decode()
            if results is not None
            else "",
            attributes=orjson.dumps(attributes, option=orjson.OPT_INDENT_2).decode()
            if attributes
            else "",
            taxonomy=taxonomy_tree(),
            error=error,
            claim_ttl=self.settings.claim_ttl_s,
        )

    async def claim_form(self, request: web.Request) -> web.StreamResponse:
        user = self.identity(request).user
        loop = request.match_info["loop"]
        result = await self.store.claim(loop, user, self.clock(), self.settings.claim_ttl_s)
        self.metrics.console_claims.labels(outcome=result.outcome).inc()
        if result.outcome == "claimed":
            raise web.HTTPSeeOther(f"/items/{loop}")
        raise web.HTTPSeeOther(f"/queue?msg={result.outcome}")

    async def release_form(self, request: web.Request) -> web.StreamResponse:
        await self.store.release(request.match_info["loop"], self.identity(request).user)
        raise web.HTTPSeeOther("/queue?msg=released")

    async def decision_form(self, request: web.Request) -> web.StreamResponse:
        user = self.identity(request).user
        loop = request.match_info["loop"]
        form = await request.post()
        names = [value for value in form.getall("label", []) if isinstance(value, str)]
        nothing = form.get("nothing_objectionable") == "1"
        problem = self._choice_problem(names, nothing)
        if problem:
            item = await self.store.item(loop)
            if item is None or not item.held_by(user):
                raise web.HTTPSeeOther("/queue?msg=gone")
            return self._render_item(request, item, error=problem, status=400)
        decision, outcome, _ = await self._decide(loop, user, [] if nothing else names)
        if decision is None:
            raise web.HTTPSeeOther(f"/queue?msg={'gone' if outcome == 'missing' else 'conflict'}")
        delivered = decision.published_at is not None
        if form.get("then", "next") == "next":
            following = await self._claim_next(user, loop)
            if following is not None:
                raise web.HTTPSeeOther(f"/items/{following.loop_name}")
        raise web.HTTPSeeOther(f"/queue?msg={'decided' if delivered else 'decided_pending'}")

    @staticmethod
    def _choice_problem(names: list[str], nothing: bool) -> str:
        if nothing and names:
            return "Choose labels or 'nothing objectionable', not both."
        if not nothing and not names:
            return "Choose the labels that apply, or 'nothing objectionable'."
        unknown = [name for name in names if name not in V7_LABELS]
        if unknown:
            return "Unknown label(s); pick from the taxonomy."
        return ""

    async def _decide(
        self, loop: str, user: str, names: list[str]
    ) -> tuple[Decision | None, str, str]:
        """Record (once) and deliver the decision; (decision, outcome, why)."""
        labels = chosen_labels(names)
        now = self.clock()
        settings = self.settings

        def build(item: Item, accepted_at: float) -> tuple[str, bytes, bytes]:
            flow = flow_of(item, settings.flow_definition)
            uri = self.writer.uri_for(item, flow)
            output = build_output(
                item,
                reviewer=user,
                labels=labels,
                accepted_at=accepted_at,
                submitted_at=now,
                issuer=settings.issuer,
                flow=flow,
            )
            event = build_event(item, output_uri=uri, submitted_at=now, flow=flow)
            return uri, orjson.dumps(output), event

        result = await self.store.decide(loop, user, labels, now, build)
        decision = result.decision
        if result.outcome == "decided" and decision is not None:
            verdict = "rejected" if labels else "approved"
            self.metrics.console_decisions.labels(verdict=verdict).inc()
            self.metrics.console_decision_time.observe(max(0.0, now - decision.accepted_at))
            log.info("reviewer %s decided %s: %s", user, loop, verdict)
        if result.outcome in ("decided", "repeat") and decision is not None:
            if decision.published_at is None and await self.delivery.deliver(decision):
                decision = await self.store.decision(loop) or decision
            return decision, result.outcome, ""
        return None, result.outcome, result.why

    async def image(self, request: web.Request) -> web.StreamResponse:
        user = self.identity(request).user
        item = await self.store.item(request.match_info["loop"])
        if item is None:
            raise web.HTTPNotFound(text="no such item\n")
        if not item.held_by(user):
            self.metrics.console_refused.labels(reason="forbidden").inc()
            raise web.HTTPForbidden(text="claim the item to see its image\n")
        if item.review is None:
            return web.Response(
                status=422,
                text="the item's review record is unreadable: it names no image to show\n",
                headers={"Cache-Control": "no-store, private"},
            )
        try:
            data, content_type = await self.images.load(item.review.image)
        except ImageUnavailable as exc:
            return web.Response(
                status=exc.status,
                text=exc.reason + "\n",
                headers={"Cache-Control": "no-store, private"},
            )
        return web.Response(
            body=data,
            content_type=content_type,
            headers={
                "Cache-Control": "no-store, private",
                "Content-Disposition": "inline",
                "Content-Security-Policy": "default-src 'none'; sandbox",
            },
        )

    async def history_page(self, request: web.Request) -> web.Response:
        user = self.identity(request).user
        if not self.auth.is_lead(user):
            self.metrics.console_refused.labels(reason="forbidden").inc()
            raise web.HTTPForbidden(text="the history is for leads\n")
        entries, reviewer, next_before = await self._history(request)
        return self.render(
            "history.html",
            **self.base_context(request),
            entries=entries,
            reviewer=reviewer or "",
            next_before=next_before,
        )

    async def _history(
        self, request: web.Request
    ) -> tuple[list[dict[str, Any]], str | None, float | None]:
        reviewer = request.query.get("reviewer") or None
        try:
            before = float(request.query["before"]) if "before" in request.query else None
            limit = min(500, max(1, int(request.query.get("limit", "100"))))
        except ValueError:
            raise web.HTTPBadRequest(text="before and limit must be numbers\n") from None
        found = await self.store.history(limit=limit, before=before, reviewer=reviewer)
        entries = [
            {
                "loop_name": entry.decision.loop_name,
                "request_id": entry.decision.request_id,
                "reviewer": entry.decision.reviewer,
                "verdict": "rejected" if entry.decision.labels else "approved",
                "labels": [label["name"] for label in entry.decision.labels],
                "accepted_at": entry.decision.accepted_at,
                "submitted_at": entry.decision.submitted_at,
                "output_uri": entry.decision.output_uri,
                "delivered_at": entry.decision.published_at,
                "unreadable": entry.review is None,
                "model_labels": _model_labels(entry.review),
            }
            for entry in found
        ]
        next_before = found[-1].decision.submitted_at if len(found) == limit else None
        return entries, reviewer, next_before

    # -- JSON API -----------------------------------------------------------------------------

    async def api_me(self, request: web.Request) -> web.Response:
        identity = self.identity(request)
        return _json(
            {
                "user": identity.user,
                "lead": self.auth.is_lead(identity.user),
                "csrf_token": identity.session.csrf,
            }
        )

    async def api_queue(self, request: web.Request) -> web.Response:
        user = self.identity(request).user
        now = self.clock()
        items = await self.store.queue(now)
        counts = await self.store.counts(now)
        return _json(
            {
                "counts": {
                    "pending": counts.pending,
                    "overdue": counts.overdue,
                    "claimed": counts.claimed,
                    "undelivered": counts.unpublished,
                },
                "items": [self.item_json(item, user) for item in items],
            }
        )

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise web.HTTPBadRequest(
                text=_error("body must be JSON"),
                content_type="application/json",
            ) from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(
                text=_error("body must be a JSON object"),
                content_type="application/json",
            )
        return body

    async def api_next(self, request: web.Request) -> web.Response:
        user = self.identity(request).user
        body = await self._json_body(request)
        skip = body.get("skip")
        item = await self._claim_next(user, skip if isinstance(skip, str) else None)
        if item is None:
            return _json({"error": "nothing to review"}, status=404)
        return _json({"item": self.item_json(item, user)})

    async def api_item(self, request: web.Request) -> web.Response:
        user = self.identity(request).user
        item = await self.store.item(request.match_info["loop"])
        if item is None:
            return _json({"error": "no such item"}, status=404)
        if not item.held_by(user) and not self.auth.is_lead(user):
            return _json({"error": "claim the item first"}, status=403)
        details = self.item_json(item, user)
        details["attributes"] = item.review.attributes if item.review else None
        details["activation_results"] = item.review.activation_results if item.review else None
        return _json({"item": details})

    async def api_claim(self, request: web.Request) -> web.Response:
        user = self.identity(request).user
        loop = request.match_info["loop"]
        result = await self.store.claim(loop, user, self.clock(), self.settings.claim_ttl_s)
        self.metrics.console_claims.labels(outcome=result.outcome).inc()
        if result.outcome == "claimed" and result.item is not None:
            return _json({"item": self.item_json(result.item, user)})
        if result.outcome == "taken" and result.item is not None:
            return _json(
                {"error": "claimed by someone else", "claimed_by": result.item.claimed_by},
                status=409,
            )
        if result.item is None:
            return _json({"error": "no such item"}, status=404)
        return _json({"error": "no longer waiting for review"}, status=410)

    async def api_release(self, request: web.Request) -> web.Response:
        released = await self.store.release(request.match_info["loop"], self.identity(request).user)
        return _json({"released": released})

    async def api_decision(self, request: web.Request) -> web.Response:
        user = self.identity(request).user
        body = await self._json_body(request)
        raw = body.get("labels", [])
        if not isinstance(raw, list) or not all(isinstance(name, str) for name in raw):
            return _json({"error": "labels must be a list of label names"}, status=400)
        nothing = body.get("nothing_objectionable") is True
        problem = self._choice_problem(raw, nothing)
        if problem:
            return _json({"error": problem}, status=400)
        loop = request.match_info["loop"]
        decision, outcome, why = await self._decide(loop, user, [] if nothing else raw)
        if decision is None:
            status = 404 if outcome == "missing" else 409
            return _json({"error": why or outcome}, status=status)
        return _json(
            {
                "outcome": outcome,
                "loop_name": decision.loop_name,
                "reviewer": decision.reviewer,
                "labels": decision.labels,
                "output_uri": decision.output_uri,
                "delivered": decision.published_at is not None,
            }
        )

    async def api_history(self, request: web.Request) -> web.Response:
        user = self.identity(request).user
        if not self.auth.is_lead(user):
            self.metrics.console_refused.labels(reason="forbidden").inc()
            return _json({"error": "the history is for leads"}, status=403)
        entries, _, next_before = await self._history(request)
        return _json({"decisions": entries, "next_before": next_before})
