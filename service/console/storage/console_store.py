"""Everything the console remembers, behind one object: it opens the database, brings the schema
up to date, and answers each call with one transaction of the repository concerned."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import sqlalchemy as sa

from service.console.storage.database import Database
from service.console.storage.decisions import (
    Built,
    DecideResult,
    Decision,
    Decisions,
    HistoryEntry,
    count_unpublished,
)
from service.console.storage.items import ClaimResult, Item, Items, queue_counts
from service.console.storage.logins import LoginAttempts
from service.console.storage.migrate import migrate
from service.console.storage.sessions import Session, Sessions


@dataclass(frozen=True, slots=True)
class Counts:
    pending: int
    overdue: int
    claimed: int
    unpublished: int


class ConsoleStore:
    """The console's state (items and claims, decisions and the outbox, sessions, login
    attempts) in SQLite or PostgreSQL; each method is one transaction."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._items = Items(database)
        self._decisions = Decisions(database)
        self._sessions = Sessions(database)
        self._logins = LoginAttempts(database)

    @classmethod
    def sqlite(cls, path: Path) -> ConsoleStore:
        return cls(Database.sqlite(path))

    @classmethod
    def postgresql(cls, dsn: str) -> ConsoleStore:
        return cls(Database.postgresql(dsn))

    async def open(self) -> None:
        """Connect and migrate the schema to the newest version (replicas take turns)."""
        await self._db.open()
        try:
            await migrate(self._db)
        except BaseException:
            await self._db.close()
            raise

    async def close(self) -> None:
        await self._db.close()

    async def ping(self) -> None:
        async with self._db.transaction() as conn:
            await conn.execute(sa.select(1))

    # -- intake and the queue -------------------------------------------------------------------

    async def upsert_item(
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
        """Store a review record; a redelivery changes nothing, a requeue renews the deadline."""
        return await self._items.upsert(
            loop_name=loop_name,
            request_id=request_id,
            record=record,
            created_at=created_at,
            deadline=deadline,
            requeued=requeued,
            now=now,
        )

    async def queue(self, now: float, limit: int = 200) -> list[Item]:
        return await self._items.queue(now, limit)

    async def item(self, loop_name: str) -> Item | None:
        return await self._items.get(loop_name)

    async def counts(self, now: float) -> Counts:
        async with self._db.transaction() as conn:
            queue = await queue_counts(conn, now)
            unpublished = await count_unpublished(conn)
        return Counts(queue.pending, queue.overdue, queue.claimed, unpublished)

    async def claim(self, loop_name: str, user: str, now: float, ttl_s: float) -> ClaimResult:
        """Claim one item, or renew one's own claim; releases the reviewer's other claims."""
        return await self._items.claim(loop_name, user, now, ttl_s)

    async def claim_next(
        self, user: str, now: float, ttl_s: float, *, skip: str | None = None
    ) -> Item | None:
        """Claim the free item with the nearest deadline (other than ``skip``), if any."""
        return await self._items.claim_next(user, now, ttl_s, skip=skip)

    async def release(self, loop_name: str, user: str) -> bool:
        return await self._items.release(loop_name, user)

    # -- decisions (the outbox) -----------------------------------------------------------------

    async def decide(
        self,
        loop_name: str,
        user: str,
        labels: list[dict[str, str]],
        now: float,
        build: Callable[[Item, float], Built],
    ) -> DecideResult:
        """Record a reviewer's answer once (see :meth:`Decisions.decide`)."""
        return await self._decisions.decide(loop_name, user, labels, now, build)

    async def decision(self, loop_name: str) -> Decision | None:
        return await self._decisions.get(loop_name)

    async def mark_published(self, loop_name: str, now: float) -> None:
        await self._decisions.mark_published(loop_name, now)

    async def unpublished(self, submitted_before: float, limit: int = 100) -> list[Decision]:
        return await self._decisions.unpublished(submitted_before, limit)

    async def history(
        self, *, limit: int, before: float | None = None, reviewer: str | None = None
    ) -> list[HistoryEntry]:
        return await self._decisions.history(limit=limit, before=before, reviewer=reviewer)

    # -- sessions and login attempts ------------------------------------------------------------

    async def create_session(
        self, id_hash: str, username: str, csrf: str, now: float, ttl_s: float
    ) -> None:
        await self._sessions.create(id_hash, username, csrf, now, ttl_s)

    async def session(self, id_hash: str, now: float) -> Session | None:
        return await self._sessions.get(id_hash, now)

    async def delete_session(self, id_hash: str) -> None:
        await self._sessions.delete(id_hash)

    async def reserve_login_attempt(
        self, username: str, now: float, *, max_failures: int, lockout_s: float, forget_s: float
    ) -> int | None:
        """Reserve one password check; None while the name is locked out (see
        :meth:`LoginAttempts.reserve`)."""
        return await self._logins.reserve(
            username, now, max_failures=max_failures, lockout_s=lockout_s, forget_s=forget_s
        )

    async def clear_login_failures(self, username: str) -> None:
        await self._logins.clear(username)


def open_store(
    kind: Literal["sqlite", "postgresql"], *, path: Path | None, dsn: str | None
) -> ConsoleStore:
    """The store ``MODERATION_CONSOLE_DATABASE`` names (not yet opened)."""
    if kind == "sqlite":
        assert path is not None
        return ConsoleStore.sqlite(path)
    assert dsn is not None
    return ConsoleStore.postgresql(dsn)
