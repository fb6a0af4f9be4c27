"""Quota benchmark: does the service deliver verdicts at the Rekognition TPS quota, no faster?

Everything runs on this machine: the embedded broker (in this process), the project's fake
Rekognition endpoint enforcing quota Q with latency L (a subprocess), the service under test (one
or two real ``python -m service run`` processes) and the peers (subprocesses from bench/peers).

    .venv/bin/python -m bench.quota                 # every scenario, ~15 minutes
    .venv/bin/python -m bench.quota --only q50 --duration 20
    .venv/bin/python -m bench.quota --only moving   # the quota moves 60/30/60/90, TPS=90 a ceiling

Measured per scenario, over a window after warm-up: verdicts/s (by the verdict records' broker
timestamps), ratio to Q, throttled calls as % of calls (from the fake's counters), p50/p99 added
latency (verdict timestamp - request timestamp - backend latency, only where the backend latency
is fixed), and the service's peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import statistics
import sys
import time
from asyncio.subprocess import Process
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from service.kafka.embedded import EmbeddedBroker, free_port
from tests.kafka_helpers import create_topics as create_topics_with
from tests.processes import running_process

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
PARTITIONS = 6


@dataclass
class Result:
    name: str
    system: str
    quota: float | None
    verdicts_per_s: float
    throttled_pct: float | None
    added_p50_ms: float | None = None
    added_p99_ms: float | None = None
    rss_mib: float | None = None
    note: str = ""

    def row(self) -> str:
        def fmt(value: float | None, spec: str) -> str:
            return "-" if value is None else format(value, spec)

        ratio = fmt(self.verdicts_per_s / self.quota if self.quota else None, ".3f")
        return (
            f"| {self.name} | {self.system} | {fmt(self.quota, '.0f')} | "
            f"{self.verdicts_per_s:.1f} | {ratio} | {fmt(self.throttled_pct, '.2f')} | "
            f"{fmt(self.added_p50_ms, '.1f')} | {fmt(self.added_p99_ms, '.1f')} | "
            f"{fmt(self.rss_mib, '.0f')} | {self.note} |"
        )


HEADER = (
    "| scenario | system | Q | verdicts/s | ratio to Q | throttled % | added p50 ms | "
    "added p99 ms | peak RSS MiB | note |\n|---|---|---|---|---|---|---|---|---|---|"
)


@dataclass
class Stack:
    bootstrap: str
    fake_url: str
    tag: str
    counter: int = 0
    produced_at: dict[str, int] = field(default_factory=dict)

    def topics(self, name: str) -> dict[str, str]:
        base = f"b{self.tag}{name}"
        return {
            "input": f"{base}.requests",
            "approved": f"{base}.approved",
            "rejected": f"{base}.rejected",
            "review": f"{base}.review",
            "dlq": f"{base}.dlq",
        }


def sdk_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODERATION_", "KAFKA_"))}
    env |= {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "PYTHONPATH": str(ROOT),
    }
    return env


async def fake_control(
    stack: Stack, path: str, body: dict[str, object] | None = None
) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        if body is None:
            async with session.get(f"{stack.fake_url}{path}") as response:
                return await response.json()  # type: ignore[no-any-return]
        async with session.post(f"{stack.fake_url}{path}", json=body) as response:
            response.raise_for_status()
            return {}


async def create_topics(bootstrap: str, names: Sequence[str]) -> None:
    await create_topics_with(bootstrap, list(names), PARTITIONS)


def request_value(stack: Stack, key: str) -> bytes:
    image = PNG + key.encode()
    return orjson.dumps({"id": key, "image": {"bytes": base64.b64encode(image).decode()}})


async def produce_backlog(stack: Stack, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, linger_ms=5)
    await producer.start()
    try:
        batch = []
        for _ in range(count):
            stack.counter += 1
            key = f"m{stack.counter}"
            batch.append(
                await producer.send(topic, key=key.encode(), value=request_value(stack, key))
            )
        await asyncio.gather(*batch)
    finally:
        await producer.stop()


async def produce_paced(stack: Stack, topic: str, rate: float, seconds: float) -> None:
    """Open-loop load at ``rate`` msgs/s; records each request's timestamp for latency."""
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, linger_ms=0)
    await producer.start()
    try:
        start = time.monotonic()
        sent = 0
        pending = []
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(elapsed * rate)
            while sent < due:
                stack.counter += 1
                sent += 1
                key = f"m{stack.counter}"
                pending.append(
                    await producer.send(topic, key=key.encode(), value=request_value(stack, key))
                )
            await asyncio.sleep(0.002)
        for future in asyncio.as_completed(pending):
            await future
    finally:
        await producer.stop()


class Observer:
    """Reads the verdict topics as they fill: (verdict timestamp ms, key) per record."""

    def __init__(self, bootstrap: str, topics: Sequence[str]) -> None:
        self._bootstrap = bootstrap
        self._topics = list(topics)
        self.records: list[tuple[int, str]] = []
        self.errors = 0  # peers publish "error" verdicts when their SDK retries give up
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Observer:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, auto_offset_reset="earliest"
        )
        await self._consumer.start()
        tps = [TopicPartition(t, p) for t in self._topics for p in range(PARTITIONS)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                for r in batch:
                    if r.key is None:
                        continue
                    if orjson.loads(r.value).get("verdict") == "error":
                        self.errors += 1
                    else:
                        self.records.append((r.timestamp, r.key.decode()))

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    def rate_between(self, start_ms: int, end_ms: int) -> float:
        count = sum(1 for ts, _ in self.records if start_ms <= ts < end_ms)
        return count / ((end_ms - start_ms) / 1000)


class InputTimes:
    """Request timestamps by key, read back from the input topic (the producer's CreateTime)."""

    @staticmethod
    async def read(bootstrap: str, topic: str) -> dict[str, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            times: dict[str, int] = {}
            idle = 0
            while idle < 3:
                batches = await consumer.getmany(timeout_ms=300)
                idle = 0 if batches else idle + 1
                for batch in batches.values():
                    times.update((r.key.decode(), r.timestamp) for r in batch if r.key)
            return times
        finally:
            await consumer.stop()


def process(
    argv: list[str], env: dict[str, str], log: Path
) -> AbstractAsyncContextManager[Process]:
    return running_process(argv, env, log, cwd=ROOT)


def peak_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def service_env(stack: Stack, topics: dict[str, str], tps: float, group: str) -> dict[str, str]:
    return sdk_env() | {
        "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap,
        "KAFKA_ENABLE_IDEMPOTENCE": "false",
        "KAFKA_SESSION_TIMEOUT_MS": "6000",
        "REKOGNITION_ENDPOINT_URL": stack.fake_url,
        "MODERATION_TPS": str(tps),
        "MODERATION_HTTP_PORT": "0",
        "MODERATION_HTTP_HOST": "127.0.0.1",
        "MODERATION_GROUP_ID": group,
        "LOG_LEVEL": "WARNING",
        # Tansu answers a fetch only at its max wait, which becomes added latency (README).
        "KAFKA_FETCH_MAX_WAIT_MS": "10",
        "MODERATION_INPUT_TOPIC": topics["input"],
        "MODERATION_APPROVED_TOPIC": topics["approved"],
        "MODERATION_REJECTED_TOPIC": topics["rejected"],
        "MODERATION_REVIEW_TOPIC": topics["review"],
        "MODERATION_DLQ_TOPIC": topics["dlq"],
    }


async def wait_for_first(observer: Observer, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not observer.records and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


async def measure(
    stack: Stack,
    observer: Observer,
    *,
    warmup_s: float,
    duration_s: float,
    during: Callable[[float], object] | None = None,
) -> tuple[float, float | None, int, int]:
    """Verdicts/s and throttled % over [warm-up, warm-up + duration] after the first verdict."""
    await wait_for_first(observer)
    await asyncio.sleep(warmup_s)
    before = await fake_control(stack, "/_fake/stats")
    start_ms = int(time.time() * 1000)
    if during is not None:
        await during(duration_s)  # type: ignore[misc]
    else:
        await asyncio.sleep(duration_s)
    end_ms = int(time.time() * 1000)
    after = await fake_control(stack, "/_fake/stats")
    await asyncio.sleep(1.0)  # let the observer catch up with the window's tail
    calls = after["calls"] - before["calls"]
    throttled = after["throttled"] - before["throttled"]
    pct = 100.0 * throttled / calls if calls else None
    return observer.rate_between(start_ms, end_ms), pct, start_ms, end_ms


async def run_service_scenario(
    stack: Stack,
    name: str,
    *,
    quota: float,
    latency: float,
    jitter: float,
    replicas: int = 1,
    tps_per_replica: float | None = None,
    duration_s: float,
    storm: bool = False,
    paced_rate: float | None = None,
    logdir: Path,
) -> Result:
    await fake_control(stack, "/_fake/reset", {})
    await fake_control(stack, "/_fake/quota", {"tps": quota, "burst": max(1.0, quota / 10)})
    await fake_control(stack, "/_fake/latency", {"latency_s": latency, "jitter_s": jitter})
    topics = stack.topics(name)
    await create_topics(stack.bootstrap, list(topics.values()))
    warmup = 10.0
    if paced_rate is None:
        await produce_backlog(stack, topics["input"], int(quota * (duration_s + warmup + 20) * 1.2))
    tps = tps_per_replica or quota
    env = service_env(stack, topics, tps, f"g{stack.tag}{name}")
    argv = [sys.executable, "-m", "service", "run"]
    outputs = [topics[k] for k in ("approved", "rejected", "review", "dlq")]
    async with contextlib.AsyncExitStack() as procs, Observer(stack.bootstrap, outputs) as observer:
        pids = []
        for i in range(replicas):
            proc = await procs.enter_async_context(process(argv, env, logdir / f"{name}-{i}.log"))
            pids.append(proc.pid)

        async def storm_then_restore(seconds: float) -> None:
            await asyncio.sleep(seconds / 3)
            await fake_control(
                stack, "/_fake/quota", {"tps": quota / 2, "burst": max(1.0, quota / 20)}
            )
            await asyncio.sleep(20)
            await fake_control(stack, "/_fake/quota", {"tps": quota, "burst": max(1.0, quota / 10)})
            await asyncio.sleep(seconds - seconds / 3 - 20)

        async def paced(seconds: float) -> None:
            await produce_paced(stack, topics["input"], paced_rate or 0, seconds)

        during = storm_then_restore if storm else None
        if paced_rate is not None:
            # Join the group first (one probe message), then offer the paced load: the window
            # must measure steady state, not the catch-up after the join delay.
            await produce_backlog(stack, topics["input"], 1)
            await wait_for_first(observer)
            load = asyncio.create_task(
                produce_paced(stack, topics["input"], paced_rate, warmup + duration_s + 5)
            )
            rate, pct, start_ms, end_ms = await measure(
                stack, observer, warmup_s=warmup, duration_s=duration_s
            )
            await load
        else:
            rate, pct, start_ms, end_ms = await measure(
                stack, observer, warmup_s=warmup, duration_s=duration_s, during=during
            )
        rss = max((peak_rss_mib(pid) or 0.0) for pid in pids)
        p50 = p99 = None
        if paced_rate is not None and jitter == 0:
            sent = await InputTimes.read(stack.bootstrap, topics["input"])
            added = sorted(
                ts - sent[key] - latency * 1000
                for ts, key in observer.records
                if key in sent and start_ms <= ts < end_ms
            )
            if added:
                p50 = statistics.median(added)
                p99 = added[min(len(added) - 1, int(len(added) * 0.99))]
    effective_quota = quota
    if storm:  # the time-weighted quota over the window is the fair yardstick
        effective_quota = quota * (duration_s - 20) / duration_s + quota / 2 * 20 / duration_s
    note = f"L={latency * 1000:.0f} ms"
    if replicas > 1:
        note += f", {replicas} replicas x MODERATION_TPS={tps:g}"
    if storm:
        note += f", Q={quota:g} halved for 20 s of {duration_s:g} (Q column: time-weighted)"
    if paced_rate is not None:
        note += f", offered {paced_rate:g}/s"
    return Result(name, "this service", effective_quota, rate, pct, p50, p99, rss, note)


MOVING_SCHEDULE = ((60.0, 20.0), (30.0, 20.0), (60.0, 20.0), (90.0, 20.0))


async def run_moving(stack: Stack, *, ceiling: float, logdir: Path) -> Result:
    """A quota the service isn't told: 60 -> 30 -> 60 -> 90 TPS every 20 s, TPS only a ceiling.

    The window opens at the service's first backend call (so the start is measured, not warmed
    away). Served is the fake's accepted calls (calls - throttled); the yardstick is the quota
    integrated over the time each value was actually in force.
    """
    name = "moving"
    latency, jitter = 0.15, 0.03
    first_quota = MOVING_SCHEDULE[0][0]
    await fake_control(stack, "/_fake/reset", {})
    await fake_control(stack, "/_fake/quota", {"tps": first_quota, "burst": first_quota / 10})
    await fake_control(stack, "/_fake/latency", {"latency_s": latency, "jitter_s": jitter})
    topics = stack.topics(name)
    await create_topics(stack.bootstrap, list(topics.values()))
    total_s = sum(seconds for _, seconds in MOVING_SCHEDULE)
    await produce_backlog(stack, topics["input"], int(ceiling * (total_s + 20) * 1.2))
    env = service_env(stack, topics, ceiling, f"g{stack.tag}{name}")
    argv = [sys.executable, "-m", "service", "run"]
    async with process(argv, env, logdir / f"{name}.log") as proc:
        deadline = time.monotonic() + 60
        while (await fake_control(stack, "/_fake/stats"))["calls"] == 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the service made no backend call within 60 s")
            await asyncio.sleep(0.02)
        start = time.monotonic()
        offered = 0.0
        served_per_s: list[int] = []
        throttled_per_s: list[int] = []
        last = {"calls": 0, "throttled": 0}
        quota_since, quota = start, first_quota
        for index, (tps, _seconds) in enumerate(MOVING_SCHEDULE):
            if index > 0:
                await fake_control(stack, "/_fake/quota", {"tps": tps, "burst": tps / 10})
                now = time.monotonic()
                offered += quota * (now - quota_since)
                quota_since, quota = now, tps
            phase_end = start + sum(s for _, s in MOVING_SCHEDULE[: index + 1])
            while (remaining := phase_end - time.monotonic()) > 0.01:
                await asyncio.sleep(min(1.0, remaining))
                stats = await fake_control(stack, "/_fake/stats")
                served_per_s.append(
                    (stats["calls"] - stats["throttled"]) - (last["calls"] - last["throttled"])
                )
                throttled_per_s.append(stats["throttled"] - last["throttled"])
                last = stats
        end = time.monotonic()
        offered += quota * (end - quota_since)
        rss = peak_rss_mib(proc.pid)
    calls, throttled = last["calls"], last["throttled"]
    served = calls - throttled
    pct = 100.0 * throttled / calls if calls else None
    elapsed = end - start
    print(f"moving: served per second {served_per_s}", file=sys.stderr)
    print(f"moving: throttled per second {throttled_per_s}", file=sys.stderr)
    print(
        f"moving: served {served} of offered {offered:.0f} = {served / offered:.3f}, "
        f"throttled {throttled} of {calls} calls",
        file=sys.stderr,
    )
    first5 = served_per_s[:5]
    note = (
        f"L={latency * 1000:.0f} ms, Q=60/30/60/90 every 20 s, MODERATION_TPS={ceiling:g}; "
        f"ratio: served calls / time-integrated Q; start: {sum(first5) / len(first5):.0f}/s over "
        f"the first 5 s, lowest second {min(first5)}"
    )
    return Result(
        name, "this service", offered / elapsed, served / elapsed, pct, None, None, rss, note
    )


async def run_peer(
    stack: Stack,
    name: str,
    peer: str,
    *,
    quota: float,
    latency: float,
    jitter: float,
    duration_s: float,
    concurrency: int,
    logdir: Path,
) -> Result:
    await fake_control(stack, "/_fake/reset", {})
    if quota:
        await fake_control(stack, "/_fake/quota", {"tps": quota, "burst": max(1.0, quota / 10)})
    else:
        await fake_control(stack, "/_fake/quota", {"tps": None})
    await fake_control(stack, "/_fake/latency", {"latency_s": latency, "jitter_s": jitter})
    topics = stack.topics(name)
    await create_topics(stack.bootstrap, [topics["input"], topics["approved"]])
    backlog = int((quota or 3000) * (duration_s + 30) * 1.2)
    await produce_backlog(stack, topics["input"], backlog)
    argv = [
        sys.executable,
        "-m",
        f"bench.peers.{peer}",
        "--bootstrap",
        stack.bootstrap,
        "--input",
        topics["input"],
        "--output",
        topics["approved"],
        "--group",
        f"g{stack.tag}{name}",
        "--endpoint",
        stack.fake_url,
        "--concurrency",
        str(concurrency),
    ]
    async with (
        process(argv, sdk_env(), logdir / f"{name}.log") as proc,
        Observer(stack.bootstrap, [topics["approved"]]) as observer,
    ):
        rate, pct, _, _ = await measure(stack, observer, warmup_s=5, duration_s=duration_s)
        rss = peak_rss_mib(proc.pid)
    errors = observer.errors
    label = {
        "sequential": "sequential aiokafka",
        "faust_agent": f"faust agent, concurrency={concurrency}",
        "raw_loop": "raw aiokafka loop",
    }[peer]
    note = f"L={latency * 1000:.0f} ms"
    if errors:
        note += f", {errors} messages failed (SDK retries exhausted), not counted"
    return Result(name, label, quota or None, rate, pct, None, None, rss, note)


async def run_overhead(stack: Stack, duration_s: float, logdir: Path) -> list[Result]:
    """Instant backend, no quota: how close do we get to a bare consume-call-produce loop?"""
    results = []
    await fake_control(stack, "/_fake/reset", {})
    await fake_control(stack, "/_fake/quota", {"tps": None})
    await fake_control(stack, "/_fake/latency", {"latency_s": 0, "jitter_s": 0})
    topics = stack.topics("overhead")
    await create_topics(stack.bootstrap, list(topics.values()))
    await produce_backlog(stack, topics["input"], 40_000)
    env = service_env(stack, topics, 100_000, f"g{stack.tag}overhead")
    outputs = [topics[k] for k in ("approved", "rejected", "review", "dlq")]
    async with (
        process([sys.executable, "-m", "service", "run"], env, logdir / "overhead.log") as proc,
        Observer(stack.bootstrap, outputs) as observer,
    ):
        rate, _, _, _ = await measure(stack, observer, warmup_s=3, duration_s=duration_s)
        rss = peak_rss_mib(proc.pid)
    results.append(
        Result(
            "overhead",
            "this service",
            None,
            rate,
            None,
            None,
            None,
            rss,
            "instant backend, no quota",
        )
    )
    raw = await run_peer(
        stack,
        "overheadraw",
        "raw_loop",
        quota=0,
        latency=0,
        jitter=0,
        duration_s=duration_s,
        concurrency=256,
        logdir=logdir,
    )
    raw.note = "instant backend, no quota"
    results.append(raw)
    return results


async def main_async(args: argparse.Namespace) -> None:
    logdir = Path(args.logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    broker = EmbeddedBroker()
    await broker.start()
    port = free_port()
    fake_argv = [sys.executable, "-m", "tests.fakes.rekognition", "--port", str(port)]
    results: list[Result] = []
    async with process(fake_argv, sdk_env(), logdir / "fake.log"):
        await asyncio.sleep(1.0)
        stack = Stack(broker.bootstrap_servers, f"http://127.0.0.1:{port}", os.urandom(3).hex())
        d = args.duration
        only = set(args.only.split(",")) if args.only else None

        def wanted(name: str) -> bool:
            return only is None or name in only

        try:
            if wanted("q50"):
                results.append(
                    await run_service_scenario(
                        stack,
                        "q50",
                        quota=50,
                        latency=0.15,
                        jitter=0.03,
                        duration_s=d,
                        logdir=logdir,
                    )
                )
            if wanted("peers"):
                results.append(
                    await run_peer(
                        stack,
                        "q50seq",
                        "sequential",
                        quota=50,
                        latency=0.15,
                        jitter=0.03,
                        duration_s=min(d, 30),
                        concurrency=1,
                        logdir=logdir,
                    )
                )
                results.append(
                    await run_peer(
                        stack,
                        "q50faust",
                        "faust_agent",
                        quota=50,
                        latency=0.15,
                        jitter=0.03,
                        duration_s=d,
                        concurrency=32,
                        logdir=logdir,
                    )
                )
                results.append(  # sized by Little's law (Q x L = 7.5), the kindest setting
                    await run_peer(
                        stack,
                        "q50faust8",
                        "faust_agent",
                        quota=50,
                        latency=0.15,
                        jitter=0.03,
                        duration_s=d,
                        concurrency=8,
                        logdir=logdir,
                    )
                )
            if wanted("q200"):
                results.append(
                    await run_service_scenario(
                        stack,
                        "q200",
                        quota=200,
                        latency=1.0,
                        jitter=0.2,
                        duration_s=d,
                        logdir=logdir,
                    )
                )
            if wanted("latency"):
                results.append(
                    await run_service_scenario(
                        stack,
                        "q50at80",
                        quota=50,
                        latency=0.15,
                        jitter=0.0,
                        duration_s=d,
                        paced_rate=40,
                        logdir=logdir,
                    )
                )
            if wanted("storm"):
                results.append(
                    await run_service_scenario(
                        stack,
                        "storm",
                        quota=50,
                        latency=0.15,
                        jitter=0.03,
                        duration_s=max(d, 45),
                        storm=True,
                        logdir=logdir,
                    )
                )
            if wanted("replicas"):
                results.append(
                    await run_service_scenario(
                        stack,
                        "replicas",
                        quota=50,
                        latency=0.15,
                        jitter=0.03,
                        replicas=2,
                        tps_per_replica=25,
                        duration_s=d,
                        logdir=logdir,
                    )
                )
                results.append(
                    await run_service_scenario(
                        stack,
                        "oversub",
                        quota=50,
                        latency=0.15,
                        jitter=0.03,
                        replicas=2,
                        tps_per_replica=50,
                        duration_s=d,
                        logdir=logdir,
                    )
                )
            if wanted("moving"):
                results.append(await run_moving(stack, ceiling=90, logdir=logdir))
            if wanted("overhead"):
                results.extend(await run_overhead(stack, min(d, 30), logdir))
        finally:
            print(HEADER)
            for result in results:
                print(result.row())
    await broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--duration", type=float, default=60.0, help="measurement window per scenario (s)"
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma list: q50,peers,q200,latency,storm,replicas,moving,overhead",
    )
    parser.add_argument("--logdir", default="/tmp/moderation-bench", help="process logs")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
