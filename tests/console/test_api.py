"""The console's HTTP API over real HTTP on 127.0.0.1, against a real SQLite store on disk.

The completion-event publisher is captured in memory here (the broker path is covered by
test_kafka.py and the browser test); output.json files are really written to the local store.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.console.app import Console
from service.console.metrics import ConsoleMetrics
from service.console.middleware import PUBLIC_PATHS
from service.console.storage import ConsoleStore
from service.review.answers import TASK_KEY, decide_from_output
from service.review.events import parse_event
from tests.console.conftest import new_database
from tests.console.harness import (
    PASSWORD,
    CapturingPublisher,
    FakeClock,
    Reviewer,
    add_item,
    base_env,
    reviewers,
    running_console,
    url_of,
)
from tests.images import solid_png
from tests.servers import serve_images

OUTPUT_KEYS = {
    "awsManagedHumanLoopRequestSource",
    "flowDefinitionArn",
    "humanLoopName",
    "humanAnswers",
    "inputContent",
}
ANSWER_KEYS = {
    "answerContent",
    "submissionTime",
    "acceptanceTime",
    "timeSpentInSeconds",
    "workerId",
    "workerMetadata",
}
INPUT_KEYS = {
    "aiServiceRequest",
    "aiServiceResponse",
    "humanTaskActivationConditionResults",
    "selectedAiServiceResponse",
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def publisher() -> CapturingPublisher:
    return CapturingPublisher()


@pytest.fixture(params=["sqlite", "postgresql"])
async def console(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    clock: FakeClock,
    publisher: CapturingPublisher,
) -> AsyncIterator[Console]:
    """The console on each store driver (the same API tests, run against both)."""
    store = None
    if request.param == "postgresql":
        store = ConsoleStore.postgresql(
            await new_database(request.getfixturevalue("postgres_server"))
        )
    async with running_console(
        base_env(tmp_path), clock=clock, publisher=publisher, store=store
    ) as running:
        yield running


@pytest.fixture
async def image_server() -> AsyncIterator[str]:
    async with serve_images({"/cat.png": solid_png(120, 90, (30, 120, 200))}) as origin:
        yield origin


async def test_queue_is_ordered_by_deadline_and_shows_why(
    console: Console, clock: FakeClock
) -> None:
    late = await add_item(console, clock, "late", deadline=clock() + 7200)
    soon = await add_item(console, clock, "soon", deadline=clock() + 600)
    middle = await add_item(console, clock, "middle", deadline=clock() + 3600)
    await add_item(console, clock, "overdue", deadline=clock() - 1)
    async with reviewers(url_of(console), "alice") as (alice,):
        status, body = await alice.get("/api/queue")
    assert status == 200
    assert [item["loop_name"] for item in body["items"]] == [soon, middle, late]
    assert body["counts"] == {"pending": 3, "overdue": 1, "claimed": 0, "undelivered": 0}
    first = body["items"][0]
    assert first["labels"][0]["name"] == "Explicit Nudity"
    assert first["activation_reasons"] == ["Explicit Nudity confidence 72.0 >= review threshold 50"]
    assert first["image"]["kind"] == "bytes"


async def test_two_reviewers_racing_for_one_item_exactly_one_wins(
    console: Console, clock: FakeClock
) -> None:
    loop = await add_item(console, clock, "contested")
    async with reviewers(url_of(console), "alice", "bob") as (alice, bob):
        attempts = [person.claim(loop) for _ in range(15) for person in (alice, bob)]
        results = await asyncio.gather(*attempts)
        winners = {
            person.name
            for person, (status, _) in zip([alice, bob] * 15, results, strict=True)
            if status == 200
        }
        assert len(winners) == 1, results
        (winner,) = winners
        loser = bob if winner == "alice" else alice
        refusals = [body for status, body in results if status != 200]
        assert all(body["claimed_by"] == winner for body in refusals)
        status, _ = await loser.decide(loop, ["Explicit Nudity"])
        assert status == 409  # no claim, no decision


async def test_many_reviewers_claiming_next_get_distinct_items(
    console: Console, clock: FakeClock
) -> None:
    loops = {await add_item(console, clock, f"item-{i}") for i in range(4)}
    names = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")
    async with reviewers(url_of(console), *names) as people:
        results = await asyncio.gather(*(person.post("/api/queue/next") for person in people))
    claimed = [body["item"]["loop_name"] for status, body in results if status == 200]
    assert sorted(claimed) == sorted(loops)  # four winners, each item once
    assert sum(1 for status, _ in results if status == 404) == 4


async def test_a_claim_expires_and_then_belongs_to_whoever_claims_next(
    console: Console, clock: FakeClock
) -> None:
    loop = await add_item(console, clock, "expiring")
    async with reviewers(url_of(console), "alice", "bob") as (alice, bob):
        assert (await alice.claim(loop))[0] == 200
        status, body = await bob.claim(loop)
        assert (status, body["claimed_by"]) == (409, "alice")
        clock.advance(299)
        assert (await bob.claim(loop))[0] == 409
        clock.advance(2)  # past the 300 s claim
        queue = (await bob.get("/api/queue"))[1]
        assert queue["items"][0]["claimed_by"] is None  # shown as free again
        assert (await bob.claim(loop))[0] == 200
        status, body = await alice.decide(loop, ["Explicit"])
        assert status == 409 and "bob" in body["error"]
        status, body = await bob.decide(loop, nothing=True)
        assert status == 200 and body["outcome"] == "decided"


async def test_an_expired_claim_nobody_took_can_still_be_submitted(
    console: Console, clock: FakeClock
) -> None:
    loop = await add_item(console, clock, "slow-reviewer")
    async with reviewers(url_of(console), "alice") as (alice,):
        assert (await alice.claim(loop))[0] == 200
        clock.advance(1000)
        status, body = await alice.decide(loop, nothing=True)
    assert status == 200 and body["delivered"] is True


async def test_state_survives_a_restart(
    tmp_path: Path, clock: FakeClock, publisher: CapturingPublisher
) -> None:
    env = base_env(tmp_path)
    async with running_console(env, clock=clock, publisher=publisher) as first:
        held = await add_item(first, clock, "held")
        decided = await add_item(first, clock, "decided")
        waiting = await add_item(first, clock, "waiting", deadline=clock() + 7200)
        async with reviewers(url_of(first), "alice") as (alice,):
            assert (await alice.claim(decided))[0] == 200
            assert (await alice.decide(decided, ["Weapons"]))[0] == 200
            assert (await alice.claim(held))[0] == 200

    async with (
        running_console(env, clock=clock, publisher=publisher) as second,
        reviewers(url_of(second), "alice", "bob", "lead") as (alice, bob, lead),
    ):
        queue = (await bob.get("/api/queue"))[1]
        assert [item["loop_name"] for item in queue["items"]] == [held, waiting]
        assert queue["items"][0]["claimed_by"] == "alice"  # never shown as free
        assert (await bob.claim(held))[0] == 409
        history = (await lead.get("/api/history"))[1]["decisions"]
        assert [(d["loop_name"], d["reviewer"], d["labels"]) for d in history] == [
            (decided, "alice", ["Weapons"])
        ]
        # alice's session survived too (sessions live in the store): her claim is hers.
        status, body = await alice.decide(held, ["Gambling"])
        assert status == 200 and body["delivered"]
    assert len(publisher.events) == 2


async def test_every_route_refuses_callers_without_a_session(console: Console) -> None:
    assert console._runner is not None
    app_routes = [
        (route.method, route.resource.canonical)
        for route in console._runner.app.router.routes()  # type: ignore[union-attr]
        if route.resource is not None
    ]
    public = {path for _, path in app_routes if path in PUBLIC_PATHS}
    assert public == {"/login", "/healthz", "/readyz", "/metrics", "/static/console.css"}
    guarded = [(m, p.replace("{loop}", "m" + "0" * 62)) for m, p in app_routes if p not in public]
    assert len(guarded) >= 18
    base = url_of(console)
    async with aiohttp.ClientSession(base) as anonymous:
        for method, path in [*guarded, ("GET", "/no/such/page"), ("POST", "/no/such/api")]:
            async with anonymous.request(method, path, allow_redirects=False) as response:
                body = await response.read()
                if method in ("GET", "HEAD") and not path.startswith("/api/"):
                    assert response.status == 303, (method, path)
                    assert response.headers["Location"].startswith("/login?next=")
                else:
                    assert response.status == 401, (method, path, response.status)
                assert b"m000000" not in body and b"Explicit" not in body
                assert response.headers["X-Frame-Options"] == "DENY"
        # A forged session cookie is no session.
        anonymous.cookie_jar.update_cookies({"moderation_console_session": "abc.def"})
        async with anonymous.get("/api/queue") as response:
            assert response.status == 401


async def test_every_state_change_needs_the_csrf_token(console: Console, clock: FakeClock) -> None:
    loop = await add_item(console, clock, "csrf")
    posts = [
        route.resource.canonical.replace("{loop}", loop)
        for route in console._runner.app.router.routes()  # type: ignore[union-attr]
        if route.method == "POST" and route.resource is not None
    ]
    assert "/items/{loop}/decision".replace("{loop}", loop) in posts
    async with reviewers(url_of(console), "alice") as (alice,):
        for path in posts:
            if path == "/login":
                continue  # has its own pre-session token, checked below
            for headers, data in (({}, None), ({"X-CSRF-Token": "wrong"}, None)):
                async with alice.http.post(
                    path, headers=headers, data=data, allow_redirects=False
                ) as response:
                    assert response.status == 403, (path, headers)
            async with alice.http.post(
                path, data={"csrf_token": "forged"}, allow_redirects=False
            ) as response:
                assert response.status == 403, path
        # A cross-site request is refused even with the right token.
        async with alice.http.post(
            f"/api/items/{loop}/claim",
            headers={"X-CSRF-Token": alice.csrf, "Sec-Fetch-Site": "cross-site"},
        ) as response:
            assert response.status == 403
        assert (await alice.get("/api/queue"))[1]["counts"]["claimed"] == 0
    # The login form without its token cookie is refused as well.
    async with (
        aiohttp.ClientSession(url_of(console)) as anonymous,
        anonymous.post(
            "/login",
            data={"username": "alice", "password": PASSWORD, "login_token": "x"},
            allow_redirects=False,
        ) as response,
    ):
        assert response.status == 403
        assert "Set-Cookie" not in response.headers or "session" not in str(
            response.headers.getall("Set-Cookie", [])
        )


async def test_login_cookie_flags_headers_and_wrong_passwords(console: Console) -> None:
    person = Reviewer(url_of(console), "alice")
    try:
        response = await person.login_response()
        cookie = next(c for c in response.headers.getall("Set-Cookie") if "console_session=" in c)
        response.release()
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        async with person.http.get("/queue") as page:
            assert page.status == 200
            headers = page.headers
            assert "default-src 'none'" in headers["Content-Security-Policy"]
            assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
            assert headers["X-Frame-Options"] == "DENY"
            assert headers["Cache-Control"] == "no-store"
            assert "<script" not in (await page.text()).replace(
                '<script src="/static/console.js" defer></script>', ""
            )  # no inline script: the CSP forbids it
    finally:
        await person.close()
    intruder = Reviewer(url_of(console), "mallory-not-a-user")
    wrong = Reviewer(url_of(console), "bob")
    try:
        assert (await intruder.login_response()).status == 401
        for _ in range(5):
            assert (await wrong.login_response("not the password")).status == 401
        response = await wrong.login_response()  # right password, but locked out for now
        assert response.status == 401 and "Too many" in await response.text()
    finally:
        await intruder.close()
        await wrong.close()


async def test_a_lockout_holds_on_every_replica_and_ends_after_a_minute(
    tmp_path: Path, clock: FakeClock
) -> None:
    env = base_env(tmp_path)  # two console processes sharing one store
    async with (
        running_console(env, clock=clock) as first,
        running_console(env, clock=clock) as second,
    ):
        at_first = Reviewer(url_of(first), "bob")
        at_second = Reviewer(url_of(second), "bob")
        try:
            for reviewer in (at_first, at_second, at_first, at_second, at_first):
                assert (await reviewer.login_response("not the password")).status == 401
            response = await at_second.login_response()  # right password, other replica
            assert response.status == 401 and "Too many" in await response.text()
            clock.advance(61)
            response = await at_second.login_response()
            assert response.status == 303
            response.release()
        finally:
            await at_first.close()
            await at_second.close()


async def test_login_only_returns_to_local_paths(console: Console) -> None:
    for target, expected in (
        ("/history", "/history"),
        ("//evil.example/x", "/queue"),
        ("https://evil.example/", "/queue"),
        ("/\\evil.example", "/queue"),
    ):
        person = Reviewer(url_of(console), "alice")
        try:
            async with person.http.get("/login", params={"next": target}) as page:
                html = await page.text()
                token = re.search(r'name="login_token" value="([^"]+)"', html)
                assert token is not None
            async with person.http.post(
                "/login",
                data={
                    "username": "alice",
                    "password": PASSWORD,
                    "login_token": token.group(1),
                    "next": target,
                },
                allow_redirects=False,
            ) as response:
                assert response.headers["Location"] == expected, target
        finally:
            await person.close()


async def test_logout_ends_the_session_everywhere(console: Console) -> None:
    async with reviewers(url_of(console), "alice") as (alice,):
        stolen = {c.key: c.value for c in alice.http.cookie_jar}
        async with alice.http.post(
            "/logout", data={"csrf_token": alice.csrf}, allow_redirects=False
        ) as response:
            assert response.status == 303
    async with aiohttp.ClientSession(
        url_of(console), cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as replay:
        replay.cookie_jar.update_cookies(stolen)
        async with replay.get("/api/me") as response:
            assert response.status == 401


async def test_output_json_has_exactly_a2is_keys_and_the_event_parses(
    console: Console, clock: FakeClock, publisher: CapturingPublisher, tmp_path: Path
) -> None:
    created = clock() - 90
    loop = await add_item(
        console,
        clock,
        "upload-1",
        created=created,
        image={"s3": {"bucket": "uploads", "key": "2026/a.jpg", "version": "v1"}},
    )
    async with reviewers(url_of(console), "alice") as (alice,):
        assert (await alice.claim(loop))[0] == 200
        clock.advance(42)
        status, body = await alice.decide(loop, ["Weapons", "Explicit Nudity"])
    assert status == 200 and body["delivered"] is True
    uri = body["output_uri"]
    stamp = __import__("datetime").datetime.fromtimestamp(created, __import__("datetime").UTC)
    expected = (
        f"{tmp_path.resolve().as_uri()}/outputs/moderation-console/"
        f"{stamp:%Y/%m/%d/%H/%M/%S}/{loop}/output.json"
    )
    assert uri == expected
    output = orjson.loads(Path(unquote(urlsplit(uri).path)).read_bytes())
    assert set(output) == OUTPUT_KEYS
    assert output["awsManagedHumanLoopRequestSource"] == TASK_KEY
    assert output["humanLoopName"] == loop
    assert output["flowDefinitionArn"] == (
        "arn:aws:sagemaker:us-east-1:000000000000:flow-definition/moderation-console"
    )
    (answer,) = output["humanAnswers"]
    assert set(answer) == ANSWER_KEYS
    assert answer["answerContent"] == {
        TASK_KEY: {
            "moderationLabels": [
                {"name": "Explicit Nudity", "parentName": "Explicit"},
                {"name": "Weapons", "parentName": "Violence"},
            ]
        }
    }
    assert answer["workerId"] == "alice"
    assert answer["workerMetadata"] == {
        "identityData": {
            "identityProviderType": "moderation-console",
            "issuer": "http://localhost:0",
            "sub": "alice",
        }
    }
    assert answer["timeSpentInSeconds"] == 42.0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", answer["submissionTime"])
    assert set(output["inputContent"]) == INPUT_KEYS
    assert output["inputContent"]["aiServiceRequest"]["image"] == {
        "s3Object": {"bucket": "uploads", "name": "2026/a.jpg", "version": "v1"}
    }
    assert output["inputContent"]["aiServiceResponse"]["moderationLabels"] == [
        {"confidence": 72.0, "name": "Explicit Nudity", "parentName": "Explicit"}
    ]
    human = decide_from_output(Path(unquote(urlsplit(uri).path)).read_bytes(), "any")
    assert human.verdict == "rejected" and human.workers == ["alice"]
    assert [label.name for label in human.labels] == ["Explicit Nudity", "Weapons"]

    (key, value) = publisher.events[-1]
    assert key == loop.encode()
    event = parse_event(value)
    assert (event.loop_name, event.status, event.output_uri) == (loop, "Completed", uri)
    raw = orjson.loads(value)
    assert raw["detail"]["creationTime"].startswith(f"{stamp:%Y-%m-%dT%H:%M:%S}")
    assert raw["source"] == "aws.sagemaker"


async def test_nothing_objectionable_writes_an_empty_label_list(
    console: Console, clock: FakeClock, publisher: CapturingPublisher
) -> None:
    loop = await add_item(console, clock, "fine")
    async with reviewers(url_of(console), "alice") as (alice,):
        assert (await alice.claim(loop))[0] == 200
        status, body = await alice.decide(loop, nothing=True)
        assert status == 200
        for bad in ({"labels": []}, {"labels": ["Weapons"], "nothing_objectionable": True}):
            assert (await alice.post(f"/api/items/{loop}/decision", bad))[0] == 400
        assert (await alice.post(f"/api/items/{loop}/decision", {"labels": ["Suggestive"]}))[
            0
        ] == 400  # a v6 name is not in the v7 taxonomy
    output = Path(unquote(urlsplit(body["output_uri"]).path)).read_bytes()
    assert decide_from_output(output, "any").verdict == "approved"
    assert orjson.loads(output)["humanAnswers"][0]["answerContent"][TASK_KEY] == {
        "moderationLabels": []
    }


async def test_decisions_are_idempotent_and_undelivered_ones_are_retried(
    console: Console, clock: FakeClock, publisher: CapturingPublisher
) -> None:
    loop = await add_item(console, clock, "flaky-broker")
    async with reviewers(url_of(console), "alice", "bob") as (alice, bob):
        assert (await alice.claim(loop))[0] == 200
        publisher.fail = True
        status, body = await alice.decide(loop, ["Gambling"])
        assert status == 200 and body == {
            **body,
            "outcome": "decided",
            "delivered": False,
        }
        assert (await alice.get("/api/queue"))[1]["counts"]["undelivered"] == 1
        # The same reviewer submitting again (a double click, a retry) gets the first answer.
        status, again = await alice.decide(loop, ["Weapons"])
        assert (status, again["outcome"], again["labels"]) == (
            200,
            "repeat",
            [{"name": "Gambling", "parentName": ""}],
        )
        assert (await bob.decide(loop, nothing=True))[0] == 409
        publisher.fail = False
        clock.advance(60)  # past the outbox's grace period
        assert await console.delivery.flush_outbox() == 1
        assert await console.delivery.flush_outbox() == 0
        assert (await alice.get("/api/queue"))[1]["counts"]["undelivered"] == 0
    (_key, value) = publisher.events[0]
    assert parse_event(value).loop_name == loop


async def test_image_proxy_needs_the_claim_and_applies_the_url_rules(
    tmp_path: Path, clock: FakeClock, image_server: str
) -> None:
    env = base_env(tmp_path)
    async with running_console(env, clock=clock) as console:
        loop = await add_item(console, clock, "pic", image={"url": f"{image_server}/cat.png"})
        inline = await add_item(console, clock, "inline")
        async with reviewers(url_of(console), "alice", "bob") as (alice, bob):
            assert (await alice.get(f"/items/{loop}/image"))[0] == 403  # no claim yet
            assert (await alice.claim(loop))[0] == 200
            async with alice.http.get(f"/items/{loop}/image") as response:
                assert response.status == 200
                assert response.content_type == "image/png"
                assert response.headers["Cache-Control"] == "no-store, private"
                assert (await response.read()).startswith(b"\x89PNG")
            assert (await bob.get(f"/items/{loop}/image"))[0] == 403  # not bob's claim
            assert (await bob.claim(inline))[0] == 200
            status, text = await bob.get(f"/items/{inline}/image")
            assert status == 404 and "inline image, not stored" in text
            async with bob.http.get(f"/items/{inline}") as page:
                assert "Inline image, not stored." in await page.text()
    # Without the allowlist, loopback is forbidden to the console exactly as to the pipeline.
    strict = base_env(tmp_path, MODERATION_FETCH_ALLOWED_NETWORKS="")
    async with (
        running_console(strict, clock=clock) as console,
        reviewers(url_of(console), "alice") as (alice,),
    ):
        assert (await alice.claim(loop))[0] == 200
        status, text = await alice.get(f"/items/{loop}/image")
        assert status == 502 and "forbidden_url" in text and "127.0.0.1" not in text


async def test_history_is_for_leads(console: Console, clock: FakeClock) -> None:
    loop = await add_item(console, clock, "for-history")
    async with reviewers(url_of(console), "alice", "lead") as (alice, lead):
        await alice.claim(loop)
        await alice.decide(loop, ["Hate Symbols"])
        assert (await alice.get("/api/history"))[0] == 403
        assert (await alice.get("/history"))[0] == 403
        status, page = await lead.get("/history")
        assert status == 200 and "Hate Symbols" in page and "alice" in page
        status, body = await lead.get("/api/history?reviewer=alice&limit=5")
        assert status == 200
        (entry,) = body["decisions"]
        assert entry["reviewer"] == "alice" and entry["verdict"] == "rejected"
        assert entry["model_labels"][0]["name"] == "Explicit Nudity"
        assert (await lead.get("/api/history?reviewer=bob"))[1]["decisions"] == []


async def test_the_plain_form_flow_works_without_javascript(
    console: Console, clock: FakeClock, publisher: CapturingPublisher
) -> None:
    first = await add_item(console, clock, "first", deadline=clock() + 100)
    second = await add_item(console, clock, "second", deadline=clock() + 200)
    async with reviewers(url_of(console), "alice") as (alice,):
        async with alice.http.post(
            "/queue/next", data={"csrf_token": alice.csrf}, allow_redirects=False
        ) as response:
            assert response.headers["Location"] == f"/items/{first}"
        async with alice.http.get(f"/items/{first}") as page:
            html = await page.text()
            assert 'value="Explicit Nudity"' in html and "model 72%" in html
        async with alice.http.post(
            f"/items/{first}/decision", data={"csrf_token": alice.csrf}, allow_redirects=False
        ) as response:
            assert response.status == 400  # neither labels nor "nothing objectionable"
        form = aiohttp.FormData(
            [("csrf_token", alice.csrf), ("label", "Explicit"), ("label", "Sex Toys")]
        )
        async with alice.http.post(
            f"/items/{first}/decision", data=form, allow_redirects=False
        ) as response:
            assert response.headers["Location"] == f"/items/{second}"  # straight to the next
        async with alice.http.post(
            f"/items/{second}/release", data={"csrf_token": alice.csrf}, allow_redirects=False
        ) as response:
            assert response.headers["Location"] == "/queue?msg=released"
    labels = orjson.loads(publisher.events[0][1])["detail"]["humanLoopName"]
    assert labels == first


async def test_trusted_header_only_from_trusted_proxies(tmp_path: Path, clock: FakeClock) -> None:
    env = base_env(
        tmp_path,
        MODERATION_CONSOLE_TRUSTED_HEADER="X-Forwarded-User",
        MODERATION_CONSOLE_TRUSTED_PROXIES="127.0.0.1/32",
        MODERATION_CONSOLE_USERS_FILE="",
    )
    async with running_console(env, clock=clock) as console:
        async with aiohttp.ClientSession(
            url_of(console), cookie_jar=aiohttp.CookieJar(unsafe=True)
        ) as proxied:
            async with proxied.get("/api/me", headers={"X-Forwarded-User": "sso-user"}) as me:
                assert me.status == 200
                assert (await me.json())["user"] == "sso-user"
            async with proxied.get("/api/me", headers={"X-Forwarded-User": "bad name!"}) as me:
                assert me.status == 401
        async with aiohttp.ClientSession(url_of(console)) as direct:
            async with direct.get("/api/me") as me:
                assert me.status == 401
            async with direct.get("/login") as page:
                assert "login proxy" in await page.text()
    distrusting = base_env(
        tmp_path,
        MODERATION_CONSOLE_TRUSTED_HEADER="X-Forwarded-User",
        MODERATION_CONSOLE_TRUSTED_PROXIES="10.0.0.0/8",
    )
    async with (
        running_console(distrusting, clock=clock) as console,
        aiohttp.ClientSession(url_of(console)) as spoofing,
        spoofing.get("/api/me", headers={"X-Forwarded-User": "alice"}) as me,
    ):
        assert me.status == 401  # 127.0.0.1 is not the proxy: the header means nothing


async def test_probes_and_metrics_are_open_and_count(console: Console, clock: FakeClock) -> None:
    await add_item(console, clock, "counted")
    await add_item(console, clock, "overdue", deadline=clock() - 1)
    await console.update_gauges()
    async with aiohttp.ClientSession(url_of(console)) as anonymous:
        for path in ("/healthz", "/readyz"):
            async with anonymous.get(path) as response:
                assert response.status == 200, path
        async with anonymous.get("/metrics") as response:
            text = await response.text()
    families = {
        family.name: family
        for family in text_string_to_metric_families(text)
        if not family.name.endswith("_created")  # the client's creation timestamps
    }
    # Only the console's own metrics: none of the pipeline's gauges as zeros, and not the sink's
    # moderation_reviews_pending (a dashboard sum() would count every review once per replica).
    assert set(families) == {family.name for family in ConsoleMetrics().registry.collect()}
    assert "moderation_reviews_pending" not in families
    assert families["moderation_console_items_pending"].samples[0].value == 1
    assert families["moderation_console_reviews_overdue"].samples[0].value == 1
    claims = {s.labels["outcome"] for s in families["moderation_console_claims"].samples}
    assert claims >= {"claimed", "taken", "gone", "empty"}  # every series from the first scrape
