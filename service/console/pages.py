"""The reviewer pages: server-rendered HTML and forms (a little vanilla JS), login and logout.

Each form calls the same use case as its JSON twin (:mod:`service.console.review_tasks`) and
answers with a redirect and a flash message code; nothing a request supplies is echoed back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import jinja2
import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from service.console.auth import LOGIN_COOKIE, Auth
from service.console.metrics import ConsoleMetrics
from service.console.middleware import identity, local_path
from service.console.review_tasks import ReviewTasks
from service.console.settings import ConsoleSettings
from service.console.storage import Item
from service.console.views import taxonomy_tree

log = logging.getLogger(__name__)

HERE: Final = Path(__file__).parent
PRIVATE: Final = {"Cache-Control": "no-store, private"}

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


def display_time(epoch: float | None) -> str:
    """A time as reviewers read it: ``2026-12-01 06:00:00 UTC``."""
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def display_span(seconds: float) -> str:
    """A duration to the nearest unit that matters: ``-3m 05s``, ``2h 10m``, ``4d 3h``."""
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


class Pages:
    def __init__(
        self,
        *,
        settings: ConsoleSettings,
        auth: Auth,
        tasks: ReviewTasks,
        metrics: ConsoleMetrics,
        clock: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._auth = auth
        self._tasks = tasks
        self._metrics = metrics
        self._clock = clock
        self._templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._templates.filters["time"] = display_time
        self._templates.filters["span"] = display_span
        self._static = {
            "console.css": ((HERE / "static" / "console.css").read_bytes(), "text/css"),
            "console.js": ((HERE / "static" / "console.js").read_bytes(), "text/javascript"),
        }

    # -- helpers ------------------------------------------------------------------------------

    def _render(self, name: str, status: int = 200, **context: Any) -> web.Response:
        body = self._templates.get_template(name).render(**context)
        return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")

    def _base_context(self, request: web.Request) -> dict[str, Any]:
        caller = identity()
        return {
            "user": caller.user,
            "lead": self._auth.is_lead(caller.user),
            "csrf": caller.session.csrf,
            "message": MESSAGES.get(request.query.get("msg", ""), ""),
            "now": self._clock(),
        }

    def static_file(self, name: str) -> Handler:
        body, content_type = self._static[name]

        async def handler(_: web.Request) -> web.StreamResponse:
            return web.Response(body=body, content_type=content_type, charset="utf-8")

        return handler

    # -- login --------------------------------------------------------------------------------

    async def login_page(
        self, request: web.Request, *, error: str = "", status: int = 200
    ) -> web.Response:
        cookie, token = self._auth.login_token(request.cookies.get(LOGIN_COOKIE))
        response = self._render(
            "login.html",
            status=status,
            token=token,
            next=local_path(request.query.get("next", "/queue"), "/queue"),
            error=error,
            message=MESSAGES.get(request.query.get("msg", ""), ""),
            password_login=bool(self._settings.users),
        )
        self._auth.set_login_cookie(response, cookie)
        return response

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        token = form.get("login_token")
        if not self._auth.login_token_ok(
            request.cookies.get(LOGIN_COOKIE), token if isinstance(token, str) else None
        ):
            self._metrics.console_refused.labels(reason="csrf").inc()
            return await self.login_page(
                request, error="The form expired; please try again.", status=403
            )
        username = str(form.get("username", "")).strip()[:128]
        password = str(form.get("password", ""))[:1024]
        outcome = await self._auth.check_password(username, password)
        if outcome != "ok":
            error = (
                "Too many failed attempts; wait a minute."
                if outcome == "locked"
                else "Unknown user name or wrong password."
            )
            return await self.login_page(request, error=error, status=401)
        cookie, _ = await self._auth.start_session(username)
        response = web.HTTPSeeOther(local_path(str(form.get("next", "/queue")), "/queue"))
        self._auth.set_session_cookie(response, cookie)
        response.del_cookie(LOGIN_COOKIE, path="/login")
        log.info("reviewer %s logged in", username)
        raise response

    async def logout(self, _: web.Request) -> web.StreamResponse:
        await self._auth.end_session(identity())
        response = web.HTTPSeeOther("/login?msg=logged_out")
        self._auth.clear_session_cookie(response)
        raise response

    # -- the queue and items ------------------------------------------------------------------

    async def home(self, _: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther("/queue")

    async def queue(self, request: web.Request) -> web.Response:
        view = await self._tasks.queue(identity().user)
        mine = next((row for row in view.rows if row["yours"]), None)
        return self._render(
            "queue.html",
            **self._base_context(request),
            rows=view.rows,
            counts=view.counts,
            mine=mine,
        )

    async def next_item(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        skip = form.get("skip")
        item = await self._tasks.claim_next(
            identity().user, skip if isinstance(skip, str) else None
        )
        if item is None:
            raise web.HTTPSeeOther("/queue?msg=empty")
        raise web.HTTPSeeOther(f"/items/{item.loop_name}")

    async def item(self, request: web.Request) -> web.Response:
        opened = await self._tasks.open(identity().user, request.match_info["loop"])
        if opened.item is None or opened.item.status != "pending":
            raise web.HTTPSeeOther("/queue?msg=gone")
        if opened.access != "yours":
            raise web.HTTPSeeOther("/queue?msg=taken")
        return self._render_item(request, opened.item)

    def _render_item(
        self, request: web.Request, item: Item, *, error: str = "", status: int = 200
    ) -> web.Response:
        review = item.review
        results = review.activation_results if review else None
        attributes = review.attributes if review else None
        return self._render(
            "item.html",
            status=status,
            **self._base_context(request),
            item=item,
            info=self._tasks.show(item, identity().user),
            fallback_reason=review.fallback_reason if review else None,
            results=orjson.dumps(results, option=orjson.OPT_INDENT_2).decode()
            if results is not None
            else "",
            attributes=orjson.dumps(attributes, option=orjson.OPT_INDENT_2).decode()
            if attributes
            else "",
            taxonomy=taxonomy_tree(),
            error=error,
            claim_ttl=self._settings.claim_ttl_s,
        )

    async def claim(self, request: web.Request) -> web.StreamResponse:
        loop = request.match_info["loop"]
        result = await self._tasks.claim(identity().user, loop)
        if result.outcome == "claimed":
            raise web.HTTPSeeOther(f"/items/{loop}")
        raise web.HTTPSeeOther(f"/queue?msg={result.outcome}")

    async def release(self, request: web.Request) -> web.StreamResponse:
        await self._tasks.release(identity().user, request.match_info["loop"])
        raise web.HTTPSeeOther("/queue?msg=released")

    async def decision(self, request: web.Request) -> web.StreamResponse:
        user = identity().user
        loop = request.match_info["loop"]
        form = await request.post()
        names = [value for value in form.getall("label", []) if isinstance(value, str)]
        nothing = form.get("nothing_objectionable") == "1"
        decided = await self._tasks.decide(user, loop, names, nothing)
        if decided.outcome == "invalid":
            opened = await self._tasks.open(user, loop)
            if opened.item is None or opened.access != "yours":
                raise web.HTTPSeeOther("/queue?msg=gone")
            return self._render_item(request, opened.item, error=decided.why, status=400)
        if decided.decision is None:
            raise web.HTTPSeeOther(
                f"/queue?msg={'gone' if decided.outcome == 'missing' else 'conflict'}"
            )
        delivered = decided.decision.published_at is not None
        if form.get("then", "next") == "next":
            following = await self._tasks.claim_next(user, loop)
            if following is not None:
                raise web.HTTPSeeOther(f"/items/{following.loop_name}")
        raise web.HTTPSeeOther(f"/queue?msg={'decided' if delivered else 'decided_pending'}")

    async def image(self, request: web.Request) -> web.StreamResponse:
        image = await self._tasks.image(identity().user, request.match_info["loop"])
        if image.outcome == "missing":
            raise web.HTTPNotFound(text=image.reason + "\n")
        if image.outcome == "not_yours":
            raise web.HTTPForbidden(text=image.reason + "\n")
        if image.outcome == "unreadable":
            return web.Response(status=422, text=image.reason + "\n", headers=PRIVATE)
        if image.outcome == "unavailable":
            return web.Response(status=image.status, text=image.reason + "\n", headers=PRIVATE)
        return web.Response(
            body=image.data,
            content_type=image.content_type,
            headers={
                **PRIVATE,
                "Content-Disposition": "inline",
                "Content-Security-Policy": "default-src 'none'; sandbox",
            },
        )

    # -- leads --------------------------------------------------------------------------------

    async def history(self, request: web.Request) -> web.Response:
        view = await self._tasks.history(identity().user, request.query)
        if view.outcome == "forbidden":
            raise web.HTTPForbidden(text="the history is for leads\n")
        if view.outcome == "bad_query":
            raise web.HTTPBadRequest(text="before and limit must be numbers\n")
        return self._render(
            "history.html",
            **self._base_context(request),
            entries=view.entries,
            reviewer=view.reviewer or "",
            next_before=view.next_before,
        )
