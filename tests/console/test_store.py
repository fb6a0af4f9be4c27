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

from service.console.store import ConsoleStore, Item
from tests.console.conftest import new_database

NOW = 1_800_000_000.0
TTL = 300.0


@pytest.fixture(params=["sqlite", "postgresql"])
async def two_stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[ConsoleStore, ConsoleStore]]:
    if request.param == "sqlite":
        path = tmp_path / "shared.db"
        stores = (ConsoleStore.sqlite(path), ConsoleStore.sqlite(path))
    else:
        dsn = await new_database(request.getfixturevalue("postgres_server"))
        stores = (ConsoleStore.postgresql(dsn), ConsoleStore.postgresql(dsn))
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


async def test_login_failures_are_counted_across_replicas_and_lock_the_name(
    two_stores: tuple[ConsoleStore, ConsoleStore],
) -> None:
    a, b = two_stores

    async def fail(store: ConsoleStore, now: float = NOW) -> tuple[int, float]:
        return await store.record_login_failure(
            "bob", now, max_failures=5, lockout_s=60, forget_s=900
        )

    # Failures arriving at both replicas at once all count: the upsert is atomic.
    counts = await asyncio.gather(*(fail(store) for store in (a, b, a, b)))
    assert sorted(failures for failures, _ in counts) == [1, 2, 3, 4]
    assert all(locked == 0 for _, locked in counts)
    assert await a.login_locked_until("bob", NOW) is None
    assert await fail(b) == (5, NOW + 60)  # the fifth in a row locks, whichever replica saw it
    assert await a.login_locked_until("bob", NOW + 59) == NOW + 60
    assert await a.login_locked_until("alice", NOW) is None  # per name
    assert await b.login_locked_until("bob", NOW + 60) is None  # the lockout ends
    assert await fail(a, NOW + 61) == (6, NOW + 121)  # but the run goes on: one more relocks
    await b.clear_login_failures("bob")  # a successful login ends the run
    assert await fail(a, NOW + 62) == (1, 0.0)


async def test_an_old_run_of_login_failures_is_forgotten(
    two_stores: tuple[ConsoleStore, ConsoleStore],
) -> None:
    a, b = two_stores
    for _ in range(4):
        await a.record_login_failure("bob", NOW, max_failures=5, lockout_s=60, forget_s=900)
    later = NOW + 901
    assert await b.record_login_failure(
        "carol", later, max_failures=5, lockout_s=60, forget_s=900
    ) == (1, 0.0)  # any failure prunes runs older than forget_s, so the table stays small
    assert await b.record_login_failure(
        "bob", later, max_failures=5, lockout_s=60, forget_s=900
    ) == (1, 0.0)
