"""Helpers for the console tests: settings, a fake clock, a capturing publisher, review records,
and a reviewer that talks to the running console over real HTTP like a browser would."""

from __future__ import annotations

import contextlib
import hashlib
import re
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from service.console.a2i import DeliveryError
from service.console.app import Console
from service.console.settings import ConsoleSettings
from service.console.storage import ConsoleStore
from service.console.users import hash_password
from service.settings import Settings

PASSWORD = "correct horse battery"
USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "lead")
SECRET = "test-secret-" + "x" * 40

_HASHES: dict[str, str] = {}


def users_file(directory: Path) -> Path:
    """Accounts with cheap scrypt parameters (the cost travels with each hash)."""
    if not _HASHES:
        encoded = hash_password(PASSWORD, n=2**10, r=8, p=1)
        _HASHES.update(dict.fromkeys(USERS, encoded))
    path = directory / "users.txt"
    path.write_text("".join(f"{name}:{h}\n" for name, h in _HASHES.items()), encoding="utf-8")
    return path


def iso(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FakeClock:
    def __init__(self, start: float | None = None) -> None:
        self.now = start if start is not None else datetime.now(UTC).timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class CapturingPublisher:
    events: list[tuple[bytes, bytes]] = field(default_factory=list)
    fail: bool = False

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def publish(self, key: bytes, value: bytes) -> None:
        if self.fail:
            raise DeliveryError("broker down (test)")
        self.events.append((key, value))


def base_env(tmp: Path, **extra: str) -> dict[str, str]:
    (tmp / "outputs").mkdir(exist_ok=True)
    env = {
        "AWS_REGION": "us-east-1",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",  # unused: tests inject the publisher
        "MODERATION_REVIEW_LOCAL_STORE": str(tmp / "outputs"),
        "MODERATION_CONSOLE_SECRET": SECRET,
        "MODERATION_CONSOLE_USERS_FILE": str(users_file(tmp)),
        "MODERATION_CONSOLE_DATABASE": f"sqlite:///{tmp / 'console.db'}",
        "MODERATION_CONSOLE_HOST": "127.0.0.1",
        "MODERATION_CONSOLE_PORT": "0",
        "MODERATION_CONSOLE_LEADS": "lead",
        "MODERATION_CONSOLE_CLAIM_TTL_S": "300",
        "MODERATION_FETCH_ALLOWED_NETWORKS": "127.0.0.1/32",
    }
    env.update(extra)
    return env


def settings_from(env: Mapping[str, str]) -> tuple[Settings, ConsoleSettings]:
    base = Settings.from_env(env)
    return base, ConsoleSettings.from_env(env, base)


@contextlib.asynccontextmanager
async def running_console(
    env: Mapping[str, str],
    *,
    clock: FakeClock,
    publisher: CapturingPublisher | None = None,
    store: ConsoleStore | None = None,
) -> AsyncIterator[Console]:
    base, console_settings = settings_from(env)
    console = Console(
        base,
        console_settings,
        clock=clock,
        publisher=publisher or CapturingPublisher(),
        intake=False,
        store=store,
    )
    await console.start()
    try:
        yield console
    finally:
        await console.stop()


def review_record(
    request_id: str,
    *,
    loop: str | None = None,
    created: float,
    deadline: float,
    image: dict[str, Any] | None = None,
    labels: list[dict[str, Any]] | None = None,
    requeued: int | None = None,
    mode: str = "self_hosted",
) -> tuple[str, bytes]:
    loop = loop or "m" + hashlib.sha256(request_id.encode()).hexdigest()[:62]
    review: dict[str, Any] = {
        "human_loop_name": loop,
        "mode": mode,
        "flow_definition_arn": None,
        "human_loop_arn": None,
        "activation_reasons": ["Explicit Nudity confidence 72.0 >= review threshold 50"],
        "activation_results": {"Conditions": []},
        "created_at": iso(created),
        "deadline": iso(deadline),
    }
    if requeued is not None:
        review["requeued"] = requeued
    record = {
        "schema_version": 1,
        "id": request_id,
        "verdict": "review",
        "decided_by": "model",
        "labels": labels
        if labels is not None
        else [
            {
                "name": "Explicit Nudity",
                "parent": "Explicit",
                "confidence": 72.0,
                "taxonomy_level": 2,
            }
        ],
        "model_version": "7.0",
        "reasons": [{"rule": "review_threshold", "policy": "default"}],
        "attributes": {"uploader": f"user-of-{request_id}"},
        "image": image or {"bytes": {"sha256": "ab" * 32, "size": 1234}},
        "source": {"topic": "moderation.requests", "partition": 0, "offset": 7},
        "received_at": iso(created),
        "decided_at": iso(created),
        "review": review,
    }
    return loop, orjson.dumps(record)


async def add_item(console: Console, clock: FakeClock, request_id: str, **kwargs: Any) -> str:
    kwargs.setdefault("created", clock() - 60)
    kwargs.setdefault("deadline", clock() + 3600)
    loop, value = review_record(request_id, **kwargs)
    assert console.intake is None
    from service.console.intake import store_review
    from service.review.records import parse_review_record

    parsed = parse_review_record(value, max_bytes=len(value))
    await store_review(console.store, parsed, value, clock())
    return loop


_TOKEN = re.compile(r'name="login_token" value="([^"]+)"')


class Reviewer:
    """One person with their own cookie jar, speaking to the console over HTTP."""

    def __init__(self, base_url: str, name: str, password: str = PASSWORD) -> None:
        self.base_url = base_url
        self.name = name
        self.password = password
        self.http = aiohttp.ClientSession(
            base_url, cookie_jar=aiohttp.CookieJar(unsafe=True), raise_for_status=False
        )
        self.csrf = ""

    async def close(self) -> None:
        await self.http.close()

    async def login_form_token(self) -> str:
        """Open the login page (which sets the login cookie) and return its form token."""
        async with self.http.get("/login") as page:
            match = _TOKEN.search(await page.text())
            assert match, "login form has no token"
        return match.group(1)

    async def login_response(self, password: str | None = None) -> aiohttp.ClientResponse:
        token = await self.login_form_token()
        return await self.http.post(
            "/login",
            data={
                "username": self.name,
                "password": password or self.password,
                "login_token": token,
                "next": "/queue",
            },
            allow_redirects=False,
        )

    async def login(self) -> Reviewer:
        response = await self.login_response()
        assert response.status == 303, await response.text()
        response.release()
        async with self.http.get("/api/me") as me:
            assert me.status == 200
            self.csrf = (await me.json())["csrf_token"]
        return self

    async def post(self, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.post(
            path, json=body, headers={"X-CSRF-Token": self.csrf}, allow_redirects=False
        ) as response:
            return response.status, await _body(response)

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.http.get(path, allow_redirects=False) as response:
            return response.status, await _body(response)

    async def claim(self, loop: str) -> tuple[int, Any]:
        return await self.post(f"/api/items/{loop}/claim")

    async def decide(
        self, loop: str, labels: list[str] | None = None, *, nothing: bool = False
    ) -> tuple[int, Any]:
        return await self.post(
            f"/api/items/{loop}/decision",
            {"labels": labels or [], "nothing_objectionable": nothing},
        )


async def _body(response: aiohttp.ClientResponse) -> Any:
    data = await response.read()
    if response.content_type == "application/json":
        return orjson.loads(data)
    return data.decode(errors="replace")


@contextlib.asynccontextmanager
async def reviewers(base_url: str, *names: str) -> AsyncIterator[list[Reviewer]]:
    people = [Reviewer(base_url, name) for name in names]
    try:
        for person in people:
            await person.login()
        yield people
    finally:
        for person in people:
            await person.close()


def url_of(console: Console) -> str:
    return f"http://127.0.0.1:{console.port}"


def unique() -> str:
    return uuid.uuid4().hex[:8]
