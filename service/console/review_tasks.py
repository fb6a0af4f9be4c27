"""What a reviewer does: see the queue, claim, open, release, decide, see the image, and (leads)
read the history.

The reviewer pages and the JSON API both call these use cases, so a form and its API twin
behave the same and differ only in how they answer (a redirect or a status code). Each use case
counts its own metrics. A decision is built here in A2I's formats (:mod:`service.console.a2i`),
recorded once by the store, then delivered (:mod:`service.console.delivery`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from service.console.a2i import build_event, build_output, chosen_labels, flow_of
from service.console.delivery import Delivery
from service.console.image_source import ImageSource, ImageUnavailable
from service.console.metrics import ConsoleMetrics
from service.console.settings import ConsoleSettings, FlowDefinition
from service.console.storage import Built, ClaimResult, ConsoleStore, Counts, Decision, Item
from service.console.views import history_view, item_view
from service.taxonomy import V7_LABELS

log = logging.getLogger(__name__)

HISTORY_LIMIT = 100
HISTORY_MAX = 500


@dataclass(frozen=True, slots=True)
class QueueView:
    rows: list[dict[str, Any]]  # views.item_view of each waiting item, nearest deadline first
    counts: Counts


@dataclass(frozen=True, slots=True)
class Opened:
    """An item and the caller's access to it: ``yours`` (held), ``lead`` (a lead may look),
    ``other`` (neither), ``missing`` (no such item)."""

    access: Literal["yours", "lead", "other", "missing"]
    item: Item | None


@dataclass(frozen=True, slots=True)
class Decided:
    """``decided`` (now) or ``repeat`` (the same reviewer, again) carry the decision; ``invalid``
    (the choice), ``conflict`` and ``missing`` carry why not."""

    outcome: Literal["decided", "repeat", "invalid", "conflict", "missing"]
    decision: Decision | None = None
    why: str = ""


@dataclass(frozen=True, slots=True)
class ItemImage:
    outcome: Literal["shown", "missing", "not_yours", "unreadable", "unavailable"]
    data: bytes = b""
    content_type: str = ""
    status: int = 200  # unavailable: the HTTP status the image source suggests
    reason: str = ""


@dataclass(frozen=True, slots=True)
class HistoryView:
    outcome: Literal["shown", "forbidden", "bad_query"]
    entries: list[dict[str, Any]]
    reviewer: str | None = None
    next_before: float | None = None  # the next page's ``before``; None on the last page


def choice_problem(names: list[str], nothing: bool) -> str:
    """Why a reviewer's choice cannot be recorded ("" if it can): labels XOR nothing, all v7."""
    if nothing and names:
        return "Choose labels or 'nothing objectionable', not both."
    if not nothing and not names:
        return "Choose the labels that apply, or 'nothing objectionable'."
    unknown = [name for name in names if name not in V7_LABELS]
    if unknown:
        return "Unknown label(s); pick from the taxonomy."
    return ""


def a2i_answer(
    item: Item,
    accepted_at: float,
    *,
    reviewer: str,
    labels: list[dict[str, str]],
    submitted_at: float,
    issuer: str,
    default_flow: FlowDefinition,
    output_uri: Callable[[Item, FlowDefinition], str],
) -> Built:
    """The answer as A2I would write it: (output.json's URI, output.json, completion event)."""
    flow = flow_of(item, default_flow)
    uri = output_uri(item, flow)
    output = build_output(
        item,
        reviewer=reviewer,
        labels=labels,
        accepted_at=accepted_at,
        submitted_at=submitted_at,
        issuer=issuer,
        flow=flow,
    )
    event = build_event(item, output_uri=uri, submitted_at=submitted_at, flow=flow)
    return uri, orjson.dumps(output), event


class ReviewTasks:
    def __init__(
        self,
        *,
        settings: ConsoleSettings,
        store: ConsoleStore,
        delivery: Delivery,
        output_uri: Callable[[Item, FlowDefinition], str],
        images: ImageSource,
        metrics: ConsoleMetrics,
        clock: Callable[[], float],
        is_lead: Callable[[str], bool],
    ) -> None:
        self._settings = settings
        self._store = store
        self._delivery = delivery
        self._output_uri = output_uri
        self._images = images
        self._metrics = metrics
        self._clock = clock
        self._is_lead = is_lead

    def show(self, item: Item, user: str) -> dict[str, Any]:
        """The item as pages and the API show it to ``user`` now."""
        return item_view(item, user, self._clock())

    async def queue(self, user: str) -> QueueView:
        now = self._clock()
        items = await self._store.queue(now)
        counts = await self._store.counts(now)
        return QueueView([item_view(item, user, now) for item in items], counts)

    async def claim_next(self, user: str, skip: str | None) -> Item | None:
        """Claim the free item with the nearest deadline (not ``skip``); None: nothing left."""
        item = await self._store.claim_next(
            user, self._clock(), self._settings.claim_ttl_s, skip=skip
        )
        self._metrics.console_claims.labels(outcome="claimed" if item else "empty").inc()
        return item

    async def claim(self, user: str, loop: str) -> ClaimResult:
        """Claim one item, or renew one's own claim."""
        result = await self._store.claim(loop, user, self._clock(), self._settings.claim_ttl_s)
        self._metrics.console_claims.labels(outcome=result.outcome).inc()
        return result

    async def release(self, user: str, loop: str) -> bool:
        return await self._store.release(loop, user)

    async def open(self, user: str, loop: str) -> Opened:
        item = await self._store.item(loop)
        if item is None:
            return Opened("missing", None)
        if item.held_by(user):
            return Opened("yours", item)
        return Opened("lead" if self._is_lead(user) else "other", item)

    async def decide(self, user: str, loop: str, names: list[str], nothing: bool) -> Decided:
        """Record (once) and deliver the reviewer's choice: labels, or nothing objectionable.

        A delivery that fails now is left to the outbox; the decision says whether it went.
        """
        problem = choice_problem(names, nothing)
        if problem:
            return Decided("invalid", why=problem)
        labels = chosen_labels([] if nothing else names)
        now = self._clock()
        settings = self._settings

        def build(item: Item, accepted_at: float) -> Built:
            return a2i_answer(
                item,
                accepted_at,
                reviewer=user,
                labels=labels,
                submitted_at=now,
                issuer=settings.issuer,
                default_flow=settings.flow_definition,
                output_uri=self._output_uri,
            )

        result = await self._store.decide(loop, user, labels, now, build)
        decision = result.decision
        if result.outcome == "decided" and decision is not None:
            verdict = "rejected" if labels else "approved"
            self._metrics.console_decisions.labels(verdict=verdict).inc()
            self._metrics.console_decision_time.observe(max(0.0, now - decision.accepted_at))
            log.info("reviewer %s decided %s: %s", user, loop, verdict)
        if result.outcome in ("decided", "repeat") and decision is not None:
            if decision.published_at is None and await self._delivery.deliver(decision):
                decision = await self._store.decision(loop) or decision
            return Decided(result.outcome, decision)
        return Decided(result.outcome, why=result.why)

    async def image(self, user: str, loop: str) -> ItemImage:
        """The image of an item the reviewer holds, fetched with the pipeline's URL rules."""
        item = await self._store.item(loop)
        if item is None:
            return ItemImage("missing", reason="no such item")
        if not item.held_by(user):
            self._metrics.console_refused.labels(reason="forbidden").inc()
            return ItemImage("not_yours", reason="claim the item to see its image")
        if item.review is None:
            return ItemImage(
                "unreadable",
                reason="the item's review record is unreadable: it names no image to show",
            )
        try:
            data, content_type = await self._images.load(item.review.image)
        except ImageUnavailable as exc:
            return ItemImage("unavailable", status=exc.status, reason=exc.reason)
        return ItemImage("shown", data=data, content_type=content_type)

    async def history(self, user: str, query: Mapping[str, str]) -> HistoryView:
        """Leads only: decisions, newest first; ``query`` may name ``reviewer``, ``before``
        (epoch seconds) and ``limit`` (1..500)."""
        if not self._is_lead(user):
            self._metrics.console_refused.labels(reason="forbidden").inc()
            return HistoryView("forbidden", [])
        reviewer = query.get("reviewer") or None
        try:
            before = float(query["before"]) if "before" in query else None
            limit = min(HISTORY_MAX, max(1, int(query.get("limit", str(HISTORY_LIMIT)))))
        except ValueError:
            return HistoryView("bad_query", [])
        found = await self._store.history(limit=limit, before=before, reviewer=reviewer)
        next_before = found[-1].decision.submitted_at if len(found) == limit else None
        return HistoryView("shown", [history_view(entry) for entry in found], reviewer, next_before)
