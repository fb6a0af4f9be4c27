"""The console's schema migrations, on both drivers: a new database gets exactly the tables the
statements are built from, and a database made by the console before it had migrations is
adopted with every row intact."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from service.console.storage import ConsoleStore
from service.console.storage.migrate import VERSION_TABLE, alembic_config
from service.console.storage.tables import metadata
from tests.console.conftest import new_database

NOW = 1_800_000_000.0

# What the console created at every start before it had migrations (CREATE ... IF NOT EXISTS).
LEGACY_SCHEMA = (
    """CREATE TABLE console_items (
        loop_name TEXT PRIMARY KEY, request_id TEXT NOT NULL, record TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, deadline DOUBLE PRECISION NOT NULL,
        requeued INTEGER NOT NULL, received_at DOUBLE PRECISION NOT NULL, status TEXT NOT NULL,
        claimed_by TEXT, claimed_at DOUBLE PRECISION, claim_expires DOUBLE PRECISION)""",
    "CREATE INDEX console_items_queue ON console_items (status, deadline)",
    "CREATE INDEX console_items_claims ON console_items (claimed_by)",
    """CREATE TABLE console_decisions (
        loop_name TEXT PRIMARY KEY, request_id TEXT NOT NULL, reviewer TEXT NOT NULL,
        labels TEXT NOT NULL, accepted_at DOUBLE PRECISION NOT NULL,
        submitted_at DOUBLE PRECISION NOT NULL, output_uri TEXT NOT NULL, output TEXT NOT NULL,
        event TEXT NOT NULL, published_at DOUBLE PRECISION)""",
    "CREATE INDEX console_decisions_time ON console_decisions (submitted_at)",
    """CREATE TABLE console_sessions (
        id_hash TEXT PRIMARY KEY, username TEXT NOT NULL, csrf TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL)""",
)
LEGACY_LOGIN_FAILURES = (
    """CREATE TABLE console_login_failures (
        username TEXT PRIMARY KEY, failures INTEGER NOT NULL,
        locked_until DOUBLE PRECISION NOT NULL, last_failure DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX console_login_failures_time ON console_login_failures (last_failure)",
)
RECORD = orjson.dumps({"id": "old", "review": {"human_loop_name": "loop-old"}}).decode()
LEGACY_ROWS: tuple[tuple[str, tuple[Any, ...]], ...] = (
    (
        "INSERT INTO console_items VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        ("loop-old", "old", RECORD, NOW - 60, NOW + 3600, 0, NOW - 50, "pending", None, None, None),
    ),
    (
        "INSERT INTO console_items VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        ("loop-done", "done", "{}", NOW - 60, NOW + 3600, 0, NOW - 50, "decided", "amy", NOW, None),
    ),
    (
        "INSERT INTO console_decisions VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        ("loop-done", "done", "amy", "[]", NOW - 10, NOW - 5, "file:///o", '{"o":1}', "{}", None),
    ),
    (
        "INSERT INTO console_sessions VALUES ($1, $2, $3, $4, $5)",
        ("hash", "amy", "token", NOW - 10, NOW + 600),
    ),
)

Legacy = Callable[[tuple[str, ...], bool], Awaitable[ConsoleStore]]


@pytest.fixture(params=["sqlite", "postgresql"])
async def legacy(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Legacy]:
    """Makes a database as the console before migrations left it; returns a store on it."""
    stores: list[ConsoleStore] = []

    async def make(schema: tuple[str, ...], rows: bool) -> ConsoleStore:
        if request.param == "sqlite":
            path = tmp_path / "legacy.db"
            with sqlite3.connect(path) as conn:
                for statement in schema:
                    conn.execute(statement)
                for sql, values in LEGACY_ROWS if rows else ():
                    conn.execute(sql.replace("$", "?"), values)
            store = ConsoleStore.sqlite(path)
        else:
            import asyncpg

            dsn = await new_database(request.getfixturevalue("postgres_server"))
            conn = await asyncpg.connect(dsn)
            try:
                for statement in schema:
                    await conn.execute(statement)
                for sql, values in LEGACY_ROWS if rows else ():
                    await conn.execute(sql, *values)
            finally:
                await conn.close()
            store = ConsoleStore.postgresql(dsn)
        stores.append(store)
        return store

    try:
        yield make
    finally:
        for store in stores:
            await store.close()


async def version_and_schema_diff(store: ConsoleStore) -> tuple[list[str], list[Any]]:
    """The recorded schema versions, and how the database differs from ``tables.py``."""
    database = store._db
    async with database.transaction() as conn:
        versions = (await conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}"))).all()

        def diff(sync: sa.Connection) -> list[Any]:
            # SQLite reflects DOUBLE PRECISION as REAL and lets a TEXT PRIMARY KEY hold NULL
            # (the original schema's quirk, kept): compare types and PK nullability elsewhere.
            exact = database.kind == "postgresql"
            context = MigrationContext.configure(
                sync, opts={"version_table": VERSION_TABLE, "compare_type": exact}
            )
            return [
                change
                for change in compare_metadata(context, metadata)
                if exact or not _sqlite_primary_key_nullable(change)
            ]

        changes = await conn.run_sync(diff)
    return [row[0] for row in versions], changes


def _sqlite_primary_key_nullable(change: Any) -> bool:
    if not isinstance(change, list) or len(change) != 1 or change[0][0] != "modify_nullable":
        return False
    _, _, table, column, *_ = change[0]
    return bool(metadata.tables[table].c[column].primary_key)


def head() -> str:
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None
    return revision


async def test_a_new_database_gets_exactly_the_schema_the_statements_use(legacy: Legacy) -> None:
    store = await legacy((), False)
    await store.open()
    versions, changes = await version_and_schema_diff(store)
    assert versions == [head()]
    assert changes == []


async def test_a_database_from_before_migrations_is_adopted_with_its_rows(legacy: Legacy) -> None:
    store = await legacy(LEGACY_SCHEMA + LEGACY_LOGIN_FAILURES, True)
    await store.open()
    versions, changes = await version_and_schema_diff(store)
    assert (versions, changes) == ([head()], [])
    item = await store.item("loop-old")
    assert item is not None and (item.record["id"], item.deadline) == ("old", NOW + 3600)
    (entry,) = await store.history(limit=10)
    assert (entry.decision.reviewer, entry.decision.output) == ("amy", b'{"o":1}')
    session = await store.session("hash", NOW)
    assert session is not None and session.csrf == "token"
    assert (await store.claim("loop-old", "bob", NOW, 300)).outcome == "claimed"


async def test_an_older_database_gets_the_tables_it_lacks(legacy: Legacy) -> None:
    """Made before the shared lockout existed: the login-failures table is created on adoption."""
    store = await legacy(LEGACY_SCHEMA, True)
    await store.open()
    versions, changes = await version_and_schema_diff(store)
    assert (versions, changes) == ([head()], [])
    assert (
        await store.reserve_login_attempt("bob", NOW, max_failures=5, lockout_s=60, forget_s=900)
        == 1
    )
    assert await store.item("loop-old") is not None


async def test_a_restart_migrates_nothing_and_keeps_the_rows(legacy: Legacy) -> None:
    first = await legacy((), False)
    await first.open()
    await first.create_session("h", "amy", "c", NOW, 60)
    await first.close()
    await first.open()
    versions, changes = await version_and_schema_diff(first)
    assert (versions, changes) == ([head()], [])
    assert await first.session("h", NOW) is not None


async def test_a_start_logs_one_line_when_it_migrates_and_none_when_it_does_not(
    legacy: Legacy, caplog: pytest.LogCaptureFixture
) -> None:
    """Alembic narrates every start at INFO; the console says only what changed."""
    caplog.set_level(logging.INFO)
    store = await legacy((), False)
    await store.open()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("alembic")] == []
    migrated = [r.getMessage() for r in caplog.records if r.name.endswith("storage.migrate")]
    assert migrated == [f"console database schema migrated from none to {head()}"]
    await store.close()
    caplog.clear()
    await store.open()
    assert [r for r in caplog.records if r.name.startswith(("alembic", "service.console"))] == []
