"""Odd data never fails the console for everyone (issue 11, items 8 and 11).

Rows written before intake validated records (a label confidence of "abc", a list for an S3
bucket) sit in real stores on both drivers; every page must still answer, showing such a row as
unreadable. Error pages, 500 included, carry the same security headers as every other page.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.console.app import Console
from service.console.storage import ConsoleStore
from tests.console.conftest import new_database
from tests.console.harness import (
    FakeClock,
    add_item,
    base_env,
    review_record,
    reviewers,
    running_console,
    url_of,
)

SECURITY_HEADERS = (
    "Content-Security-Policy",
    "X-Frame-Options",
    "X-Content-Type-Options",
    "Referrer-Policy",
    "Cross-Origin-Opener-Policy",
    "Cache-Control",
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sqlite", "postgresql"])
async def console(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[Console]:
    store = None
    if request.param == "postgresql":
        store = ConsoleStore.postgresql(
            await new_database(request.getfixturevalue("postgres_server"))
        )
    async with running_console(base_env(tmp_path), clock=clock, store=store) as running:
        yield running


async def stored_as_before(console: Console, clock: FakeClock, request_id: str, **kw: Any) -> str:
    """A row exactly as the console's old intake stored it: the record unvalidated."""
    loop, value = review_record(request_id, created=clock() - 60, deadline=clock() + 600, **kw)
    await console.store.upsert_item(
        loop_name=loop,
        request_id=request_id,
        record=value,
        created_at=clock() - 60,
        deadline=clock() + 600,
        requeued=0,
        now=clock(),
    )
    return loop


async def test_bad_rows_from_before_are_shown_as_unreadable_and_fail_no_page(
    console: Console, clock: FakeClock
) -> None:
    good = await add_item(console, clock, "good-one")
    bad_label = await stored_as_before(
        console,
        clock,
        "abc-confidence",
        labels=[{"name": "Explicit", "parent": "", "confidence": "abc", "taxonomy_level": 1}],
    )
    list_bucket = await stored_as_before(
        console, clock, "list-bucket", image={"s3": {"bucket": ["a", "b"], "key": "k.png"}}
    )
    async with reviewers(url_of(console), "alice", "bob", "lead") as (alice, bob, lead):
        status, page = await alice.get("/queue")
        assert status == 200 and "good-one" in page and "abc-confidence" in page
        assert "unreadable" in page
        status, body = await alice.get("/api/queue")
        assert status == 200
        rows = {row["loop_name"]: row for row in body["items"]}
        assert rows[good]["unreadable"] is False
        assert rows[good]["labels"][0]["confidence"] == 72.0
        assert rows[bad_label]["unreadable"] is True and rows[bad_label]["labels"] == []
        assert rows[list_bucket]["image"]["kind"] == "unreadable"

        # The image route answers with a clear refusal, never a 500.
        assert (await bob.claim(list_bucket))[0] == 200
        status, text = await bob.get(f"/items/{list_bucket}/image")
        assert status == 422 and "unreadable" in text
        status, page = await bob.get(f"/items/{list_bucket}")
        assert status == 200 and "unreadable" in page
        status, body = await bob.get(f"/api/items/{list_bucket}")
        assert status == 200 and body["item"]["unreadable"] is True

        # Once decided, the row is in the history for good: the history still answers.
        assert (await alice.claim(bad_label))[0] == 200
        status, body = await alice.decide(bad_label, nothing=True)
        assert status == 200 and body["delivered"] is True
        assert (await alice.claim(good))[0] == 200
        assert (await alice.decide(good, ["Violence"]))[0] == 200
        status, page = await lead.get("/history")
        assert status == 200 and "abc-confidence" in page
        status, body = await lead.get("/api/history")
        assert status == 200
        entries = {entry["loop_name"]: entry for entry in body["decisions"]}
        assert entries[bad_label]["unreadable"] is True
        assert entries[good]["model_labels"][0]["name"] == "Explicit Nudity"


async def test_an_id_the_database_cannot_hold_as_text_is_stored(
    console: Console, clock: FakeClock
) -> None:
    """PostgreSQL text cannot hold NUL; the pipeline accepts any id, so the store must cope."""
    loop = await add_item(console, clock, "nul\x00inside")
    async with reviewers(url_of(console), "alice") as (alice,):
        status, body = await alice.get("/api/queue")
    assert status == 200 and [row["loop_name"] for row in body["items"]] == [loop]


async def test_error_pages_carry_the_security_headers(tmp_path: Path, clock: FakeClock) -> None:
    env = base_env(tmp_path)
    async with (
        running_console(env, clock=clock) as console,
        reviewers(url_of(console), "alice") as (alice,),
    ):
        async with alice.http.get("/no/such/page") as response:
            assert response.status == 404
            assert all(name in response.headers for name in SECURITY_HEADERS)
        # A row the database holds but no code expects (a deadline that is not a number).
        with sqlite3.connect(tmp_path / "console.db") as db:
            db.execute(
                "INSERT INTO console_items (loop_name, request_id, record, created_at, deadline,"
                " requeued, received_at, status) VALUES ('mcorrupt', 'x', '{}', 0, 'soon', 0, 0,"
                " 'pending')"
            )
        for path in ("/queue", "/api/queue"):
            async with alice.http.get(path) as response:
                assert response.status == 500, path
                assert all(name in response.headers for name in SECURITY_HEADERS), path
                assert response.headers["Cache-Control"] == "no-store"
                text = await response.text()
                assert "Traceback" not in text and "soon" not in text
        with sqlite3.connect(tmp_path / "console.db") as db:
            db.execute("DROP TABLE console_items")
        async with alice.http.get("/api/queue") as response:
            assert response.status == 503
            assert all(name in response.headers for name in SECURITY_HEADERS)
            assert orjson.loads(await response.read()) == {
                "error": "the console store is unavailable"
            }


async def test_an_image_reference_s3_cannot_name_is_a_clear_422(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A bucket that is a string, but not one S3 allows: refused by the SDK before any call."""
    async with running_console(base_env(tmp_path), clock=clock) as console:
        loop = await add_item(
            console, clock, "odd-bucket", image={"s3": {"bucket": "no/such bucket", "key": "k"}}
        )
        async with reviewers(url_of(console), "alice") as (alice,):
            assert (await alice.claim(loop))[0] == 200
            status, text = await alice.get(f"/items/{loop}/image")
    assert status == 422 and "not a valid bucket" in text
