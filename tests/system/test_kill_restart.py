"""The real process: load, SIGKILL mid-run, restart, SIGTERM; count every message's outcome."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from tests.fakes.rekognition import FakeRekognition
from tests.images import BORDERLINE, EXPLICIT, b64, png
from tests.integration.test_pipeline import image_server
from tests.kafka_helpers import Topics, collect, committed, create_topics, produce, request
from tests.processes import local_settings, process_env

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PARTITIONS = 3
PER_KIND = 30  # 9 kinds x 30 + 3 oversized = 273 messages


def build_messages(origin: str) -> dict[str, tuple[bytes, str]]:
    """key -> (value, expected outcome kind)."""
    messages: dict[str, tuple[bytes, str]] = {}
    for i in range(PER_KIND):
        kinds = {
            f"s3-ok-{i}": ({"s3": {"bucket": "bucket", "key": "clean.jpg"}}, "approved"),
            f"s3-bad-{i}": ({"s3": {"bucket": "bucket", "key": "explicit.jpg"}}, "rejected"),
            f"bytes-{i}": ({"bytes": b64(png(BORDERLINE, salt=str(i)))}, "review"),
            f"url-{i}": ({"url": f"{origin}/img{i % 5}.png"}, "rejected"),
            f"nonimage-{i}": ({"bytes": b64(b"GIF89a not allowed" + bytes([i]))}, "dlq"),
            f"forbidden-{i}": ({"url": f"http://10.0.0.{i + 1}/x.png"}, "dlq"),
        }
        for key, (image, kind) in kinds.items():
            messages[key] = (request(key, image), kind)
        messages[f"malformed-{i}"] = (b'{"id": "x", "image": ' + bytes([i]), "dlq")
        messages[f"missing-{i}"] = (orjson.dumps({"id": f"missing-{i}"}), "dlq")
        if i % 10 == 0:  # a few multi-megabyte records, not hundreds of megabytes
            messages[f"oversized-{i}"] = (
                request(f"oversized-{i}", {"bytes": "A" * 7_100_000}),
                "dlq",
            )
        messages[f"s3-missing-{i}"] = (
            request(f"s3-missing-{i}", {"s3": {"bucket": "bucket", "key": "gone"}}),
            "dlq",
        )
    return messages


def service_env(bootstrap: str, topics: Topics, fake: FakeRekognition) -> dict[str, str]:
    return process_env(
        local_settings(bootstrap, topics)
        | {
            "REKOGNITION_ENDPOINT_URL": fake.endpoint_url,
            "AWS_ENDPOINT_URL_S3": fake.s3_endpoint_url or "",  # the SDK's own variable
            "MODERATION_TPS": "100",
            "MODERATION_MAX_IN_FLIGHT": "24",
            "MODERATION_FETCH_ALLOWED_NETWORKS": "127.0.0.1/32",
            "MODERATION_SHUTDOWN_GRACE_S": "10",
        }
    )


async def start_service(env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    """Started by hand, not ``running_process``: this test kills and restarts it itself."""
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service", "run", env=env, stdout=out, stderr=out
        )


async def outcomes_by_key(
    bootstrap: str, topics: Topics, expected: set[str], timeout_s: float
) -> dict[str, Counter[str]]:
    kind_of = {topic: kind for kind, topic in topics.outputs.items()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        records = await collect(bootstrap, list(topics.outputs.values()), 10**9, timeout_s=3)
        seen: dict[str, Counter[str]] = {}
        for record in records:
            seen.setdefault(record.key.decode(), Counter())[kind_of[record.topic]] += 1
        if expected <= set(seen) or loop.time() > deadline:
            return seen
        await asyncio.sleep(0.5)


async def test_sigkill_mid_run_loses_nothing(
    kafka_bootstrap: str, topics: Topics, fake_rekognition: FakeRekognition, tmp_path: Path
) -> None:
    fake_rekognition.set_latency(0.05, 0.02)
    await fake_rekognition.put_object("bucket", "clean.jpg", labels=[])
    await fake_rekognition.put_object("bucket", "explicit.jpg", labels=[EXPLICIT])
    await create_topics(kafka_bootstrap, [topics.input, *topics.outputs.values()], PARTITIONS)
    log = tmp_path / "service.log"
    routes = {f"/img{i}.png": png(EXPLICIT, salt=f"u{i}") for i in range(5)}
    async with image_server(routes) as origin:
        messages = build_messages(origin)
        await produce(
            kafka_bootstrap,
            topics.input,
            [
                (key.encode(), value, [("trace-id", key.encode())])
                for key, (value, _) in messages.items()
            ],
        )
        env = service_env(kafka_bootstrap, topics, fake_rekognition)

        first = await start_service(env, log)
        for _ in range(600):  # kill once real work is under way, well before the end
            if fake_rekognition.stats.calls >= 40:
                break
            await asyncio.sleep(0.05)
        assert fake_rekognition.stats.calls >= 40, log.read_text()[-3000:]
        first.send_signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL

        second = await start_service(env, log)
        seen = await outcomes_by_key(kafka_bootstrap, topics, set(messages), timeout_s=120)
        second.send_signal(signal.SIGTERM)
        exit_code = await asyncio.wait_for(second.wait(), 30)

    missing = set(messages) - set(seen)
    assert not missing, (
        f"{len(missing)} lost, e.g. {sorted(missing)[:5]}\n{log.read_text()[-3000:]}"
    )
    for key, (_, kind) in messages.items():
        assert set(seen[key]) == {kind}, (key, seen[key])  # one topic; the right one
    duplicates = sum(sum(c.values()) - 1 for c in seen.values())
    print(f"\n{len(messages)} messages, {duplicates} redelivered duplicates after SIGKILL")
    assert exit_code == 0, log.read_text()[-3000:]
    offsets = await committed(kafka_bootstrap, topics.group, topics.input, PARTITIONS)
    assert sum(offsets.values()) == len(messages)
