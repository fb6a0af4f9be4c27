"""The console's state: review items, claims, decisions (an outbox) and sessions, in SQL.

One set of statements, two drivers:

* **SQLite** (stdlib ``sqlite3``; WAL, ``synchronous=FULL``): one file, one connection used from a
  single worker thread so the event loop never blocks. Every transaction is ``BEGIN IMMEDIATE``:
  SQLite serialises writers, so a claim (``UPDATE ... WHERE`` free) cannot be won twice, even by
  two processes on the same host. Not for several pods: SQLite's locks (and WAL's shared memory)
  do not work across machines or on network file systems.
* **PostgreSQL** (``asyncpg``): for several console replicas. Claims are single ``UPDATE``
  statements whose ``WHERE`` re-checks that the item is free after any row-lock wait (READ
  COMMITTED re-evaluates it on the newest row version), and "claim the next item" picks its row
  with ``FOR UPDATE SKIP LOCKED``; decisions lock their item row (``SELECT ... FOR UPDATE``).

Times are epoch seconds passed in by the caller (an injectable clock), never the database's clock.
A decision row holds the exact ``output.json`` and completion event, so delivering it again after
a crash is byte-for-byte the same write and the same event id (idempotent downstream).
"""

# ruff: noqa: S608  (SQL is assembled only from this module's constants; values are always bound)

from __future__ import annotations

import asyncio
import contextlib
import importlib
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import orjson

from service.errors import InputError, ServiceError
from service.review.records import ReviewRecord, parse_review_record

T = TypeVar("T")
PENDING = "pending"
DECIDED = "decided"

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS console_items (
        loop_name TEXT PRIMARY KEY,
        request_id TEXT NOT NULL,
        record TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        deadline DOUBLE PRECISION NOT NULL,
        requeued INTEGER NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        status TEXT NOT NULL,
        claimed_by TEXT,
        claimed_at DOUBLE PRECISION,
        claim_expires DOUBLE PRECISION
    )""",
    "CREATE INDEX IF NOT EXISTS console_items_queue ON console_items (status, deadline)",
    "CREATE INDEX IF NOT EXISTS console_items_claims ON console_items (claimed_by)",
    """CREATE TABLE IF NOT EXISTS console_decisions (
        loop_name TEXT PRIMARY KEY,
        request_id TEXT NOT NULL,
        reviewer TEXT NOT NULL,
        labels TEXT NOT NULL,
        accepted_at DOUBLE PRECISION NOT NULL,
        submitted_at DOUBLE PRECISION NOT NULL,
        output_uri TEXT NOT NULL,
        output TEXT NOT NULL,
        event TEXT NOT NULL,
        published_at DOUBLE PRECISION
    )""",
    "CREATE INDEX IF NOT EXISTS console_decisions_time ON console_decisions (submitted_at)",
    """CREATE TABLE IF NOT EXISTS console_sessions (
        id_hash TEXT PRIMARY KEY,
        username TEXT NOT NULL,
        csrf TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS console_login_failures (
        username TEXT PRIMARY KEY,
        failures INTEGER NOT NULL,
        locked_until DOUBLE PRECISION NOT NULL,
        last_failure DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS console_login_failures_time"
    " ON console_login_failures (last_failure)",
)

_ITEM_COLUMNS = (
    "loop_name, request_id, record, created_at, deadline, status, claimed_by, claimed_at, "
    "claim_expires, received_at, requeued"
)
# An item anyone may claim: waiting, before its deadline, and unclaimed or its claim run out.
_FREE = "status = 'pending' AND deadline > ? AND (claimed_by IS NULL OR claim_expires <= ?)"


class StoreError(ServiceError):
    """The database failed (unreachable, locked too long): retriable, the request can be retried."""

    retriable = True


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
class HistoryEntry:
    decision: Decision
    record: dict[str, Any]
    review: ReviewRecord | None


@dataclass(frozen=True, slots=True)
class Counts:
    pending: int
    overdue: int
    claimed: int
    unpublished: int


@dataclass(frozen=True, slots=True)
class ClaimResult:
    outcome: Literal["claimed", "taken", "gone"]
    item: Item | None  # the item as it is after the attempt (None if it does not exist)


@dataclass(frozen=True, slots=True)
class DecideResult:
    outcome: Literal["decided", "repeat", "conflict", "missing"]
    decision: Decision | None
    why: str = ""


@dataclass(frozen=True, slots=True)
class Session:
    username: str
    csrf: str
    expires_at: float


Built = tuple[str, bytes, bytes]
"""What a decision writes: (output URI, output.json bytes, completion event bytes)."""


class Connection(Protocol):
    async def execute(self, sql: str, *params: Any) -> int: ...
    async def fetch(self, sql: str, *params: Any) -> list[tuple[Any, ...]]: ...


class Driver(Protocol):
    lock_rows: str  # appended to a SELECT that must lock its rows ("" where writers serialise)
    skip_locked: str  # the same, skipping rows another transaction holds

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    def transaction(self) -> contextlib.AbstractAsyncContextManager[Connection]: ...


# -- SQLite ---------------------------------------------------------------------------------------


class SqliteDriver:
    lock_rows = ""
    skip_locked = ""

    def __init__(self, path: Path, *, busy_timeout_ms: int = 10_000) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="console-sqlite")
        self._conn = await self._run(self._connect)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=0)
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        # Switching a new file to WAL ignores the busy timeout: two processes starting together
        # can see "database is locked" here, so retry for a while.
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    conn.close()
                    raise
                time.sleep(0.05)
        conn.execute("PRAGMA synchronous = FULL")  # a decision acknowledged is on disk
        return conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        executor, self._executor = self._executor, None
        if executor is None:
            return
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        executor.shutdown(wait=True)

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise StoreError("the console store is not open")
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn)
        try:
            return await future
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {exc}") from exc

    def _on_conn(self, fn: Callable[[sqlite3.Connection], T]) -> Callable[[], T]:
        def call() -> T:
            if self._conn is None:
                raise sqlite3.ProgrammingError("connection closed")
            return fn(self._conn)

        return call

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self._lock:
            try:
                await self._run(self._on_conn(lambda c: c.execute("BEGIN IMMEDIATE")))
                yield _SqliteConnection(self)
            except BaseException:
                # Queued behind anything still running in the one worker thread, so it always
                # runs before the next transaction's BEGIN, even when this task is cancelled.
                rollback = self._run(self._on_conn(_rollback_if_open))
                with contextlib.suppress(StoreError):
                    await asyncio.shield(rollback)
                raise
            await self._run(self._on_conn(lambda c: c.execute("COMMIT")))


def _rollback_if_open(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


class _SqliteConnection:
    def __init__(self, driver: SqliteDriver) -> None:
        self._driver = driver

    async def execute(self, sql: str, *params: Any) -> int:
        def run(conn: sqlite3.Connection) -> int:
            return conn.execute(sql, params).rowcount

        return await self._driver._run(self._driver._on_conn(run))

    async def fetch(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        def run(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return [tuple(row) for row in conn.execute(sql, params).fetchall()]

        return await self._driver._run(self._driver._on_conn(run))


# -- PostgreSQL -----------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\?")


def to_numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...`` (no statement here has a literal ?)."""
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


def _asyncpg() -> Any:
    """asyncpg, imported only for a postgresql:// store (an optional dependency, untyped)."""
    try:
        return importlib.import_module("asyncpg")
    except ImportError as exc:
        raise StoreError("a postgresql:// store needs asyncpg (pip install asyncpg)") from exc


class PostgresDriver:
    lock_rows = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, dsn: str, *, max_connections: int = 10) -> None:
        self._dsn = dsn
        self._max = max_connections
        self._pool: Any = None

    async def open(self) -> None:
        asyncpg = _asyncpg()
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=self._max, command_timeout=30
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"postgresql: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        asyncpg = _asyncpg()
        if self._pool is None:
            raise StoreError("the console store is not open")
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                yield _PostgresConnection(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreError(f"postgresql: {type(exc).__name__}: {exc}") from exc


class _PostgresConnection:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, *params: Any) -> int:
        status: str = await self._conn.execute(to_numbered(sql), *params)
        last = status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else 0

    async def fetch(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        rows = await self._conn.fetch(to_numbered(sql), *params)
        return [tuple(row) for row in rows]


# -- the store ------------------------------------------------------------------------------------


def _read_record(text: str) -> tuple[dict[str, Any], ReviewRecord | None]:
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
    record, review = _read_record(row[2])
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


def _text(value: str) -> str:
    """``value`` as a TEXT column can hold it: PostgreSQL refuses NUL, which any id may carry."""
    return value.replace("\x00", "\ufffd")


_DECISION_COLUMNS = (
    "loop_name, request_id, reviewer, labels, accepted_at, submitted_at, output_uri, output, "
    "event, published_at"
)


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


class ConsoleStore:
    """Everything the console remembers; each method is one transaction."""

    def __init__(self, driver: Driver) -> None:
        self._db = driver

    @classmethod
    def sqlite(cls, path: Path) -> ConsoleStore:
        return cls(SqliteDriver(path))

    @classmethod
    def postgresql(cls, dsn: str) -> ConsoleStore:
        return cls(PostgresDriver(dsn))

    async def open(self) -> None:
        await self._db.open()
        async with self._db.transaction() as tx:
            if isinstance(self._db, PostgresDriver):
                # Replicas starting together must not race on CREATE TABLE IF NOT EXISTS.
                await tx.fetch("SELECT pg_advisory_xact_lock(7366438)")
            for statement in SCHEMA:
                await tx.execute(statement)

    async def close(self) -> None:
        await self._db.close()

    async def ping(self) -> None:
        async with self._db.transaction() as tx:
            await tx.fetch("SELECT 1")

    # -- intake -----------------------------------------------------------------------------

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
        """Store a review record; a redelivery changes nothing, a requeue renews the deadline.

        A decided item is never reopened: its completion event is already on its way to the sink.
        """
        async with self._db.transaction() as tx:
            changed = await tx.execute(
                "INSERT INTO console_items (loop_name, request_id, record, created_at, deadline,"
                " requeued, received_at, status) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending')"
                " ON CONFLICT (loop_name) DO UPDATE SET record = excluded.record,"
                " created_at = excluded.created_at, deadline = excluded.deadline,"
                " requeued = excluded.requeued"
                " WHERE console_items.status = 'pending'"
                " AND excluded.requeued > console_items.requeued",
                loop_name,
                _text(request_id),
                record.decode(),
                float(created_at),
                float(deadline),
                int(requeued),
                float(now),
            )
        return changed > 0

    # -- the queue --------------------------------------------------------------------------

    async def queue(self, now: float, limit: int = 200) -> list[Item]:
        async with self._db.transaction() as tx:
            rows = await tx.fetch(
                f"SELECT {_ITEM_COLUMNS} FROM console_items"
                " WHERE status = 'pending' AND deadline > ? ORDER BY deadline, loop_name LIMIT ?",
                float(now),
                int(limit),
            )
        return [_item(row) for row in rows]

    async def item(self, loop_name: str) -> Item | None:
        async with self._db.transaction() as tx:
            rows = await tx.fetch(
                f"SELECT {_ITEM_COLUMNS} FROM console_items WHERE loop_name = ?", loop_name
            )
        return _item(rows[0]) if rows else None

    async def counts(self, now: float) -> Counts:
        async with self._db.transaction() as tx:
            rows = await tx.fetch(
                "SELECT"
                " COALESCE(SUM(CASE WHEN deadline > ? THEN 1 ELSE 0 END), 0),"
                " COALESCE(SUM(CASE WHEN deadline <= ? THEN 1 ELSE 0 END), 0),"
                " COALESCE(SUM(CASE WHEN deadline > ? AND claimed_by IS NOT NULL"
                " AND claim_expires > ? THEN 1 ELSE 0 END), 0)"
                " FROM console_items WHERE status = 'pending'",
                float(now),
                float(now),
                float(now),
                float(now),
            )
            unpublished = await tx.fetch(
                "SELECT COUNT(*) FROM console_decisions WHERE published_at IS NULL"
            )
        pending, overdue, claimed = rows[0]
        return Counts(int(pending), int(overdue), int(claimed), int(unpublished[0][0]))

    async def claim(self, loop_name: str, user: str, now: float, ttl_s: float) -> ClaimResult:
        """Claim one item, or renew one's own claim; releases the reviewer's other claims."""
        async with self._db.transaction() as tx:
            won = await tx.execute(
                "UPDATE console_items SET claimed_by = ?,"
                " claimed_at = CASE WHEN claimed_by = ? THEN claimed_at ELSE ? END,"
                " claim_expires = ?"
                " WHERE loop_name = ? AND status = 'pending' AND deadline > ?"
                " AND (claimed_by IS NULL OR claimed_by = ? OR claim_expires <= ?)",
                user,
                user,
                float(now),
                float(now + ttl_s),
                loop_name,
                float(now),
                user,
                float(now),
            )
            if won:
                await self._release_others(tx, user, loop_name)
            rows = await tx.fetch(
                f"SELECT {_ITEM_COLUMNS} FROM console_items WHERE loop_name = ?", loop_name
            )
        item = _item(rows[0]) if rows else None
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
        for _ in range(5):  # PostgreSQL: the picked row may be taken between pick and update
            async with self._db.transaction() as tx:
                rows = await tx.fetch(
                    "UPDATE console_items SET claimed_by = ?, claimed_at = ?, claim_expires = ?"
                    " WHERE loop_name = (SELECT loop_name FROM console_items"
                    f" WHERE {_FREE} AND loop_name <> ? ORDER BY deadline, loop_name LIMIT 1"
                    f"{self._db.skip_locked}) AND {_FREE} RETURNING {_ITEM_COLUMNS}",
                    user,
                    float(now),
                    float(now + ttl_s),
                    float(now),
                    float(now),
                    skip or "",
                    float(now),
                    float(now),
                )
                if rows:
                    item = _item(rows[0])
                    await self._release_others(tx, user, item.loop_name)
                    return item
                left = await tx.fetch(
                    f"SELECT COUNT(*) FROM console_items WHERE {_FREE} AND loop_name <> ?",
                    float(now),
                    float(now),
                    skip or "",
                )
            if not left[0][0]:
                return None
        return None

    async def _release_others(self, tx: Connection, user: str, keep: str) -> None:
        await tx.execute(
            "UPDATE console_items SET claimed_by = NULL, claimed_at = NULL, claim_expires = NULL"
            " WHERE claimed_by = ? AND loop_name <> ? AND status = 'pending'",
            user,
            keep,
        )

    async def release(self, loop_name: str, user: str) -> bool:
        async with self._db.transaction() as tx:
            released = await tx.execute(
                "UPDATE console_items SET claimed_by = NULL, claimed_at = NULL,"
                " claim_expires = NULL WHERE loop_name = ? AND claimed_by = ?"
                " AND status = 'pending'",
                loop_name,
                user,
            )
        return released > 0

    # -- decisions (the outbox) -------------------------------------------------------------

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
        async with self._db.transaction() as tx:
            rows = await tx.fetch(
                f"SELECT {_ITEM_COLUMNS} FROM console_items WHERE loop_name = ?"
                f"{self._db.lock_rows}",
                loop_name,
            )
            if not rows:
                return DecideResult("missing", None, "no such item")
            item = _item(rows[0])
            if item.status == DECIDED:
                existing = await self._decision(tx, loop_name)
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
            await tx.execute(
                f"INSERT INTO console_decisions ({_DECISION_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                loop_name,
                item.request_id,
                user,
                orjson.dumps(labels).decode(),
                float(accepted),
                float(now),
                uri,
                output.decode(),
                event.decode(),
            )
            await tx.execute(
                "UPDATE console_items SET status = 'decided', claim_expires = NULL"
                " WHERE loop_name = ?",
                loop_name,
            )
            decision = await self._decision(tx, loop_name)
        return DecideResult("decided", decision)

    async def _decision(self, tx: Connection, loop_name: str) -> Decision | None:
        rows = await tx.fetch(
            f"SELECT {_DECISION_COLUMNS} FROM console_decisions WHERE loop_name = ?", loop_name
        )
        return _decision(rows[0]) if rows else None

    async def decision(self, loop_name: str) -> Decision | None:
        async with self._db.transaction() as tx:
            return await self._decision(tx, loop_name)

    async def mark_published(self, loop_name: str, now: float) -> None:
        async with self._db.transaction() as tx:
            await tx.execute(
                "UPDATE console_decisions SET published_at = ?"
                " WHERE loop_name = ? AND published_at IS NULL",
                float(now),
                loop_name,
            )

    async def unpublished(self, submitted_before: float, limit: int = 100) -> list[Decision]:
        async with self._db.transaction() as tx:
            rows = await tx.fetch(
                f"SELECT {_DECISION_COLUMNS} FROM console_decisions"
                " WHERE published_at IS NULL AND submitted_at < ?"
                " ORDER BY submitted_at LIMIT ?",
                float(submitted_before),
                int(limit),
            )
        return [_decision(row) for row in rows]

    async def history(
        self, *, limit: int, before: float | None = None, reviewer: str | None = None
    ) -> list[HistoryEntry]:
        where = ["d.submitted_at < ?"]
        params: list[Any] = [float(before) if before is not None else float("inf")]
        if reviewer is not None:
            where.append("d.reviewer = ?")
            params.append(reviewer)
        columns = ", ".join(f"d.{c.strip()}" for c in _DECISION_COLUMNS.split(","))
        async with self._db.transaction() as tx:
            rows = await tx.fetch(
                f"SELECT {columns}, i.record FROM console_decisions d"
                " JOIN console_items i ON i.loop_name = d.loop_name"
                f" WHERE {' AND '.join(where)} ORDER BY d.submitted_at DESC LIMIT ?",
                *params,
                int(limit),
            )
        return [HistoryEntry(_decision(row[:-1]), *_read_record(row[-1])) for row in rows]

    # -- sessions ---------------------------------------------------------------------------

    async def create_session(
        self, id_hash: str, username: str, csrf: str, now: float, ttl_s: float
    ) -> None:
        async with self._db.transaction() as tx:
            await tx.execute("DELETE FROM console_sessions WHERE expires_at <= ?", float(now))
            await tx.execute(
                "INSERT INTO console_sessions (id_hash, username, csrf, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?)",
                id_hash,
                username,
                csrf,
                float(now),
                float(now + ttl_s),
            )

    async def session(self, id_hash: str, now: float) -> Session | None:
        async with self._db.transaction() as tx:
            rows = await tx.fetch(
                "SELECT username, csrf, expires_at FROM console_sessions"
                " WHERE id_hash = ? AND expires_at > ?",
                id_hash,
                float(now),
            )
        return Session(rows[0][0], rows[0][1], float(rows[0][2])) if rows else None

    async def delete_session(self, id_hash: str) -> None:
        async with self._db.transaction() as tx:
            await tx.execute("DELETE FROM console_sessions WHERE id_hash = ?", id_hash)

    # -- login attempts (shared, so a guesser gets the same few tries however many replicas) --

    async def reserve_login_attempt(
        self, username: str, now: float, *, max_failures: int, lockout_s: float, forget_s: float
    ) -> int | None:
        """Reserve the right to check one password for ``username``; None while it is locked out.

        The attempt counts as a failure from the moment it is reserved, before the password is
        checked, until :meth:`clear_login_failures` (the password was right) ends the run. So a
        burst of logins, at one replica or many, cannot all be checked: reserving is one atomic
        upsert (SQLite serialises writers; PostgreSQL's ``ON CONFLICT DO UPDATE`` locks the row
        and re-checks the ``WHERE`` on its newest version), and the ``max_failures``-th
        reservation in a row, and every later one, locks the name for ``lockout_s``. A run older
        than ``forget_s`` is forgotten (which also bounds the table under a spray of names).
        Returns the attempt's number in the run.
        """
        async with self._db.transaction() as tx:
            await tx.execute(
                "DELETE FROM console_login_failures WHERE last_failure <= ? AND locked_until <= ?",
                float(now - forget_s),
                float(now),
            )
            rows = await tx.fetch(
                "INSERT INTO console_login_failures"
                " (username, failures, locked_until, last_failure) VALUES (?, 1, ?, ?)"
                " ON CONFLICT (username) DO UPDATE SET"
                " failures = console_login_failures.failures + 1,"
                " locked_until = CASE WHEN console_login_failures.failures + 1 >= ?"
                " THEN CAST(? AS DOUBLE PRECISION) ELSE CAST(0 AS DOUBLE PRECISION) END,"
                " last_failure = ?"
                " WHERE console_login_failures.locked_until <= ?"
                " RETURNING failures",
                _text(username),
                float(now + lockout_s) if max_failures <= 1 else 0.0,
                float(now),
                int(max_failures),
                float(now + lockout_s),
                float(now),
                float(now),
            )
        return int(rows[0][0]) if rows else None

    async def clear_login_failures(self, username: str) -> None:
        async with self._db.transaction() as tx:
            await tx.execute(
                "DELETE FROM console_login_failures WHERE username = ?", _text(username)
            )


def open_store(kind: str, *, path: Path | None, dsn: str | None) -> ConsoleStore:
    if kind == "sqlite":
        assert path is not None
        return ConsoleStore.sqlite(path)
    assert dsn is not None
    return ConsoleStore.postgresql(dsn)


__all__ = [
    "ClaimResult",
    "ConsoleStore",
    "Counts",
    "DecideResult",
    "Decision",
    "HistoryEntry",
    "Item",
    "Session",
    "StoreError",
    "open_store",
]
