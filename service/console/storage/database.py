"""The connection to the console's database: an async SQLAlchemy engine, one transaction per
call, and the one boundary where a driver's errors become :class:`StoreError`.

Every difference between the two databases lives here, so the repositories stay agnostic:

* **SQLite** (``aiosqlite``; WAL, ``synchronous=FULL``): one file and one connection per store,
  its transactions taken in turn. Every transaction is ``BEGIN IMMEDIATE``: SQLite serialises
  writers, so a claim (``UPDATE ... WHERE`` free) cannot be won twice, even by two processes on
  the same host. Not for several pods: SQLite's locks (and WAL's shared memory) do not work
  across machines or on network file systems.
* **PostgreSQL** (``asyncpg``, given the DSN unchanged): a pool, for several console replicas.
  ``SELECT ... FOR UPDATE [SKIP LOCKED]`` locks rows here and compiles to nothing on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import aiosqlite
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import AdaptedConnection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from service.errors import ServiceError

Kind = Literal["sqlite", "postgresql"]
Upsert = sqlite.Insert | postgresql.Insert

SQLITE_BUSY_TIMEOUT_S = 10.0
POSTGRES_MAX_CONNECTIONS = 10
POSTGRES_COMMAND_TIMEOUT_S = 30.0
_MIGRATION_LOCK_KEY = 7366438  # the advisory lock replicas take while migrating (PostgreSQL)


class StoreError(ServiceError):
    """The database failed (unreachable, locked too long): retriable, the request can be retried."""

    retriable = True


# What a database failure can surface as: SQLAlchemy wraps the drivers' errors while executing
# (DBAPIError) and times out waiting for a pooled connection; the WAL switch (sqlite3's errors)
# and connecting (OSError, a timeout) reach us unwrapped. SQLAlchemy's other errors are bugs in
# a statement, not an outage: they stay what they are.
_DRIVER_ERRORS = (
    sa.exc.DBAPIError,
    sa.exc.TimeoutError,
    sa.exc.DisconnectionError,
    sqlite3.Error,
    OSError,
    TimeoutError,
)


def _asyncpg() -> Any:
    """asyncpg, imported only for a postgresql:// store (an optional dependency, untyped)."""
    try:
        return importlib.import_module("asyncpg")
    except ImportError as exc:
        raise StoreError("a postgresql:// store needs asyncpg (pip install asyncpg)") from exc


class Database:
    """One database, opened by :meth:`open` and closed by :meth:`close` (both idempotent)."""

    def __init__(
        self,
        kind: Kind,
        make_engine: Callable[[], AsyncEngine],
        *,
        prepare: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.kind: Kind = kind
        self._make_engine = make_engine
        self._prepare = prepare  # what the database needs before the engine connects
        self._engine: AsyncEngine | None = None
        # SQLite: this process's transactions queue here rather than in SQLite's busy handler.
        self._turns: contextlib.AbstractAsyncContextManager[Any] = (
            asyncio.Lock() if kind == "sqlite" else contextlib.nullcontext()
        )

    @classmethod
    def sqlite(cls, path: Path) -> Database:
        return cls("sqlite", lambda: _sqlite_engine(path), prepare=lambda: _use_wal(path))

    @classmethod
    def postgresql(cls, dsn: str) -> Database:
        return cls("postgresql", lambda: _postgres_engine(dsn))

    async def open(self) -> None:
        if self._engine is not None:
            return
        try:
            if self._prepare is not None:
                await self._prepare()
            engine = self._make_engine()
        except _DRIVER_ERRORS as exc:
            raise self._error(exc) from exc
        self._engine = engine

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        if self._engine is None:
            raise StoreError("the console store is not open")
        engine = self._engine
        async with self._turns:
            try:
                async with engine.begin() as conn:
                    yield conn
            except _DRIVER_ERRORS as exc:
                raise self._error(exc) from exc

    def insert(self, table: sa.Table) -> Upsert:
        """An INSERT that can say ``ON CONFLICT`` (each dialect has its own construct)."""
        return sqlite.insert(table) if self.kind == "sqlite" else postgresql.insert(table)

    async def lock_for_migrations(self, conn: AsyncConnection) -> None:
        """Replicas starting together migrate one after the other (SQLite: ``BEGIN IMMEDIATE``
        already makes them wait; PostgreSQL: an advisory lock until the transaction ends)."""
        if self.kind == "postgresql":
            await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK_KEY)))

    def _error(self, exc: BaseException) -> StoreError:
        # The driver's own message: SQLAlchemy's would carry the statement (and, by default, its
        # parameters, such as a session's CSRF token) into the logs.
        cause = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
        return StoreError(f"{self.kind}: {type(cause).__name__}: {cause}")


async def _use_wal(path: Path) -> None:
    """Switch the file to WAL (it stays so). The switch ignores the busy timeout, so two
    processes starting together can see "database is locked" here: retry for a while."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SQLITE_BUSY_TIMEOUT_S
    async with aiosqlite.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S) as conn:
        while True:
            try:
                await conn.execute("PRAGMA journal_mode = WAL")
            except aiosqlite.OperationalError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.05)
            else:
                return


def _sqlite_engine(path: Path) -> AsyncEngine:
    engine = create_async_engine(
        sa.URL.create("sqlite+aiosqlite", database=str(path)),
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S},
        pool_size=1,
        max_overflow=0,
        pool_reset_on_return=None,  # every transaction already ended in a commit or rollback
        hide_parameters=True,
    )

    @sa.event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver begins nothing; on_begin does
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA synchronous = FULL")  # a decision acknowledged is on disk
        finally:
            cursor.close()

    @sa.event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: sa.Connection) -> None:
        # Straight to aiosqlite: one trip to its thread instead of a cursor's three.
        driver = conn.connection.dbapi_connection
        assert isinstance(driver, AdaptedConnection)
        driver.run_async(lambda sqlite_conn: sqlite_conn.execute("BEGIN IMMEDIATE"))

    return engine


def _postgres_engine(dsn: str) -> AsyncEngine:
    asyncpg = _asyncpg()

    async def connect() -> Any:
        try:
            return await asyncpg.connect(dsn, command_timeout=POSTGRES_COMMAND_TIMEOUT_S)
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:  # SQLAlchemy wraps
            # what the driver raises while executing, not while connecting.
            raise StoreError(f"postgresql: {type(exc).__name__}: {exc}") from exc

    return create_async_engine(
        "postgresql+asyncpg://",
        async_creator=connect,
        pool_size=POSTGRES_MAX_CONNECTIONS,
        max_overflow=0,
        hide_parameters=True,
    )


def nul_free(value: str) -> str:
    """``value`` as a TEXT column can hold it: PostgreSQL refuses NUL, which any id may carry."""
    return value.replace("\x00", "\ufffd")
