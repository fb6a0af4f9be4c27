"""End to end, in a real browser: Debian's headless Chromium driven by Playwright.

The embedded broker, the real completion sink (``python -m service sink``) and the real console
(``python -m service.console``) run as processes; images come from a local image server (URL,
allow-listed for the test) and from S3 (moto). A reviewer logs in, works through the queue with
the keyboard, and the sink turns the answers into final human verdicts on the rejected and
approved topics.

Set ``UPDATE_CONSOLE_SCREENSHOT=1`` to (over)write ``docs/console.png`` from this run; the
screenshot is always saved under the test's temporary directory too.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import struct
import sys
import zlib
from asyncio.subprocess import Process
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import orjson
import pytest

from service.kafka.embedded import free_port
from tests.console.harness import PASSWORD, review_record, users_file
from tests.kafka_helpers import Topics, collect, create_topics, produce
from tests.processes import running_process
from tests.servers import serve_images

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(300)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[2]


def _skip_reason() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (run scripts/install-system-deps as root)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    return None


def picture(width: int = 480, height: int = 320) -> bytes:
    """A real PNG with something to look at: a sunset-coloured gradient with a horizon."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = bytearray()
    for y in range(height):
        rows.append(0)
        for x in range(width):
            if y > height * 0.7:
                pixel = (40, 60 + (x * 40) // width, 90)
            else:
                pixel = (250 - y // 3, 120 + y // 4, 80 + (x * 90) // width)
            rows.extend(pixel)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(rows)))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
async def image_server() -> AsyncIterator[str]:
    async with serve_images({"/uploads/beach.png": picture()}) as origin:
        yield origin


def process(
    args: list[str], env: dict[str, str], log: Path
) -> AbstractAsyncContextManager[Process]:
    return running_process(args, env, log)


async def wait_ready(url: str, proc: asyncio.subprocess.Process, log: Path) -> None:
    deadline = asyncio.get_running_loop().time() + 60
    async with aiohttp.ClientSession() as http:
        while True:
            assert proc.returncode is None, log.read_text()[-3000:]
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{url}/readyz") as response:
                    if response.status == 200:
                        return
            assert asyncio.get_running_loop().time() < deadline, log.read_text()[-3000:]
            await asyncio.sleep(0.3)


def finals(records: list) -> dict[str, dict]:
    return {
        value["id"]: value
        for value in (orjson.loads(r.value) for r in records)
        if value.get("decided_by") == "human"
    }


async def test_a_reviewer_works_the_queue_in_a_real_browser(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, moto_s3: str, image_server: str
) -> None:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    import aioboto3
    from playwright.async_api import async_playwright, expect

    completions = f"{topics.input}.completions"
    await create_topics(
        kafka_bootstrap,
        [topics.review, completions, topics.approved, topics.rejected, topics.dlq],
        2,
    )
    session = aioboto3.Session()
    async with session.client("s3", region_name="us-east-1", endpoint_url=moto_s3) as s3:
        with contextlib.suppress(Exception):
            await s3.create_bucket(Bucket="uploads")
        await s3.put_object(Bucket="uploads", Key="2026/11/dog.png", Body=picture(360, 360))

    outputs = tmp_path / "outputs"
    outputs.mkdir()
    console_port = free_port()
    console_url = f"http://127.0.0.1:{console_port}"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MODERATION_", "KAFKA_"))}
    shared = (
        base
        | topics.env()
        | {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "KAFKA_ENABLE_IDEMPOTENCE": "false",
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "AWS_REGION": "us-east-1",
            "S3_ENDPOINT_URL": moto_s3,
            "MODERATION_COMPLETIONS_TOPIC": completions,
            "MODERATION_REVIEW_LOCAL_STORE": str(outputs),
            "MODERATION_HTTP_HOST": "127.0.0.1",
            "MODERATION_HTTP_PORT": "0",
            "LOG_FORMAT": "text",
        }
    )
    sink_env = shared | {"SINK_PRODUCER_MAX_BATCH_SIZE": "16"}
    console_env = shared | {
        "MODERATION_CONSOLE_HOST": "127.0.0.1",
        "MODERATION_CONSOLE_PORT": str(console_port),
        "MODERATION_CONSOLE_PUBLIC_URL": console_url,
        "MODERATION_CONSOLE_SECRET": "browser-test-secret-" + "y" * 32,
        "MODERATION_CONSOLE_USERS_FILE": str(users_file(tmp_path)),
        "MODERATION_CONSOLE_LEADS": "alice",
        "MODERATION_CONSOLE_DATABASE": f"sqlite:///{tmp_path / 'console.db'}",
        "MODERATION_FETCH_ALLOWED_NETWORKS": "127.0.0.1/32",
    }

    now = datetime.now(UTC).timestamp()
    swimwear = [
        {"name": "Swimwear or Underwear", "parent": "", "confidence": 61.4, "taxonomy_level": 1}
    ]
    nudity = [
        {"name": "Explicit Nudity", "parent": "Explicit", "confidence": 71.9, "taxonomy_level": 2},
        {"name": "Explicit", "parent": "", "confidence": 71.9, "taxonomy_level": 1},
        {"name": "Weapons", "parent": "Violence", "confidence": 55.0, "taxonomy_level": 2},
    ]
    loop_a, record_a = review_record(
        "upload-7731",
        created=now - 300,
        deadline=now + 1800,
        image={"url": f"{image_server}/uploads/beach.png"},
        labels=nudity,
    )
    loop_b, record_b = review_record(
        "upload-7732",
        created=now - 200,
        deadline=now + 2400,
        image={"s3": {"bucket": "uploads", "key": "2026/11/dog.png"}},
        labels=swimwear,
    )
    loop_c, record_c = review_record(
        "upload-7733", created=now - 100, deadline=now + 3000, labels=swimwear
    )
    await produce(
        kafka_bootstrap,
        topics.review,
        [
            (b"upload-7731", record_a, []),
            (b"upload-7732", record_b, []),
            (b"upload-7733", record_c, []),
        ],
    )

    sink_log, console_log = tmp_path / "sink.log", tmp_path / "console.log"
    async with (
        process([sys.executable, "-m", "service", "sink"], sink_env, sink_log) as sink,
        process([sys.executable, "-m", "service.console"], console_env, console_log) as console,
        async_playwright() as playwright,
    ):
        await wait_ready(console_url, console, console_log)
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            context = await browser.new_context(viewport={"width": 1360, "height": 900})
            page = await context.new_page()
            page.set_default_timeout(20_000)

            # Log in: any page sends an anonymous visitor to the login form first.
            await page.goto(f"{console_url}/queue")
            assert "/login" in page.url
            await page.fill('input[name="username"]', "alice")
            await page.fill('input[name="password"]', PASSWORD)
            await page.click('#login button[type="submit"]')
            await page.wait_for_url(f"{console_url}/queue")

            # The queue fills from the review topic, nearest deadline first.
            rows = page.locator("table.queue tbody tr")
            for _ in range(120):
                if await rows.count() == 3:
                    break
                await asyncio.sleep(0.5)
                await page.reload()
            assert await rows.count() == 3, console_log.read_text()[-3000:]
            await expect(rows.first).to_contain_text("upload-7731")

            # n: claim the next item. The image comes through the console's proxy.
            await page.keyboard.press("n")
            await page.wait_for_url(f"{console_url}/items/{loop_a}")
            await page.wait_for_function(
                "() => { const i = document.querySelector('#subject');"
                " return i && i.complete && i.naturalWidth > 0; }"
            )
            await expect(page.locator("ul.reasons")).to_contain_text("review threshold")
            await expect(page.locator("table.labels")).to_contain_text("71.9%")

            # r: search the taxonomy; Enter ticks the first match; Esc leaves the search.
            await page.keyboard.press("r")
            await page.keyboard.type("explicit nud")
            await expect(page.locator('#tree li[data-label="Weapons"]')).to_be_hidden()
            await page.keyboard.press("Enter")
            await page.keyboard.press("Escape")
            await expect(page.locator('#tree input[value="Explicit Nudity"]')).to_be_checked()
            await page.locator('#tree input[value="Weapons"]').check()
            await expect(page.locator("#chosen")).to_contain_text("Explicit Nudity")
            await expect(page.locator("#chosen")).to_contain_text("Weapons")
            await page.eval_on_selector("#tree", "tree => { tree.scrollTop = 0; }")
            shot = tmp_path / "console.png"
            await page.screenshot(path=str(shot), full_page=False)
            if os.environ.get("UPDATE_CONSOLE_SCREENSHOT") == "1":
                shutil.copyfile(shot, ROOT / "docs" / "console.png")

            # s: submit; the console moves straight on to the next item (S3 image).
            await page.keyboard.press("s")
            await page.wait_for_url(f"{console_url}/items/{loop_b}")
            await page.wait_for_function(
                "() => { const i = document.querySelector('#subject');"
                " return i && i.complete && i.naturalWidth > 0; }"
            )
            # a: nothing objectionable; s: submit.
            await page.keyboard.press("a")
            await expect(page.locator("#nothing")).to_be_checked()
            await page.keyboard.press("s")

            # The third image was sent inline: only its hash exists, and the page says so.
            await page.wait_for_url(f"{console_url}/items/{loop_c}")
            await expect(page.locator("#noimage")).to_contain_text("Inline image, not stored")
            await page.keyboard.press("s")  # nothing chosen: refused in the page, not sent
            await expect(page.locator("#form-error")).to_contain_text("Choose the labels")
            assert page.url.endswith(f"/items/{loop_c}")

            # The lead's history shows who decided what.
            await page.goto(f"{console_url}/history")
            history = page.locator("table.history tbody tr")
            await expect(history).to_have_count(2)
            await expect(history.first).to_contain_text("nothing objectionable")
            await expect(history.nth(1)).to_contain_text("Explicit Nudity, Weapons")

            # Someone without a session sees neither the image nor the API.
            stranger = await browser.new_context()
            anonymous = await stranger.new_page()
            await anonymous.goto(f"{console_url}/items/{loop_c}/image")
            assert "/login" in anonymous.url
            response = await stranger.request.get(f"{console_url}/api/queue")
            assert response.status == 401
            await stranger.close()
        finally:
            await browser.close()

        # The sink, which cannot tell the console from A2I, publishes the final verdicts.
        deadline = asyncio.get_running_loop().time() + 90
        while True:
            records = await collect(
                kafka_bootstrap, [topics.rejected, topics.approved], 10**9, timeout_s=2
            )
            decided = finals(records)
            if {"upload-7731", "upload-7732"} <= decided.keys():
                break
            assert sink.returncode is None, sink_log.read_text()[-3000:]
            assert asyncio.get_running_loop().time() < deadline, sink_log.read_text()[-3000:]
            await asyncio.sleep(1)

    rejected, approved = decided["upload-7731"], decided["upload-7732"]
    assert rejected["verdict"] == "rejected"
    assert sorted(label["name"] for label in rejected["labels"]) == ["Explicit Nudity", "Weapons"]
    assert rejected["human_review"]["workers"] == ["alice"]
    assert rejected["attributes"] == {"uploader": "user-of-upload-7731"}
    assert approved["verdict"] == "approved" and approved["labels"] == []
    assert "upload-7733" not in decided  # still waiting for a person
    topics_of = {orjson.loads(r.value)["id"]: r.topic for r in records}
    assert topics_of["upload-7731"] == topics.rejected
    assert topics_of["upload-7732"] == topics.approved
