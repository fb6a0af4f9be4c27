"""Manual check that each peer works end to end, with a rough msgs/s for each.

Starts the embedded broker and the fake Rekognition (in this process, 50 ms per call, no quota),
then for each peer: fresh 3-partition topics, 200 requests (every 10th scripted to be rejected,
every 10th+5 to go to review), the peer as a subprocess, until 200 distinct verdicts arrived and
match; then SIGTERM and an exit code of 0 is required. Peer stderr goes to ``--logdir``.

    .venv/bin/python -m bench.peers.smoke [--peers sequential,faust_agent,raw_loop] [--count 200]

Not a benchmark (see bench/quota.py): 200 messages measure start-up noise as much as throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from service.kafka.embedded import EmbeddedBroker
from tests.fakes.rekognition import LABEL_MARKER, FakeRekognition
from tests.kafka_helpers import create_topics as create_topics_with

ROOT = Path(__file__).resolve().parents[2]
PEERS = ("sequential", "faust_agent", "raw_loop")
PARTITIONS = 3
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
READY_TIMEOUT_S = 60.0  # faust joins after ~3 s on Tansu with 6 s sessions; leave room
DONE_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 20.0


@dataclass
class Outcome:
    peer: str
    ready_s: float = float("nan")
    run_s: float = float("nan")
    received: int = 0
    duplicates: int = 0
    wrong: int = 0
    exit_code: int | None = None
    exit_s: float = float("nan")
    committed: int = -1
    problem: str = ""

    @property
    def rate(self) -> float:
        return self.received / self.run_s if self.run_s > 0 else float("nan")

    @property
    def ok(self) -> bool:
        return not self.problem and self.exit_code == 0 and self.wrong == 0


def sdk_env() -> dict[str, str]:
    """Dummy credentials so the SDK signs requests and never looks for an instance role."""
    return {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "PYTHONUNBUFFERED": "1",
    }


def request(i: int) -> tuple[str, bytes, str]:
    """``(id, record value, expected verdict)``; the salt makes every image distinct."""
    image = PNG + str(i).encode()
    expected = "approved"
    if i % 10 == 0:
        label = {"Name": "Explicit Nudity", "ParentName": "Explicit", "Confidence": 95.0}
        image += LABEL_MARKER + orjson.dumps([label])
        expected = "rejected"
    elif i % 10 == 5:
        label = {"Name": "Swimwear or Underwear", "Confidence": 60.0}
        image += LABEL_MARKER + orjson.dumps([label])
        expected = "review"
    rid = f"m{i}"
    value = orjson.dumps({"id": rid, "image": {"bytes": base64.b64encode(image).decode()}})
    return rid, value, expected


async def create_topics(bootstrap: str, names: Sequence[str]) -> None:
    await create_topics_with(bootstrap, list(names), PARTITIONS)


async def produce(bootstrap: str, topic: str, count: int) -> dict[str, str]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    expected: dict[str, str] = {}
    try:
        acks = []
        for i in range(count):
            rid, value, verdict = request(i)
            expected[rid] = verdict
            acks.append(await producer.send(topic, value, key=rid.encode()))
        await asyncio.gather(*acks)
    finally:
        await producer.stop()
    return expected


async def collect(
    bootstrap: str, topic: str, want: int, seen: dict[str, str], done: asyncio.Event
) -> int:
    """Read verdicts from the start of ``topic`` into ``seen`` until ``want`` ids; duplicates."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    duplicates = 0
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        while len(seen) < want:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    verdict = orjson.loads(record.value)
                    if verdict["id"] in seen:
                        duplicates += 1
                    seen[verdict["id"]] = verdict["verdict"]
        done.set()
        return duplicates
    finally:
        await consumer.stop()


async def committed(bootstrap: str, group: str, topic: str) -> int:
    """Offsets the group committed on ``topic``, summed: records done (partitions start at 0)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        offsets = [await consumer.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)]
    finally:
        await consumer.stop()
    return sum(o or 0 for o in offsets)


async def run_peer(
    peer: str, bootstrap: str, endpoint: str, count: int, concurrency: int, logdir: Path
) -> Outcome:
    outcome = Outcome(peer)
    tag = f"{peer}-{os.getpid()}-{time.monotonic_ns()}"
    topics = (f"smoke.{tag}.requests", f"smoke.{tag}.verdicts")
    await create_topics(bootstrap, topics)
    expected = await produce(bootstrap, topics[0], count)
    seen: dict[str, str] = {}
    done = asyncio.Event()
    collector = asyncio.create_task(collect(bootstrap, topics[1], count, seen, done))
    argv = [
        *("-m", f"bench.peers.{peer}", "--bootstrap", bootstrap),
        *("--input", topics[0], "--output", topics[1], "--group", f"smoke-{tag}"),
        *("--endpoint", endpoint, "--concurrency", str(concurrency)),
    ]
    log_path = logdir / f"{peer}.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *argv,
            cwd=ROOT,
            env=sdk_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT_S)
        if line.strip() != b"ready":
            outcome.problem = f"first stdout line {line!r}, not b'ready'"
            return outcome
        ready = time.monotonic()
        outcome.ready_s = ready - started
        await asyncio.wait_for(done.wait(), DONE_TIMEOUT_S)
        outcome.run_s = time.monotonic() - ready
        outcome.duplicates = await collector
    except TimeoutError:
        outcome.problem = "timed out (ready or verdicts)"
    finally:
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collector
        outcome.received = len(seen)
        outcome.wrong = sum(1 for rid, v in seen.items() if expected.get(rid) != v)
        if proc.returncode is None:
            terminated = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), EXIT_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                outcome.problem = outcome.problem or "did not exit after SIGTERM"
            outcome.exit_s = time.monotonic() - terminated
        outcome.exit_code = proc.returncode
        outcome.committed = await committed(bootstrap, f"smoke-{tag}", topics[0])
        extra = (await proc.stdout.read()).strip() if proc.stdout else b""
        if extra and not outcome.problem:
            outcome.problem = f"more stdout after ready: {extra[:200]!r}"
    return outcome


async def main_async(args: argparse.Namespace) -> int:
    logdir = Path(args.logdir or tempfile.mkdtemp(prefix="peers-smoke-"))
    logdir.mkdir(parents=True, exist_ok=True)
    broker = EmbeddedBroker()
    await broker.start()
    try:
        async with FakeRekognition(latency_s=args.latency) as fake:
            outcomes = []
            for peer in args.peers.split(","):
                calls_before = fake.stats.calls
                outcome = await run_peer(
                    peer,
                    broker.bootstrap_servers,
                    fake.endpoint_url,
                    args.count,
                    args.concurrency,
                    logdir,
                )
                outcomes.append(outcome)
                print(
                    f"{peer:12} ready after {outcome.ready_s:5.1f} s, {outcome.received}/"
                    f"{args.count} verdicts in {outcome.run_s:6.2f} s = {outcome.rate:7.1f} msgs/s,"
                    f" wrong {outcome.wrong}, dup {outcome.duplicates},"
                    f" calls {fake.stats.calls - calls_before}, committed {outcome.committed},"
                    f" exit {outcome.exit_code} after {outcome.exit_s:.1f} s"
                    f"{'' if outcome.ok else '  FAIL ' + outcome.problem}",
                    flush=True,
                )
    finally:
        await broker.stop()
    print(f"peer stderr logs: {logdir}")
    return 0 if all(o.ok for o in outcomes) else 1


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="run every peer once over a few messages")
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.05, help="fake call latency, s")
    parser.add_argument("--logdir", default=None)
    sys.exit(asyncio.run(main_async(parser.parse_args(argv))))


if __name__ == "__main__":
    main()
