"""The SQLite side of the console's database module, on a file: durability settings, writers
locked out from the start of a transaction, cancellation, and errors that say what failed
without repeating what was stored."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from service.console.storage import ConsoleStore, StoreError
from service.console.storage.database import Database
from service.console.storage.tables import sessions

NOW = 1_800_000_000.0


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    """An open store's database (migrated: it has the tables)."""
    db = Database.sqlite(tmp_path / "console.db")
    store = ConsoleStore(db)
    await store.open()
    try:
        yield db
    finally:
        await store.close()


async def test_wal_and_synchronous_full(database: Database) -> None:
    async with database.transaction() as conn:
        journal = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar_one()
        synchronous = (await conn.exec_driver_sql("PRAGMA synchronous")).scalar_one()
    assert (journal, synchronous) == ("wal", 2)  # 2: FULL, a decision acknowledged is on disk


async def test_a_transaction_holds_the_write_lock_from_its_start(
    database: Database, tmp_path: Path
) -> None:
    """BEGIN IMMEDIATE: another process cannot slip a write in between a read and an update."""
    other = sqlite3.connect(tmp_path / "console.db", timeout=0, isolation_level=None)
    try:
        async with database.transaction() as conn:
            await conn.execute(sa.select(sa.func.count()).select_from(sessions))
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")  # free again once the transaction ends
        other.execute("ROLLBACK")
    finally:
        other.close()


async def test_a_cancelled_transaction_is_rolled_back_and_the_next_one_runs(
    database: Database,
) -> None:
    inside = asyncio.Event()

    async def write_then_wait() -> None:
        async with database.transaction() as conn:
            await conn.execute(
                sa.insert(sessions).values(
                    id_hash="h", username="u", csrf="c", created_at=NOW, expires_at=NOW + 1
                )
            )
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(write_then_wait())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with database.transaction() as conn:
        count = (await conn.execute(sa.select(sa.func.count()).select_from(sessions))).scalar_one()
    assert count == 0


async def test_a_failed_statement_is_a_store_error_that_does_not_log_the_values(
    tmp_path: Path,
) -> None:
    store = ConsoleStore.sqlite(tmp_path / "console.db")
    await store.open()
    try:
        await store.create_session("same", "alice", "csrf-secret", NOW, 60)
        with pytest.raises(StoreError, match="sqlite: IntegrityError: UNIQUE") as failed:
            await store.create_session("same", "alice", "csrf-secret", NOW, 60)
        assert "csrf-secret" not in str(failed.value)
        assert "INSERT" not in str(failed.value)
    finally:
        await store.close()


async def test_a_store_that_cannot_open_its_file_says_so(tmp_path: Path) -> None:
    store = ConsoleStore.sqlite(tmp_path / "missing" / "console.db")
    with pytest.raises(StoreError, match="sqlite: OperationalError"):
        await store.open()
    with pytest.raises(StoreError, match="not open"):
        await store.ping()
