"""Reviewers' decisions, which double as the outbox, and the history of them.

A decision row holds the exact ``output.json`` and completion event, so delivering it again after
a crash is byte-for-byte the same write and the same event id (idempotent downstream). Deciding
locks the item's row (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite serialises writers), so an
item gets one decision however many replicas are asked at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service.console.storage.database import Database
from service.console.storage.items import (
    DECIDED,
    Item,
    mark_decided,
    read_record,
    select_item,
)
from service.console.storage.tables import decisions, items
from service.review.records import ReviewRecord

Built = tuple[str, bytes, bytes]
"""What a decision writes: (output URI, output.json bytes, completion event bytes)."""

_COLUMNS = (
    decisions.c.loop_name,
    decisions.c.request_id,
    decisions.c.reviewer,
    decisions.c.labels,
    decisions.c.accepted_at,
    decisions.c.submitted_at,
    decisions.c.output_uri,
    decisions.c.output,
    decisions.c.event,
    decisions.c.published_at,
)


@dataclass(frozen=True, slots=True)
class Decision:
    loop_name: str
    request_id: str
    reviewer: str
    labels: list[dict[str, str]]
    accepted_at: float
    submitted_at: float
    output_uri: str
    output: bytes
    event: bytes
    published_at: float | None


@dataclass(frozen=True, slots=True)
class DecideResult:
    outcome: Literal["decided", "repeat", "conflict", "missing"]
    decision: Decision | None
    why: str = ""


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    decision: Decision
    record: dict[str, Any]
    review: ReviewRecord | None


def _decision(row: Sequence[Any]) -> Decision:
    return Decision(
        loop_name=row[0],
        request_id=row[1],
        reviewer=row[2],
        labels=orjson.loads(row[3]),
        accepted_at=float(row[4]),
        submitted_at=float(row[5]),
        output_uri=row[6],
        output=row[7].encode(),
        event=row[8].encode(),
        published_at=None if row[9] is None else float(row[9]),
    )


_LOOP = sa.bindparam("loop", type_=sa.Text)
_SELECT = sa.select(*_COLUMNS).where(decisions.c.loop_name == _LOOP)
_INSERT = sa.insert(decisions)
_COUNT_UNPUBLISHED = (
    sa.select(sa.func.count()).select_from(decisions).where(decisions.c.published_at.is_(None))
)
_MARK_PUBLISHED = (
    sa.update(decisions)
    .where(decisions.c.loop_name == _LOOP, decisions.c.published_at.is_(None))
    .values(published_at=sa.bindparam("now", type_=sa.DOUBLE_PRECISION))
)
_UNPUBLISHED = (
    sa.select(*_COLUMNS)
    .where(
        decisions.c.published_at.is_(None),
        decisions.c.submitted_at < sa.bindparam("before", type_=sa.DOUBLE_PRECISION),
    )
    .order_by(decisions.c.submitted_at)
    .limit(sa.bindparam("limit", type_=sa.Integer))
)


async def _select(conn: AsyncConnection, loop_name: str) -> Decision | None:
    row = (await conn.execute(_SELECT, {"loop": loop_name})).first()
    return _decision(row) if row is not None else None


async def count_unpublished(conn: AsyncConnection) -> int:
    return int((await conn.execute(_COUNT_UNPUBLISHED)).scalar_one())


class Decisions:
    """Decisions and the outbox; each method is one transaction."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def decide(
        self,
        loop_name: str,
        user: str,
        labels: list[dict[str, str]],
        now: float,
        build: Callable[[Item, float], Built],
    ) -> DecideResult:
        """Record a reviewer's answer once; the same reviewer asking again gets the first answer.

        ``build(item, accepted_at)`` makes the output.json and the event inside the transaction,
        so what is stored is exactly what will be delivered (and re-delivered).
        """
        async with self._db.transaction() as conn:
            item = await select_item(conn, loop_name, lock=True)
            if item is None:
                return DecideResult("missing", None, "no such item")
            if item.status == DECIDED:
                existing = await _select(conn, loop_name)
                if existing is not None and existing.reviewer == user:
                    return DecideResult("repeat", existing)
                who = existing.reviewer if existing else "someone"
                return DecideResult("conflict", existing, f"already decided by {who}")
            if item.claimed_by != user:
                holder = item.claimed_by if item.claimed_by_other(user, now) else None
                why = f"claimed by {holder}" if holder else "claim it first"
                return DecideResult("conflict", None, why)
            if item.deadline <= now:
                return DecideResult(
                    "conflict", None, "past its deadline: the sink applies the fallback"
                )
            accepted = item.claimed_at if item.claimed_at is not None else now
            uri, output, event = build(item, accepted)
            row = {
                "loop_name": loop_name,
                "request_id": item.request_id,
                "reviewer": user,
                "labels": orjson.dumps(labels).decode(),
                "accepted_at": float(accepted),
                "submitted_at": float(now),
                "output_uri": uri,
                "output": output.decode(),
                "event": event.decode(),
                "published_at": None,
            }
            await conn.execute(_INSERT, row)
            await mark_decided(conn, loop_name)
            decision = await _select(conn, loop_name)
        return DecideResult("decided", decision)

    async def get(self, loop_name: str) -> Decision | None:
        async with self._db.transaction() as conn:
            return await _select(conn, loop_name)

    async def mark_published(self, loop_name: str, now: float) -> None:
        async with self._db.transaction() as conn:
            await conn.execute(_MARK_PUBLISHED, {"loop": loop_name, "now": float(now)})

    async def unpublished(self, submitted_before: float, limit: int = 100) -> list[Decision]:
        params = {"before": float(submitted_before), "limit": int(limit)}
        async with self._db.transaction() as conn:
            rows = (await conn.execute(_UNPUBLISHED, params)).all()
        return [_decision(row) for row in rows]

    async def history(
        self, *, limit: int, before: float | None = None, reviewer: str | None = None
    ) -> list[HistoryEntry]:
        """Newest first, with the record each decision answered."""
        query = (
            sa.select(*_COLUMNS, items.c.record)
            .join(items, items.c.loop_name == decisions.c.loop_name)
            .order_by(decisions.c.submitted_at.desc())
            .limit(int(limit))
        )
        if before is not None:
            query = query.where(decisions.c.submitted_at < before)
        if reviewer is not None:
            query = query.where(decisions.c.reviewer == reviewer)
        async with self._db.transaction() as conn:
            rows = (await conn.execute(query)).all()
        return [HistoryEntry(_decision(row[:-1]), *read_record(row[-1])) for row in rows]
