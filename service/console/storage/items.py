"""Review items and their claims: the queue reviewers work from.

A claim is one ``UPDATE ... WHERE`` the item is free. On SQLite writers are serialised, so it
cannot be won twice; on PostgreSQL (READ COMMITTED) the ``WHERE`` is re-checked on the newest
row version after any row-lock wait, and "claim the next item" picks its row with
``FOR UPDATE SKIP LOCKED``. Times are epoch seconds from the caller's clock, never the database's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service.console.storage.database import Database, nul_free
from service.console.storage.tables import items
from service.errors import InputError
from service.review.records import ReviewRecord, parse_review_record

PENDING = "pending"
DECIDED = "decided"
CLAIM_NEXT_ATTEMPTS = 5  # PostgreSQL: the picked row may be taken between pick and update

_COLUMNS = (
    items.c.loop_name,
    items.c.request_id,
    items.c.record,
    items.c.created_at,
    items.c.deadline,
    items.c.status,
    items.c.claimed_by,
    items.c.claimed_at,
    items.c.claim_expires,
    items.c.received_at,
    items.c.requeued,
)


@dataclass(frozen=True, slots=True)
class Item:
    loop_name: str
    request_id: str
    record: dict[str, Any]  # the stored record as JSON ({} if it is not a JSON object)
    review: ReviewRecord | None  # the record parsed; None: unreadable (stored before validation)
    created_at: float
    deadline: float
    status: str
    claimed_by: str | None
    claimed_at: float | None
    claim_expires: float | None
    received_at: float
    requeued: int

    def claimed_by_other(self, user: str, now: float) -> bool:
        return (
            self.claimed_by is not None
            and self.claimed_by != user
            and (self.claim_expires or 0) > now
        )

    def held_by(self, user: str) -> bool:
        """The reviewer's claim, possibly run out, but nobody else has claimed the item since."""
        return self.status == PENDING and self.claimed_by == user


@dataclass(frozen=True, slots=True)
class ClaimResult:
    outcome: Literal["claimed", "taken", "gone"]
    item: Item | None  # the item as it is after the attempt (None if it does not exist)


@dataclass(frozen=True, slots=True)
class QueueCounts:
    pending: int
    overdue: int
    claimed: int


def read_record(text: str) -> tuple[dict[str, Any], ReviewRecord | None]:
    """A stored record, parsed like intake parses it; rows stored before intake validated
    records (or by hand) come back unreadable instead of failing whoever reads them."""
    data = text.encode()
    try:
        review = parse_review_record(data, max_bytes=len(data))
    except InputError:
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError:
            raw = None
        return (raw if isinstance(raw, dict) else {}), None
    return review.raw, review


def _item(row: Sequence[Any]) -> Item:
    record, review = read_record(row[2])
    return Item(
        loop_name=row[0],
        request_id=row[1],
        record=record,
        review=review,
        created_at=float(row[3]),
        deadline=float(row[4]),
        status=row[5],
        claimed_by=row[6],
        claimed_at=None if row[7] is None else float(row[7]),
        claim_expires=None if row[8] is None else float(row[8]),
        received_at=float(row[9]),
        requeued=int(row[10]),
    )


# Statements are built once, with named parameters, so SQLAlchemy compiles each one once.
_NOW = sa.bindparam("now", type_=sa.DOUBLE_PRECISION)
_LOOP = sa.bindparam("loop", type_=sa.Text)
_USER = sa.bindparam("user", type_=sa.Text)

# Anyone may claim the item: waiting, before its deadline, unclaimed or its claim run out.
_FREE = sa.and_(
    items.c.status == PENDING,
    items.c.deadline > _NOW,
    sa.or_(items.c.claimed_by.is_(None), items.c.claim_expires <= _NOW),
)
_UNCLAIMED = {"claimed_by": None, "claimed_at": None, "claim_expires": None}

_SELECT = sa.select(*_COLUMNS).where(items.c.loop_name == _LOOP)
_SELECT_FOR_UPDATE = _SELECT.with_for_update()
_MARK_DECIDED = (
    sa.update(items).where(items.c.loop_name == _LOOP).values(status=DECIDED, claim_expires=None)
)


def _count(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
    return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)


_COUNTS = sa.select(
    _count(items.c.deadline > _NOW),
    _count(items.c.deadline <= _NOW),
    _count(
        sa.and_(
            items.c.deadline > _NOW,
            items.c.claimed_by.is_not(None),
            items.c.claim_expires > _NOW,
        )
    ),
).where(items.c.status == PENDING)
_QUEUE = (
    sa.select(*_COLUMNS)
    .where(items.c.status == PENDING, items.c.deadline > _NOW)
    .order_by(items.c.deadline, items.c.loop_name)
    .limit(sa.bindparam("limit", type_=sa.Integer))
)
_CLAIM = (
    sa.update(items)
    .where(
        items.c.loop_name == _LOOP,
        items.c.status == PENDING,
        items.c.deadline > _NOW,
        sa.or_(
            items.c.claimed_by.is_(None),
            items.c.claimed_by == _USER,
            items.c.claim_expires <= _NOW,
        ),
    )
    .values(
        claimed_by=_USER,
        claimed_at=sa.case((items.c.claimed_by == _USER, items.c.claimed_at), else_=_NOW),
        claim_expires=sa.bindparam("expires", type_=sa.DOUBLE_PRECISION),
    )
)
_SKIP = items.c.loop_name != sa.bindparam("skip", type_=sa.Text)
_PICK_NEXT = (
    sa.select(items.c.loop_name)
    .where(_FREE, _SKIP)
    .order_by(items.c.deadline, items.c.loop_name)
    .limit(1)
    .with_for_update(skip_locked=True)
    .scalar_subquery()
)
_CLAIM_NEXT = (
    sa.update(items)
    .where(items.c.loop_name == _PICK_NEXT, _FREE)
    .values(
        claimed_by=_USER,
        claimed_at=_NOW,
        claim_expires=sa.bindparam("expires", type_=sa.DOUBLE_PRECISION),
    )
    .returning(*_COLUMNS)
)
_COUNT_FREE = sa.select(sa.func.count()).select_from(items).where(_FREE, _SKIP)
_RELEASE = (
    sa.update(items)
    .where(items.c.loop_name == _LOOP, items.c.claimed_by == _USER, items.c.status == PENDING)
    .values(_UNCLAIMED)
)
_RELEASE_OTHERS = (
    sa.update(items)
    .where(items.c.claimed_by == _USER, items.c.loop_name != _LOOP, items.c.status == PENDING)
    .values(_UNCLAIMED)
)


async def select_item(conn: AsyncConnection, loop_name: str, *, lock: bool = False) -> Item | None:
    """The item in this transaction; ``lock``: hold its row until the transaction ends."""
    query = _SELECT_FOR_UPDATE if lock else _SELECT
    row = (await conn.execute(query, {"loop": loop_name})).first()
    return _item(row) if row is not None else None


async def mark_decided(conn: AsyncConnection, loop_name: str) -> None:
    await conn.execute(_MARK_DECIDED, {"loop": loop_name})


async def queue_counts(conn: AsyncConnection, now: float) -> QueueCounts:
    row = (await conn.execute(_COUNTS, {"now": float(now)})).one()
    return QueueCounts(int(row[0]), int(row[1]), int(row[2]))


class Items:
    """The review items; each method is one transaction."""

    def __init__(self, database: Database) -> None:
        self._db = database
        insert = database.insert(items)
        new = insert.excluded
        # A redelivery (same ``requeued``) changes nothing; a decided item is never reopened.
        self._upsert = insert.on_conflict_do_update(
            index_elements=[items.c.loop_name],
            set_={
                "record": new.record,
                "created_at": new.created_at,
                "deadline": new.deadline,
                "requeued": new.requeued,
            },
            where=sa.and_(items.c.status == PENDING, new.requeued > items.c.requeued),
        )

    async def upsert(
        self,
        *,
        loop_name: str,
        request_id: str,
        record: bytes,
        created_at: float,
        deadline: float,
        requeued: int,
        now: float,
    ) -> bool:
        """Store a review record; a redelivery changes nothing, a requeue renews the deadline.

        A decided item is never reopened: its completion event is already on its way to the sink.
        """
        row = {
            "loop_name": loop_name,
            "request_id": nul_free(request_id),
            "record": record.decode(),
            "created_at": float(created_at),
            "deadline": float(deadline),
            "requeued": int(requeued),
            "received_at": float(now),
            "status": PENDING,
        }
        async with self._db.transaction() as conn:
            changed = (await conn.execute(self._upsert, row)).rowcount
        return changed > 0

    async def queue(self, now: float, limit: int = 200) -> list[Item]:
        async with self._db.transaction() as conn:
            rows = (await conn.execute(_QUEUE, {"now": float(now), "limit": int(limit)})).all()
        return [_item(row) for row in rows]

    async def get(self, loop_name: str) -> Item | None:
        async with self._db.transaction() as conn:
            return await select_item(conn, loop_name)

    async def claim(self, loop_name: str, user: str, now: float, ttl_s: float) -> ClaimResult:
        """Claim one item, or renew one's own claim; releases the reviewer's other claims."""
        params = {
            "loop": loop_name,
            "user": user,
            "now": float(now),
            "expires": float(now + ttl_s),
        }
        async with self._db.transaction() as conn:
            won = (await conn.execute(_CLAIM, params)).rowcount > 0
            if won:
                await conn.execute(_RELEASE_OTHERS, {"user": user, "loop": loop_name})
            item = await select_item(conn, loop_name)
        if won:
            return ClaimResult("claimed", item)
        free_later = item is not None and item.status == PENDING and item.deadline > now
        if free_later and item is not None and item.claimed_by_other(user, now):
            return ClaimResult("taken", item)
        return ClaimResult("gone", item)

    async def claim_next(
        self, user: str, now: float, ttl_s: float, *, skip: str | None = None
    ) -> Item | None:
        """Claim the free item with the nearest deadline (other than ``skip``), if any."""
        params = {
            "user": user,
            "now": float(now),
            "expires": float(now + ttl_s),
            "skip": skip or "",
        }
        for _ in range(CLAIM_NEXT_ATTEMPTS):
            async with self._db.transaction() as conn:
                row = (await conn.execute(_CLAIM_NEXT, params)).first()
                if row is not None:
                    item = _item(row)
                    await conn.execute(_RELEASE_OTHERS, {"user": user, "loop": item.loop_name})
                    return item
                free = (await conn.execute(_COUNT_FREE, params)).scalar_one()
            if not free:
                return None
        return None

    async def release(self, loop_name: str, user: str) -> bool:
        async with self._db.transaction() as conn:
            result = await conn.execute(_RELEASE, {"loop": loop_name, "user": user})
        return result.rowcount > 0
