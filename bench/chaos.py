"""Chaos benchmark: a fleet of replicas under rebalance churn; is anything lost, wrong, stuck?

N replicas of ``python -m service run`` (or, with ``--plain``, of a plain aiokafka consumer-group
peer: bench/peers/churn.py) share one group on a 6-partition input pre-filled with M requests
whose verdicts are known (the fake Rekognition reads their labels from the image bytes). The fake
enforces quota Q (optionally moving) and fails a share of calls with InternalServerError. Once the
first outcome appears, every 2.5-4.5 s a random replica is SIGKILLed and restarted in its slot
(optionally: joins, SIGTERM leaves), then the fleet is scaled to one by SIGTERM (all at once, as
Kubernetes does) and the harness waits until every request has an outcome or nothing new appeared
for the give-up limit; then the last replica gets SIGTERM too.

    .venv/bin/python -m bench.chaos --runs 10                 # Tansu, dynamic members
    .venv/bin/python -m bench.chaos --runs 10 --static        # KAFKA_GROUP_INSTANCE_ID=replica-i
    .venv/bin/python -m bench.chaos --runs 3 --plain          # the same churn, plain aiokafka
    .venv/bin/python -m bench.chaos --broker noida --static --guarantee exactly_once

Figures per run (docs/chaos.md): lost, wrong, duplicates, longest stall, each SIGTERM's exit time
against the grace period, elapsed time as a multiple of the quota-bound time. The scenario runner
(``run_scenario``) is shared with tests/system/test_chaos.py, which runs a short one in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import signal
import statistics
import sys
import time
from asyncio.subprocess import Process
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.peers._common import SHUTDOWN_GRACE_S as PEER_GRACE_S
from service.kafka.embedded import EmbeddedBroker, free_port
from tests.images import BORDERLINE, EXPLICIT, MILD, b64, png
from tests.kafka_helpers import Topics, create_topics, produce, request
from tests.noida import noida_broker
from tests.processes import local_settings, process_env

ROOT = Path(__file__).resolve().parents[1]
SLACK_S = (
    2.0  # a SIGTERMed process may take this long past its grace to exit (interpreter teardown)
)
Guarantee = Literal["at_least_once", "exactly_once"]
Broker = Literal["tansu", "noida"]

# Request kinds, in a fixed rotation: labels the fake answers with, and the outcome they must get.
_KINDS: tuple[tuple[str, dict[str, object]], ...] = (
    ("approved", MILD),
    ("rejected", EXPLICIT),
    ("review", BORDERLINE),
)
_DLQ_EVERY = 20  # every 20th request is not an image: dead-lettered without a backend call


@dataclass(frozen=True)
class Scenario:
    """One churn run's shape; the defaults are issue 12's (3 replicas, 6 partitions, Q=100)."""

    replicas: int = 3
    requests: int = 3000
    partitions: int = 6
    quota: float = 100.0
    # A moving quota: these TPS values in turn, each for quota_period_s (empty: fixed ``quota``).
    quota_steps: tuple[float, ...] = ()
    quota_period_s: float = 20.0
    error_rate: float = 0.03
    latency_s: float = 0.05
    kills: int = 10
    joins: int = 0
    leaves: int = 0
    interval_s: tuple[float, float] = (2.5, 4.5)
    static: bool = False
    guarantee: Guarantee | None = None
    plain: bool = False
    grace_s: float = 10.0
    session_timeout_ms: int = 6000
    rebalance_stall_s: float = 20.0
    give_up_s: float = 120.0  # stop waiting after this long without a new outcome
    tps_per_replica: float | None = None  # MODERATION_TPS, a ceiling; default: the quota
    log_level: str = "INFO"
    broker: Broker = "tansu"
    # False: the fleet keeps its size after the churn (the cost of churn alone, without the
    # scale-down's departures: static members never leave, and noida-db never expires them).
    scale_down: bool = True

    @property
    def backend_requests(self) -> int:
        """Requests that need a backend call (all but the non-images)."""
        return self.requests - len(range(0, self.requests, _DLQ_EVERY))

    @property
    def allowed_stall_s(self) -> float:
        """The detection threshold plus one rebalance (a dead member's expiry, then the rejoin)."""
        return self.rebalance_stall_s + 2 * self.session_timeout_ms / 1000

    @property
    def effective_grace_s(self) -> float:
        return PEER_GRACE_S if self.plain else self.grace_s

    def quota_bound_s(self) -> float:
        """How long the backend calls take at exactly the offered quota (M / Q)."""
        if not self.quota_steps:
            return self.backend_requests / self.quota
        left, elapsed = float(self.backend_requests), 0.0
        while True:
            for tps in self.quota_steps:
                step = tps * self.quota_period_s
                if step >= left:
                    return elapsed + left / tps
                left -= step
                elapsed += self.quota_period_s


@dataclass(frozen=True)
class SigtermExit:
    """One SIGTERM: which replica, how long until it exited, its exit code (None: killed)."""

    slot: int
    seconds: float
    returncode: int | None
    grace_s: float

    @property
    def within_grace(self) -> bool:
        return self.returncode is not None and self.seconds <= self.grace_s + SLACK_S


@dataclass
class RunResult:
    run: int
    scenario: Scenario
    lost: int
    wrong: int
    duplicates: int
    longest_stall_s: float
    stall_at_s: float  # when the longest stall began, seconds after the first replica started
    sigterms: list[SigtermExit]
    kills: int
    elapsed_s: float
    calls: int = 0
    throttled: int = 0
    server_errors: int = 0
    unsettled_warnings: int = 0
    wrong_examples: list[str] = field(default_factory=list)
    lost_examples: list[str] = field(default_factory=list)
    logdir: Path | None = None

    @property
    def quota_ratio(self) -> float:
        return self.elapsed_s / self.scenario.quota_bound_s()

    @property
    def stalled(self) -> bool:
        return self.longest_stall_s > self.scenario.allowed_stall_s

    @property
    def sigterms_within_grace(self) -> bool:
        return all(s.within_grace for s in self.sigterms)

    def row(self) -> str:
        s = self.scenario
        members = f"{s.replicas} {'static' if s.static else 'dynamic'}"
        system = "plain aiokafka" if s.plain else "service"
        exits = ", ".join(
            f"{x.seconds:.1f}" + (f" rc={x.returncode}" if x.returncode else "")
            if x.returncode is not None
            else f"killed@{x.seconds:.0f}"
            for x in self.sigterms
        )
        ok = "yes" if self.sigterms_within_grace else "**no**"
        throttled = 100 * self.throttled / self.calls if self.calls else 0.0
        return (
            f"| {self.run} | {system} | {s.broker} | {members} | {s.guarantee or '-'} | "
            f"{self.lost} | {self.wrong} | {self.duplicates} | "
            f"{self.longest_stall_s:.1f} from {self.stall_at_s:.0f} | "
            f"{ok} ({exits}) | {self.kills} | {self.elapsed_s:.1f} | {self.quota_ratio:.2f} | "
            f"{throttled:.1f} | {self.unsettled_warnings} |"
        )


HEADER = (
    "| run | system | broker | members | guarantee | lost | wrong | dup | "
    "longest stall s (from s) | "
    "SIGTERM exit ≤ grace (s each) | kills | elapsed s | x quota-bound | throttled % | "
    "unsettled warnings |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def summary(results: Sequence[RunResult]) -> str:
    """One line over every run: what a reader checks first."""
    if not results:
        return "no runs"
    s = results[0].scenario
    ratios = [r.quota_ratio for r in results if r.lost == 0]
    ratio = (
        f"x quota-bound median {statistics.median(ratios):.2f}, best {min(ratios):.2f}, "
        f"worst {max(ratios):.2f} (runs with nothing lost)"
        if ratios
        else "no run finished"
    )
    within = sum(1 for r in results for x in r.sigterms if x.within_grace)
    return (
        f"{len(results)} runs: lost {sum(r.lost for r in results)} "
        f"(runs with loss: {sum(1 for r in results if r.lost)}), "
        f"wrong {sum(r.wrong for r in results)}, "
        f"duplicates {sum(r.duplicates for r in results)} "
        f"(max {max(r.duplicates for r in results)} in a run), "
        f"longest stall {max(r.longest_stall_s for r in results):.1f} s "
        f"(runs over the {s.allowed_stall_s:.0f} s allowance: "
        f"{sum(1 for r in results if r.stalled)}), "
        f"SIGTERM exits within grace: {within}/{sum(len(r.sigterms) for r in results)}, {ratio}"
    )


# -- the parts of a run ---------------------------------------------------------------------------


def build_requests(tag: str, count: int) -> dict[str, tuple[bytes, str]]:
    """id -> (request value, expected outcome): unique ids, unique image bytes."""
    out: dict[str, tuple[bytes, str]] = {}
    for i in range(count):
        rid = f"{tag}-{i}"
        if i % _DLQ_EVERY == 0:
            out[rid] = (request(rid, {"bytes": b64(b"GIF89a" + rid.encode())}), "dlq")
            continue
        kind, label = _KINDS[i % len(_KINDS)]
        out[rid] = (request(rid, {"bytes": b64(png(label, salt=rid))}), kind)
    return out


async def fake_control(url: str, path: str, body: dict[str, object] | None = None) -> Any:
    """The fake Rekognition's /_fake/* control API (works in-process and across processes)."""
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        if body is None:
            async with session.get(f"{url}{path}") as response:
                return await response.json()
        async with session.post(f"{url}{path}", json=body) as response:
            response.raise_for_status()
            return await response.json()


class Outcomes:
    """Reads the output topics as they fill: every outcome per request, and when each first came.

    With ``exactly_once`` it reads ``read_committed``, so an aborted transaction's records (a
    SIGKILLed producer's) are not outcomes. The time is this reader's clock, not the record's:
    under transactions a record exists for readers only once committed.
    """

    def __init__(
        self, bootstrap: str, topics: dict[str, str], partitions: int, *, committed: bool
    ) -> None:
        self._bootstrap = bootstrap
        self._kind_of = {topic: kind for kind, topic in topics.items()}
        self._partitions = partitions
        self._committed = committed
        self.seen: dict[str, list[str]] = {}
        self.first_at: dict[str, float] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[Outcomes]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level="read_committed" if self._committed else "read_uncommitted",
            fetch_max_wait_ms=50,
        )
        await consumer.start()
        self._consumer = consumer
        try:
            tps = [TopicPartition(t, p) for t in self._kind_of for p in range(self._partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            self._task = asyncio.create_task(self._run(consumer))
            yield self
        finally:
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            await consumer.stop()

    async def _run(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            now = time.monotonic()
            for batch in batches.values():
                for record in batch:
                    if record.key is None:
                        continue
                    kind = self._kind_of[record.topic]
                    if kind == "plain":  # the plain peer's one topic: {"id", "verdict"}
                        kind = str(orjson.loads(record.value).get("verdict"))
                    key = record.key.decode()
                    self.seen.setdefault(key, []).append(kind)
                    self.first_at.setdefault(key, now)

    async def drain(self, quiet_s: float = 2.0, limit_s: float = 20.0) -> None:
        """Wait until nothing new arrived for ``quiet_s`` (late records of exited processes)."""
        deadline = time.monotonic() + limit_s
        last = sum(len(v) for v in self.seen.values())
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            now_total = sum(len(v) for v in self.seen.values())
            if now_total != last:
                last, quiet_since = now_total, time.monotonic()
            elif time.monotonic() - quiet_since >= quiet_s:
                return


class Fleet:
    """The replicas, by slot: start, SIGKILL + restart, SIGTERM (timed). Owns every process."""

    def __init__(self, scenario: Scenario, argv_for: Any, env_for: Any, logdir: Path) -> None:
        self._scenario = scenario
        self._argv_for = argv_for
        self._env_for = env_for
        self._logdir = logdir
        self.live: dict[int, Process] = {}
        self.sigterms: list[SigtermExit] = []
        self._terms: list[asyncio.Task[None]] = []
        self._next_slot = 0
        self.kills = 0

    def log_of(self, slot: int) -> Path:
        return self._logdir / f"replica-{slot}.log"

    async def start(self, slot: int | None = None) -> int:
        if slot is None:
            slot = self._next_slot
        self._next_slot = max(self._next_slot, slot + 1)
        log = self.log_of(slot)
        with log.open("ab") as out:
            out.write(f"\n=== harness: start replica-{slot} at {time.time():.3f}\n".encode())
            out.flush()
            self.live[slot] = await asyncio.create_subprocess_exec(
                *self._argv_for(slot),
                env=self._env_for(slot),
                stdout=out,
                stderr=out,
                cwd=ROOT,
            )
        return slot

    async def kill_and_restart(self, slot: int) -> None:
        proc = self.live.pop(slot)
        with self.log_of(slot).open("ab") as out:
            out.write(f"\n=== harness: SIGKILL replica-{slot} at {time.time():.3f}\n".encode())
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.wait_for(proc.wait(), 10)
        self.kills += 1
        await self.start(slot)

    def terminate(self, slot: int) -> None:
        """SIGTERM ``slot`` and time its exit in the background (owned: see ``close``)."""
        proc = self.live.pop(slot)
        with self.log_of(slot).open("ab") as out:
            out.write(f"\n=== harness: SIGTERM replica-{slot} at {time.time():.3f}\n".encode())
        self._terms.append(asyncio.create_task(self._timed_exit(slot, proc)))

    async def _timed_exit(self, slot: int, proc: Process) -> None:
        grace = self._scenario.effective_grace_s
        started = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace + 30)
            code: int | None = proc.returncode
        except TimeoutError:
            proc.kill()
            await proc.wait()
            code = None
        self.sigterms.append(SigtermExit(slot, time.monotonic() - started, code, grace))

    async def wait_terms(self) -> None:
        await asyncio.gather(*self._terms)

    async def close(self) -> None:
        """Whatever failed: no process outlives the run."""
        for task in self._terms:
            task.cancel()
        for proc in self.live.values():
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        for proc in self.live.values():
            await proc.wait()
        self.live.clear()
        await asyncio.gather(*self._terms, return_exceptions=True)


def _service_env(
    scenario: Scenario, bootstrap: str, topics: Topics, fake_url: str, slot: int
) -> dict[str, str]:
    env = local_settings(bootstrap, topics) | {
        "REKOGNITION_ENDPOINT_URL": fake_url,
        "MODERATION_TPS": str(scenario.tps_per_replica or scenario.quota),
        "MODERATION_SHUTDOWN_GRACE_S": str(scenario.grace_s),
        "KAFKA_SESSION_TIMEOUT_MS": str(scenario.session_timeout_ms),
        "KAFKA_REBALANCE_STALL_S": str(scenario.rebalance_stall_s),
        "LOG_LEVEL": scenario.log_level,
        "LOG_FORMAT": "text",
        "AWS_ACCESS_KEY_ID": "chaos",
        "AWS_SECRET_ACCESS_KEY": "chaos",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    if scenario.broker != "tansu":
        del env["KAFKA_ENABLE_IDEMPOTENCE"]  # only Tansu refuses idempotent producers
    if scenario.static:
        env["KAFKA_GROUP_INSTANCE_ID"] = f"replica-{slot}"
    if scenario.guarantee is not None:
        env["MODERATION_PROCESSING_GUARANTEE"] = scenario.guarantee
    return process_env(env)


def _plain_argv(
    scenario: Scenario, bootstrap: str, topics: Topics, fake_url: str, slot: int
) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "bench.peers.churn",
        "--bootstrap",
        bootstrap,
        "--input",
        topics.input,
        "--output",
        topics.approved,
        "--group",
        topics.group,
        "--endpoint",
        fake_url,
        "--session-timeout-ms",
        str(scenario.session_timeout_ms),
        "--log-level",
        scenario.log_level,
    ]
    if scenario.static:
        argv += ["--instance-id", f"replica-{slot}"]
    return argv


async def _quota_schedule(scenario: Scenario, fake_url: str) -> None:
    """Move the fake's quota through ``quota_steps`` until cancelled."""
    while True:
        for tps in scenario.quota_steps:
            await fake_control(fake_url, "/_fake/quota", {"tps": tps, "burst": max(1.0, tps / 10)})
            await asyncio.sleep(scenario.quota_period_s)


async def run_scenario(
    scenario: Scenario,
    *,
    bootstrap: str,
    fake_url: str,
    logdir: Path,
    run: int = 1,
    seed: int | None = None,
) -> RunResult:
    """One churn run against a broker and a fake that are already up; returns its figures."""
    rng = random.Random(seed)
    logdir.mkdir(parents=True, exist_ok=True)
    tag = os.urandom(4).hex()
    topics = Topics.unique(f"chaos{tag}")
    outputs = {"plain": topics.approved} if scenario.plain else topics.outputs
    await create_topics(bootstrap, [topics.input, *outputs.values()], scenario.partitions)
    requests = build_requests(f"r{tag}", scenario.requests)
    await produce(bootstrap, topics.input, [(k.encode(), v, []) for k, (v, _) in requests.items()])

    await fake_control(fake_url, "/_fake/reset", {})
    first_quota = scenario.quota_steps[0] if scenario.quota_steps else scenario.quota
    await fake_control(
        fake_url, "/_fake/quota", {"tps": first_quota, "burst": max(1.0, first_quota / 10)}
    )
    await fake_control(
        fake_url, "/_fake/latency", {"latency_s": scenario.latency_s, "jitter_s": 0.01}
    )
    if scenario.error_rate > 0:
        await fake_control(
            fake_url, "/_fake/errors", {"code": "InternalServerError", "rate": scenario.error_rate}
        )

    def argv_for(slot: int) -> list[str]:
        if scenario.plain:
            return _plain_argv(scenario, bootstrap, topics, fake_url, slot)
        return [sys.executable, "-m", "service", "run"]

    def env_for(slot: int) -> dict[str, str]:
        if scenario.plain:
            return process_env(
                {
                    "AWS_ACCESS_KEY_ID": "chaos",
                    "AWS_SECRET_ACCESS_KEY": "chaos",
                    "AWS_REGION": "us-east-1",
                    "AWS_EC2_METADATA_DISABLED": "true",
                }
            )
        return _service_env(scenario, bootstrap, topics, fake_url, slot)

    fleet = Fleet(scenario, argv_for, env_for, logdir)
    observer = Outcomes(
        bootstrap, outputs, scenario.partitions, committed=scenario.guarantee == "exactly_once"
    )
    expected = set(requests)
    quota_task: asyncio.Task[None] | None = None
    async with observer.reading():
        try:
            started = time.monotonic()
            if scenario.quota_steps:
                quota_task = asyncio.create_task(_quota_schedule(scenario, fake_url))
            for _ in range(scenario.replicas):
                await fleet.start()
            # Churn starts with the work, not during the first join.
            while not observer.first_at and time.monotonic() - started < 60:
                await asyncio.sleep(0.1)
            events = ["kill"] * scenario.kills + ["join"] * scenario.joins
            events += ["leave"] * scenario.leaves
            rng.shuffle(events)
            for event in events:
                await asyncio.sleep(rng.uniform(*scenario.interval_s))
                if event == "kill":
                    await fleet.kill_and_restart(rng.choice(sorted(fleet.live)))
                elif event == "join":
                    await fleet.start()
                elif len(fleet.live) > 1:
                    fleet.terminate(rng.choice(sorted(fleet.live)))
            # The scale-down is the schedule's last event (not a SIGTERM to a replica that was
            # restarted a moment ago and has not installed its signal handlers yet).
            await asyncio.sleep(rng.uniform(*scenario.interval_s))
            survivor = min(fleet.live)
            for slot in sorted(fleet.live):
                if slot != survivor and scenario.scale_down:
                    fleet.terminate(slot)  # scale to one: all at once, as Kubernetes does
            while not expected <= set(observer.first_at):
                last = max(observer.first_at.values(), default=started)
                if time.monotonic() - last > scenario.give_up_s:
                    break
                await asyncio.sleep(0.2)
            done_at = time.monotonic()
            for slot in sorted(fleet.live):
                fleet.terminate(slot)
            await fleet.wait_terms()
            await observer.drain()
        finally:
            if quota_task is not None:
                quota_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await quota_task
            await fleet.close()

    stats = await fake_control(fake_url, "/_fake/stats")
    seen = observer.seen
    lost = sorted(expected - set(seen))
    wrong = sorted(
        f"{k}: expected {requests[k][1]}, got {sorted(set(v))}"
        for k, v in seen.items()
        if k in requests and set(v) != {requests[k][1]}
    )
    firsts = sorted(t for k, t in observer.first_at.items() if k in expected)
    complete = not lost
    end = firsts[-1] if complete and firsts else done_at
    marks = [started, *[t for t in firsts if t <= end]]
    if not complete:
        marks.append(done_at)
    gaps = [(b - a, a - started) for a, b in itertools.pairwise(marks)]
    longest, stall_at = max(gaps, default=(0.0, 0.0))
    unsettled = sum(
        fleet.log_of(slot).read_text(errors="replace").count("consumer group not settled")
        for slot in range(fleet._next_slot)
    )
    return RunResult(
        run=run,
        scenario=scenario,
        lost=len(lost),
        wrong=len(wrong),
        duplicates=sum(len(v) - 1 for k, v in seen.items() if k in expected),
        longest_stall_s=longest,
        stall_at_s=stall_at,
        sigterms=sorted(fleet.sigterms, key=lambda x: x.slot),
        kills=fleet.kills,
        elapsed_s=end - started,
        calls=int(stats["calls"]),
        throttled=int(stats["throttled"]),
        server_errors=int(stats["errors_by_code"].get("InternalServerError", 0)),
        unsettled_warnings=unsettled,
        wrong_examples=wrong[:5],
        lost_examples=lost[:5],
        logdir=logdir,
    )


# -- brokers and the fake, for runs by hand -------------------------------------------------------


@contextlib.asynccontextmanager
async def broker(kind: Broker) -> AsyncIterator[str]:
    """A fresh broker per run, so one wedged group cannot colour the next run."""
    if kind == "noida":
        async with noida_broker() as bootstrap:
            yield bootstrap
        return
    tansu = EmbeddedBroker()
    await tansu.start()
    try:
        yield tansu.bootstrap_servers
    finally:
        await tansu.stop()


@contextlib.asynccontextmanager
async def fake_process(logdir: Path) -> AsyncIterator[str]:
    """The fake Rekognition in its own process: the harness's loop stays free for reading."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "tests.fakes.rekognition", "--port", str(port)]
    with (logdir / "fake.log").open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=out, stderr=out, cwd=ROOT, env=process_env({})
        )
    try:
        for _ in range(100):
            with contextlib.suppress(aiohttp.ClientError):
                await fake_control(url, "/_fake/stats")
                break
            await asyncio.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def main_async(ns: argparse.Namespace) -> None:
    scenario = Scenario(
        replicas=ns.replicas,
        requests=ns.requests,
        quota=ns.quota,
        quota_steps=tuple(float(x) for x in ns.moving_quota.split(",")) if ns.moving_quota else (),
        quota_period_s=ns.quota_period,
        error_rate=ns.error_pct / 100,
        kills=ns.kills,
        joins=ns.joins,
        leaves=ns.leaves,
        static=ns.static,
        guarantee=ns.guarantee,
        plain=ns.plain,
        grace_s=ns.grace,
        session_timeout_ms=ns.session_timeout_ms,
        rebalance_stall_s=ns.rebalance_stall,
        give_up_s=ns.give_up,
        log_level=ns.log_level,
        broker=ns.broker,
        scale_down=not ns.no_scale_down,
    )
    root = Path(ns.logdir)
    root.mkdir(parents=True, exist_ok=True)
    print(f"command: {' '.join(sys.argv)}\nscenario: {scenario}\nlogs: {root}\n", flush=True)
    results: list[RunResult] = []
    async with fake_process(root) as fake_url:
        try:
            for run in range(1, ns.runs + 1):
                async with broker(scenario.broker) as bootstrap:
                    result = await run_scenario(
                        scenario,
                        bootstrap=bootstrap,
                        fake_url=fake_url,
                        logdir=root / f"run-{run}",
                        run=run,
                        seed=None if ns.seed is None else ns.seed + run,
                    )
                results.append(result)
                print(HEADER if run == 1 else "", result.row(), sep="\n" if run == 1 else "")
                for example in result.lost_examples + result.wrong_examples:
                    print(f"    {example}")
                sys.stdout.flush()
        finally:
            print()
            print(HEADER)
            for result in results:
                print(result.row())
            print()
            print(summary(results))
            print(
                f"allowed stall: {scenario.allowed_stall_s:.0f} s; quota-bound time: "
                f"{scenario.quota_bound_s():.1f} s; logs under {root}"
            )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d = Scenario()
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--replicas", type=int, default=d.replicas)
    parser.add_argument("--requests", type=int, default=d.requests, help="M")
    parser.add_argument("--quota", type=float, default=d.quota, help="Q, TPS")
    parser.add_argument("--moving-quota", default="", help="e.g. 60,30,60,90 (TPS in turn)")
    parser.add_argument("--quota-period", type=float, default=d.quota_period_s, help="s per step")
    parser.add_argument("--error-pct", type=float, default=100 * d.error_rate)
    parser.add_argument("--kills", type=int, default=d.kills)
    parser.add_argument("--joins", type=int, default=d.joins, help="scale-ups during churn")
    parser.add_argument("--leaves", type=int, default=d.leaves, help="SIGTERM scale-downs")
    parser.add_argument("--static", action="store_true", help="KAFKA_GROUP_INSTANCE_ID per slot")
    parser.add_argument("--guarantee", choices=["at_least_once", "exactly_once"], default=None)
    parser.add_argument("--plain", action="store_true", help="plain aiokafka peers instead")
    parser.add_argument("--broker", choices=["tansu", "noida"], default=d.broker)
    parser.add_argument("--grace", type=float, default=d.grace_s, help="shutdown grace, s")
    parser.add_argument("--session-timeout-ms", type=int, default=d.session_timeout_ms)
    parser.add_argument("--rebalance-stall", type=float, default=d.rebalance_stall_s)
    parser.add_argument("--give-up", type=float, default=d.give_up_s, help="s without progress")
    parser.add_argument(
        "--no-scale-down", action="store_true", help="keep every replica after the churn"
    )
    parser.add_argument("--log-level", default=d.log_level)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--logdir", default="/tmp/moderation-chaos")
    asyncio.run(_cancel_on_sigterm(main_async(parser.parse_args(argv))))


async def _cancel_on_sigterm(work: Coroutine[Any, Any, None]) -> None:
    """SIGTERM cancels the run, so every process it started is stopped on the way out."""
    task = asyncio.ensure_future(work)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


if __name__ == "__main__":
    main()
