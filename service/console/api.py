"""The JSON API under ``/api/``: the same use cases as the pages (:mod:`.review_tasks`), answered
with status codes and JSON bodies (``{"error": ...}`` when refused)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from service.console.auth import Auth
from service.console.middleware import identity, json_error
from service.console.review_tasks import ReviewTasks


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise web.HTTPBadRequest(
            text=json_error("body must be JSON"), content_type="application/json"
        ) from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text=json_error("body must be a JSON object"), content_type="application/json"
        )
    return body


class Api:
    def __init__(self, *, auth: Auth, tasks: ReviewTasks) -> None:
        self._auth = auth
        self._tasks = tasks

    async def me(self, _: web.Request) -> web.Response:
        caller = identity()
        return _json(
            {
                "user": caller.user,
                "lead": self._auth.is_lead(caller.user),
                "csrf_token": caller.session.csrf,
            }
        )

    async def queue(self, _: web.Request) -> web.Response:
        view = await self._tasks.queue(identity().user)
        counts = view.counts
        return _json(
            {
                "counts": {
                    "pending": counts.pending,
                    "overdue": counts.overdue,
                    "claimed": counts.claimed,
                    "undelivered": counts.unpublished,
                },
                "items": view.rows,
            }
        )

    async def next_item(self, request: web.Request) -> web.Response:
        user = identity().user
        body = await _json_body(request)
        skip = body.get("skip")
        item = await self._tasks.claim_next(user, skip if isinstance(skip, str) else None)
        if item is None:
            return _json({"error": "nothing to review"}, status=404)
        return _json({"item": self._tasks.show(item, user)})

    async def item(self, request: web.Request) -> web.Response:
        user = identity().user
        opened = await self._tasks.open(user, request.match_info["loop"])
        item = opened.item
        if item is None:
            return _json({"error": "no such item"}, status=404)
        if opened.access == "other":
            return _json({"error": "claim the item first"}, status=403)
        details = self._tasks.show(item, user)
        details["attributes"] = item.review.attributes if item.review else None
        details["activation_results"] = item.review.activation_results if item.review else None
        return _json({"item": details})

    async def claim(self, request: web.Request) -> web.Response:
        user = identity().user
        result = await self._tasks.claim(user, request.match_info["loop"])
        if result.outcome == "claimed" and result.item is not None:
            return _json({"item": self._tasks.show(result.item, user)})
        if result.outcome == "taken" and result.item is not None:
            return _json(
                {"error": "claimed by someone else", "claimed_by": result.item.claimed_by},
                status=409,
            )
        if result.item is None:
            return _json({"error": "no such item"}, status=404)
        return _json({"error": "no longer waiting for review"}, status=410)

    async def release(self, request: web.Request) -> web.Response:
        released = await self._tasks.release(identity().user, request.match_info["loop"])
        return _json({"released": released})

    async def decision(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        raw = body.get("labels", [])
        if not isinstance(raw, list) or not all(isinstance(name, str) for name in raw):
            return _json({"error": "labels must be a list of label names"}, status=400)
        nothing = body.get("nothing_objectionable") is True
        decided = await self._tasks.decide(
            identity().user, request.match_info["loop"], raw, nothing
        )
        decision = decided.decision
        if decided.outcome == "invalid":
            return _json({"error": decided.why}, status=400)
        if decision is None:
            status = 404 if decided.outcome == "missing" else 409
            return _json({"error": decided.why or decided.outcome}, status=status)
        return _json(
            {
                "outcome": decided.outcome,
                "loop_name": decision.loop_name,
                "reviewer": decision.reviewer,
                "labels": decision.labels,
                "output_uri": decision.output_uri,
                "delivered": decision.published_at is not None,
            }
        )

    async def history(self, request: web.Request) -> web.Response:
        view = await self._tasks.history(identity().user, request.query)
        if view.outcome == "forbidden":
            return _json({"error": "the history is for leads"}, status=403)
        if view.outcome == "bad_query":
            raise web.HTTPBadRequest(text="before and limit must be numbers\n")
        return _json({"decisions": view.entries, "next_before": view.next_before})
