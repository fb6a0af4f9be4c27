"""The store's guarantees, run against both drivers: SQLite (a file) and PostgreSQL (a real
server started for the session when Debian's postgresql and asyncpg are installed).

Each race uses two :class:`ConsoleStore` objects on one database, the way two console processes
(SQLite: on one host; PostgreSQL: several replicas) share it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from service.console.storage import ConsoleStore, Item, StoreError
from service.console.storage.database import Database
from service.kafka.embedded import free_port
from tests.console.conftest import new_database

NOW = 1_800_000_000.0
TTL = 300.0


@pytest.fixture(params=["sqlite", "postgresql"])
async def two_databases(
    request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[Database, Database]:
    """Two connections to one new database, the way two console processes share it."""
    if request.param == "sqlite":
        path = tmp_path / "shared.db"
        return Database.sqlite(path), Database.sqlite(path)
    dsn = await new_database(request.getfixturevalue("postgres_server"))
    return Database.postgresql(dsn), Database.postgresql(dsn)


@pytest.fixture
async def two_stores(
    two_databases: tuple[Database, Database],
) -> AsyncIterator[tuple[ConsoleStore, ConsoleStore]]:
    stores = tuple(ConsoleStore(database) for database in two_databases)
    # Opened together: the replicas take turns migrating the new database.
    await asyncio.gather(*(store.open() for store in stores))
    try:
        yield stores
    finally:
        for store in stores:
            await store.close()


async def put(store: ConsoleStore, name: str, deadline: float = NOW + 3600) -> str:
    record = orjson.dumps({"id": name, "review": {"human_loop_name": f"loop-{name}"}})
    await store.upsert_item(
        loop_name=f"loop-{name}",
        request_id=name,
        record=record,
        created_at=NOW - 60,
        deadline=deadline,
        requeued=0,
        now=NOW,
    )
    return f"loop-{name}"


def build(item: Item, accepted: float) -> tuple[str, bytes, bytes]:
    return f"file:///x/{item.loop_name}", b'{"output": 1}', b'{"event": 1}'


async def test_one_claim_wins_across_two_replicas(
    two_stores: tuple[ConsoleStore, ConsoleStore],
) -> None:
    a, b = two_stores
    loop = await put(a, "contested")
    attempts = [
        store.claim(loop, f"reviewer-{i}-{j}", NOW, TTL)
        for i in range(24)
        for j, store in enumerate((a, b))
    ]
    results = await asyncio.gather(*attempts)
    winners = {r.item.claimed_by for r in results if r.outcome == "claimed" and r.item}
    assert len(winners) == 1
    assert sum(r.outcome == "claimed" for r in results) == 1
    assert all(r.outcome == "taken" for r in results if r.outcome != "claimed")


async def test_claim_next_hands_each_item_to_one_reviewer(
    two_stores: tuple[ConsoleStore, ConsoleStore],
) -> None:
    a, b = two_stores
    loops = {await put(a, f"n{i}", deadline=NOW + 100 + i) for i in range(6)}
    claimers = [(a if i % 2 else b).claim_next(f"reviewer-{i}", NOW, TTL) for i in range(10)]
    claimed = [item.loop_name for item in await asyncio.gather(*claimers) if item]
    assert sorted(claimed) == sorted(loops)


async def test_one_decision_per_item_and_the_outbox(
    two_stores: tuple[ConsoleStore, ConsoleStore],
) -> None:
    a, b = two_stores
    loop = await put(a, "decide")
    assert (await a.claim(loop, "alice", NOW, TTL)).outcome == "claimed"
    results = await asyncio.gather(
        a.decide(loop, "alice", [], NOW + 5, build),
        b.decide(loop, "alice", [], NOW + 5, build),
        b.decide(loop, "bob", [], NOW + 5, build),
    )
    assert sorted(r.outcome for r in results) == ["conflict", "decided", "repeat"]
    (pending,) = await b.unpublished(NOW + 100)
    assert (pending.loop_name, pending.reviewer, pending.accepted_at) == (loop, "alice", NOW)
    await b.mark_published(loop, NOW + 6)
    assert await a.unpublished(NOW + 100) == []
    counts = await a.counts(NOW)
    assert (counts.pending, counts.unpublished) == (0, 0)
    (entry,) = await b.history(limit=10)
    assert entry.decision.reviewer == "alice" and entry.record["id"] == "decide"
    assert entry.review is None  # put() stores a stub, not a review record: unreadable


async def test_redelivery_changes_nothing_and_a_requeue_renews_the_deadline(
    two_stores: tuple[ConsoleStore, ConsoleStore],
) -> None:
    a, _ = two_stores
    loop = await put(a, "again")
    await a.claim(loop, "alice", NOW, TTL)
    assert not await a.upsert_item(
        loop_name=loop,
        request_id="again",
        record=b"{}",
        created_at=0,
        deadline=0,
        requeued=0,
        now=NOW,
    )
    assert await a.upsert_item(
        loop_name=loop,
        request_id="again",
        record=b'{"requeued": 1}',
        created_at=NOW,
        deadline=NOW + 9000,
        requeued=1,
        now=NOW,
    )
    item = await a.item(loop)
    assert item is not None
    assert (item.deadline, item.requeued, item.claimed_by) == (NOW + 9000, 1, "alice")
    await a.decide(loop, "alice", [], NOW, build)
    assert not await a.upsert_item(
        loop_name=loop,
        request_id="again",
        record=b"{}",
        created_at=NOW,
        deadline=NOW + 1,
        requeued=2,
        now=NOW,
    )  # a decided item is never reopened
    item = await a.item(loop)
    assert item is not None and item.status == "decided"


async def test_sessions_expire(two_stores: tuple[ConsoleStore, ConsoleStore]) -> None:
    a, b = two_stores
    await a.create_session("h1", "alice", "csrf", NOW, 60)
    session = await b.session("h1", NOW + 59)
    assert session is not None and session.username == "alice"
    assert await b.session("h1", NOW + 61) is None
    await b.delete_session("h1")
    assert await a.session("h1", NOW) is None


async def reserve(store: ConsoleStore, name: str = "bob", now: float = NOW) -> int | None:
    return await store.reserve_login_attempt(name, now, max_failures=5, lockout_s=60, forget_s=900)


async def test_login_attempts_are_reserved_across_replicas_and_lock_the_name(
    two_stores: tuple[ConsoleStore, ConsoleStore],
) -> None:
    a, b = two_stores
    # Attempts arriving at both replicas at once all count: the reservation is atomic.
    numbers = await asyncio.gather(*(reserve(store) for store in (a, b, a, b)))
    assert sorted(n for n in numbers if n is not None) == [1, 2, 3, 4]
    assert await reserve(b) == 5  # the fifth may still be checked, and locks the name
    assert await reserve(a, now=NOW + 59) is None
    assert await reserve(a, "alice") == 1  # per name
    assert await reserve(b, now=NOW + 60) == 6  # the lockout ended; the run goes on and relocks
    assert await reserve(a, now=NOW + 61) is None
    await b.clear_login_failures("bob")  # a successful login ends the run
    assert await reserve(a, now=NOW + 62) == 1


async def test_a_burst_of_reservations_gets_exactly_the_limit(
    two_stores: tuple[ConsoleStore, ConsoleStore],
) -> None:
    a, b = two_stores
    numbers = await asyncio.gather(*(reserve(a if i % 2 else b) for i in range(30)))
    assert sorted(n for n in numbers if n is not None) == [1, 2, 3, 4, 5]
    assert numbers.count(None) == 25


async def test_an_old_run_of_login_attempts_is_forgotten(
    two_stores: tuple[ConsoleStore, ConsoleStore],
) -> None:
    a, b = two_stores
    for _ in range(4):
        await reserve(a)
    later = NOW + 901
    assert await reserve(b, "carol", later) == 1  # any attempt prunes runs older than forget_s
    assert await reserve(b, "bob", later) == 1


async def test_a_request_id_with_nul_is_stored(
    two_stores: tuple[ConsoleStore, ConsoleStore],
) -> None:
    """PostgreSQL text cannot hold NUL, but the pipeline accepts any id: intake must not wedge."""
    a, b = two_stores
    assert await a.upsert_item(
        loop_name="mnul",
        request_id="a\x00b",
        record=b"{}",
        created_at=NOW,
        deadline=NOW + 60,
        requeued=0,
        now=NOW,
    )
    item = await b.item("mnul")
    assert item is not None and item.request_id == "a\ufffdb" and item.review is None


QUESTIONS = "who? ?| ?& ?? $1 %s :name ' \" \\"
"""What a placeholder rewriter or a JSON operator (``?``, ``?|``, ``?&``) would trip over."""


async def test_question_marks_in_values_and_json_round_trip(
    two_stores: tuple[ConsoleStore, ConsoleStore],
) -> None:
    a, b = two_stores
    loop = "loop-q?"
    record = orjson.dumps({"id": "q?", "note": QUESTIONS, "?": ["?|", {"?&": "?"}]})
    assert await a.upsert_item(
        loop_name=loop,
        request_id="q?",
        record=record,
        created_at=NOW,
        deadline=NOW + 60,
        requeued=0,
        now=NOW,
    )
    item = await b.item(loop)
    assert item is not None and (item.request_id, item.record) == ("q?", orjson.loads(record))
    assert (await a.claim(loop, "who?", NOW, TTL)).outcome == "claimed"
    labels = [{"Name": QUESTIONS, "ParentName": "?"}]
    output = orjson.dumps({"answer": QUESTIONS, "ops": ["?|", "?&"]})

    def build_q(item: Item, accepted: float) -> tuple[str, bytes, bytes]:
        return f"file:///x/{item.loop_name}?v=1", output, b'{"event?": "?"}'

    assert (await b.decide(loop, "who?", labels, NOW + 1, build_q)).outcome == "decided"
    (entry,) = await a.history(limit=5, reviewer="who?")
    decision = entry.decision
    assert (decision.labels, decision.output, decision.event) == (
        labels,
        output,
        b'{"event?": "?"}',
    )
    assert decision.output_uri == f"file:///x/{loop}?v=1"
    assert entry.record == orjson.loads(record)
    await b.create_session("id?", "who?", QUESTIONS, NOW, 60)
    session = await a.session("id?", NOW)
    assert session is not None and (session.username, session.csrf) == ("who?", QUESTIONS)
    assert (
        await b.reserve_login_attempt(QUESTIONS, NOW, max_failures=5, lockout_s=60, forget_s=900)
        == 1
    )


async def test_a_literal_question_mark_in_a_statement_is_left_alone(
    two_databases: tuple[Database, Database],
) -> None:
    """The old driver rewrote every ``?`` in a statement into ``$n`` for PostgreSQL."""
    database, _ = two_databases
    await database.open()
    try:
        async with database.transaction() as conn:
            literal = sa.literal(QUESTIONS, literal_execute=True)  # inline, in the SQL text
            row = (await conn.execute(sa.select(sa.literal_column("'?'"), literal))).one()
            assert tuple(row) == ("?", QUESTIONS)
            if database.kind == "postgresql":  # its JSON operators: ? ?| ?&
                document = sa.cast(sa.literal('{"a?": 1, "b": [2]}'), postgresql.JSONB)
                has = (await conn.execute(sa.select(document.has_key("a?")))).scalar_one()
                has_all = (
                    await conn.execute(sa.select(document.has_all(postgresql.array(["a?", "b"]))))
                ).scalar_one()
                assert has is True and has_all is True
    finally:
        await database.close()


async def test_an_unreachable_or_missing_postgresql_fails_to_open_with_a_store_error(
    postgres_server: str,
) -> None:
    for dsn, why in (
        (f"postgresql://console@127.0.0.1:{free_port()}/db", "postgresql: ConnectionRefusedError"),
        (f"{postgres_server}/no_such_database", "postgresql: InvalidCatalogNameError"),
    ):
        store = ConsoleStore.postgresql(dsn)
        with pytest.raises(StoreError, match=why):
            await store.open()
        with pytest.raises(StoreError, match="not open"):
            await store.ping()
