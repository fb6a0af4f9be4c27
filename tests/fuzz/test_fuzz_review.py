"""The fuzz suite (issue 11), second half: the completion sink and the console's intake.

One run (a module fixture) starts ``python -m service sink`` and ``python -m service console``
against a real broker and a moto S3 server, and produces :func:`tests.fuzz.generator.review_run`
in three phases: the review topic; then, once the sink has routed every review record, the
completions topic (the answers already in S3); then, once it has routed every event, the review
records whose event came first. It waits until both consumer groups have committed the end of
every partition and the sink has written every outcome, reads each process's peak RSS, stops
both with SIGTERM and reads the output topics, the DLQ and the console's database. The tests
below each check one promise on that run; the figures are printed (``-s``) and recorded in
docs/fuzzing.md.

The sink and the console read the same review topic in their own groups, so a bad review record
is dead-lettered once by each: every check counts per consumer (the DLQ record's ``consumer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aioboto3
import aiohttp
import orjson
import pytest
import yaml

from service.kafka.embedded import free_port
from service.review.events import parse_event
from service.review.records import parse_review_record, review_record_limit
from tests.console.harness import base_env
from tests.fuzz.generator import (
    ACCEPTED,
    DECIDES,
    DUPLICATE,
    OUTPUT_BUCKET,
    FuzzRecord,
    ReviewRun,
    review_run,
)
from tests.fuzz.harness import (
    PARTITIONS,
    SEED,
    Proc,
    door_outcome,
    event_outcome,
    produce_records,
    read_topics,
    stop_processes,
    system,
    wait_until,
)
from tests.integration.test_review_sink import sink_env
from tests.kafka_helpers import Topics, committed, create_topics
from tests.processes import local_settings, process_env, running_process

GRACE_S = 10.0  # MODERATION_SHUTDOWN_GRACE_S for both; the chart gives their pods 45 s
CHART_VALUES = Path(__file__).resolve().parents[2] / "deploy/helm/image-moderation/values.yaml"


def chart_memory_limit(component: str) -> int:
    """The Helm chart's memory limit for ``component``'s pod: its process must fit in it."""
    values = yaml.safe_load(CHART_VALUES.read_text())
    limit = str(values[component]["resources"]["limits"]["memory"])
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(limit[:-2]) * units[limit[-2:]]


RSS_BOUND_BYTES = {"sink": chart_memory_limit("sink"), "console": chart_memory_limit("console")}
MAX_INPUT_BYTES = 1024 * 1024  # review records up to ~2.1 MB: "huge" ones stay cheap
MAX_REVIEW_BYTES = review_record_limit(MAX_INPUT_BYTES)
MAX_EVENT_BYTES = 256 * 1024  # MODERATION_SINK_MAX_EVENT_BYTES (the default)
#: MODERATION_SINK_ORPHAN_TTL_S: orphans (produced first in the last phase) expire while the
#: rest is routed, and an event held for its late review record is never near it.
ORPHAN_TTL_S = 10
PHASE_DEADLINE_S = 60.0  # from the processes' start: the sink has routed a phase by then
RUN_DEADLINE_S = 95.0  # everything decided and committed, from the processes' start
DUPLICATES_SERIES = 'moderation_reviews_completed_total{outcome="duplicate"}'

#: Classes whose outcome is known to be wrong on main: kind -> what happens instead. Each is
#: left out of the class checks below; give it a strict xfail test of its own when you add one,
#: so it starts failing the day it is fixed. Empty: the one this run found (a second event held
#: for a loop replaced the first, which then ended nowhere) is fixed.
KNOWN_ISSUES: dict[str, str] = {}

# -- the run -----------------------------------------------------------------------------------


@dataclass
class ReviewFuzzRun:
    corpus: ReviewRun
    topics: Topics
    completions: str
    #: (topic, partition, offset) of every produced record -> the record.
    by_source: dict[tuple[str, int, int], FuzzRecord]
    ends: dict[str, dict[int, int]]  # topic -> partition -> records produced there
    committed: dict[str, dict[str, dict[int, int]]]  # group -> topic -> partition -> offset
    groups: dict[str, list[str]]  # group -> the topics it reads
    verdicts: list[dict[str, Any]]  # values of the approved and rejected topics
    dead: list[dict[str, Any]]  # values of the DLQ
    console_items: dict[str, str]  # the console's queue: loop name -> request id
    sink_metrics: dict[str, float]
    procs: dict[str, Proc]
    timings: dict[str, float] = field(default_factory=dict)

    def dead_by_source(self, consumer: str) -> dict[tuple[str, int, int], list[str]]:
        found: dict[tuple[str, int, int], list[str]] = {}
        for letter in self.dead:
            if letter.get("consumer") != consumer:
                continue
            src = letter["source"]
            key = (src["topic"], src["partition"], src["offset"])
            found.setdefault(key, []).append(letter["error"]["reason"])
        return found

    def verdicts_by_id(self) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {}
        for verdict in self.verdicts:
            found.setdefault(str(verdict["id"]), []).append(verdict)
        return found

    def review_sources(self) -> list[tuple[tuple[str, int, int], FuzzRecord]]:
        return [(s, r) for s, r in self.by_source.items() if s[0] == self.topics.review]

    def event_sources(self) -> list[tuple[tuple[str, int, int], FuzzRecord]]:
        return [(s, r) for s, r in self.by_source.items() if s[0] == self.completions]

    def tail(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log_tail}" for p in self.procs.values())


async def put_outputs(endpoint: str, outputs: dict[str, bytes]) -> None:
    session = aioboto3.Session()
    async with session.client("s3", region_name="us-east-1", endpoint_url=endpoint) as s3:
        with contextlib.suppress(Exception):
            await s3.create_bucket(Bucket=OUTPUT_BUCKET)
        limit = asyncio.Semaphore(16)

        async def put(key: str, body: bytes) -> None:
            async with limit:
                await s3.put_object(Bucket=OUTPUT_BUCKET, Key=key, Body=body)

        await asyncio.gather(*(put(key, body) for key, body in outputs.items()))


async def scrape(url: str) -> dict[str, float]:
    """A Prometheus text page as {series: value}; empty if the process does not answer."""
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            text = await response.text()
    except aiohttp.ClientError:
        return {}
    series: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                series[name] = float(value)
    return series


def metric_sum(series: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in series.items() if k.startswith(prefix))


@dataclass(frozen=True)
class Expected:
    """What the sink must have written once the run is over (the known issues aside)."""

    verdicts: int
    duplicates: int
    sink_dead: int  # dead letters other than orphans
    orphan_loops: int  # distinct loops whose events must expire

    @classmethod
    def of(cls, corpus: ReviewRun) -> Expected:
        events = [*corpus.events_first, *corpus.events]
        orphan = [r for r in events if "dlq:orphan_completion" in r.expect]
        reviews = [*corpus.reviews, *corpus.late_reviews]
        return cls(
            verdicts=len(corpus.verdicts),
            duplicates=sum(DUPLICATE in r.expect for r in events),
            sink_dead=sum(ACCEPTED not in r.expect for r in reviews)
            + sum(any(e.startswith("dlq:") for e in r.expect) for r in events if r not in orphan),
            orphan_loops=len({r.key for r in orphan}),
        )

    def met(self, series: dict[str, float]) -> bool:
        orphans = metric_sum(series, "moderation_review_orphan_completions_total")
        dead = metric_sum(series, "moderation_dlq_total")
        return (
            metric_sum(series, "moderation_verdicts_total") >= self.verdicts
            and series.get(DUPLICATES_SERIES, 0) >= self.duplicates
            and orphans >= self.orphan_loops
            and series.get("moderation_review_early_completions", -1) == 0
            and dead >= self.sink_dead + orphans
        )


@pytest.fixture(scope="module")
async def review_fuzz(
    kafka_bootstrap: str, moto_s3: str, tmp_path_factory: pytest.TempPathFactory
) -> ReviewFuzzRun:
    started = time.monotonic()
    tmp = tmp_path_factory.mktemp("review-fuzz")
    corpus = review_run(
        SEED,
        partitions=PARTITIONS,
        max_review_bytes=MAX_REVIEW_BYTES,
        max_event_bytes=MAX_EVENT_BYTES,
    )
    topics = Topics.unique("fr" + uuid.uuid4().hex[:8])
    completions = f"{topics.input}.completions"
    await create_topics(
        kafka_bootstrap,
        [topics.review, completions, topics.approved, topics.rejected, topics.dlq],
        PARTITIONS,
    )
    await put_outputs(moto_s3, corpus.outputs)
    shared = {
        "MODERATION_MAX_INPUT_BYTES": str(MAX_INPUT_BYTES),
        "MODERATION_SHUTDOWN_GRACE_S": str(GRACE_S),
        "MODERATION_COMPLETIONS_TOPIC": completions,
        "LOG_FORMAT": "text",
    }
    sink_port = free_port()
    env_sink = (
        sink_env(kafka_bootstrap, topics, completions, moto_s3)
        | shared
        | {
            "MODERATION_HTTP_PORT": str(sink_port),
            "MODERATION_SINK_ORPHAN_TTL_S": str(ORPHAN_TTL_S),
            "MODERATION_SINK_MAX_EVENT_BYTES": str(MAX_EVENT_BYTES),
        }
    )
    console_group = f"{topics.group}-console"
    env_console = process_env(
        base_env(tmp)
        | local_settings(kafka_bootstrap, topics)
        | shared
        | {
            "MODERATION_CONSOLE_GROUP_ID": console_group,
            "MODERATION_HTTP_PORT": str(free_port()),
            "S3_ENDPOINT_URL": moto_s3,
        }
    )
    sink_group = f"{topics.group}-review-sink-intake"
    groups = {sink_group: [topics.review, completions], console_group: [topics.review]}
    ends: dict[str, dict[int, int]] = {
        t: dict.fromkeys(range(PARTITIONS), 0) for t in (topics.review, completions)
    }
    by_source: dict[tuple[str, int, int], FuzzRecord] = {}
    expected = Expected.of(corpus)
    timings: dict[str, float] = {"setup": time.monotonic() - started}
    metrics_url = f"http://127.0.0.1:{sink_port}/metrics"
    series: dict[str, float] = {}

    async def routed(topic: str) -> bool:
        return await committed(kafka_bootstrap, sink_group, topic, PARTITIONS) == ends[topic]

    async def finished() -> bool:
        nonlocal series
        for group, names in groups.items():
            for name in names:
                if await committed(kafka_bootstrap, group, name, PARTITIONS) != ends[name]:
                    return False
        series = await scrape(metrics_url)
        return expected.met(series)

    sink_log, console_log = tmp / "sink.log", tmp / "console.log"
    argv = [sys.executable, "-m", "service"]
    async with (
        running_process([*argv, "sink"], env_sink, sink_log) as sink,
        running_process([*argv, "console"], env_console, console_log) as console,
    ):
        begun = time.monotonic()
        procs = [sink, console]
        # Each phase is produced once the sink has routed the one before (the last is not
        # waited for here: "all done" covers it).
        phases = (
            ("reviews routed", topics.review, corpus.reviews),
            ("events before their review routed", completions, corpus.events_first),
            ("late reviews routed", topics.review, corpus.late_reviews),
            ("other events produced", completions, corpus.events),
        )
        for name, topic, records in phases:
            produced = await produce_records(kafka_bootstrap, topic, records, ends[topic])
            by_source.update({(topic, p, o): r for (p, o), r in produced.items()})
            if records is not corpus.events:
                routed_in_time = await wait_until(
                    functools.partial(routed, topic), begun + PHASE_DEADLINE_S, procs
                )
                assert routed_in_time, f"not {name} in time\n{sink_log.read_text()[-3000:]}"
            timings[name] = time.monotonic() - begun
        await wait_until(finished, begun + RUN_DEADLINE_S, procs)
        timings["all done"] = time.monotonic() - begun
        series = await scrape(metrics_url)
        procs_out = await stop_processes({"sink": sink, "console": console}, GRACE_S + 20)
    written = await read_topics(kafka_bootstrap, [topics.approved, topics.rejected, topics.dlq])
    with contextlib.closing(sqlite3.connect(tmp / "console.db")) as db:
        items = dict(db.execute("SELECT loop_name, request_id FROM console_items").fetchall())
    offsets = {
        group: {name: await committed(kafka_bootstrap, group, name, PARTITIONS) for name in names}
        for group, names in groups.items()
    }
    for name, log in (("sink", sink_log), ("console", console_log)):
        procs_out[name].log_tail = log.read_text(errors="replace")[-3000:]
    run = ReviewFuzzRun(
        corpus=corpus,
        topics=topics,
        completions=completions,
        by_source=by_source,
        ends=ends,
        committed=offsets,
        groups=groups,
        verdicts=[orjson.loads(r.value) for r in written if r.topic != topics.dlq],
        dead=[orjson.loads(r.value) for r in written if r.topic == topics.dlq],
        console_items=items,
        sink_metrics=series,
        procs=procs_out,
        timings=timings,
    )
    timings["whole run"] = time.monotonic() - started
    report(run)
    return run


def report(run: ReviewFuzzRun) -> None:
    corpus = run.corpus
    reviews = [r for s, r in run.review_sources()]
    events = [r for s, r in run.event_sources()]
    size = sum(len(r.value or b"") for r in run.by_source.values())
    reasons = {
        consumer: Counter(d["error"]["reason"] for d in run.dead if d.get("consumer") == consumer)
        for consumer in ("sink", "console")
    }
    verdicts = Counter((v["verdict"], v["decided_by"]) for v in run.verdicts)
    duplicates = run.sink_metrics.get(DUPLICATES_SERIES, 0)
    lines = [
        f"review fuzz run (seed {SEED}): {len(run.by_source)} records, {size / 1e6:.1f} MB of "
        f"values; review topic {len(reviews)}, completions {len(events)}, {PARTITIONS} "
        f"partitions each; {len(corpus.outputs)} output.json in S3",
        "  per class: " + ", ".join(f"{k} {n}" for k, n in corpus.kinds().items()),
        "  verdicts: " + ", ".join(f"{v} by {d} {n}" for (v, d), n in sorted(verdicts.items())),
        f"  duplicates counted by the sink: {duplicates:.0f}; "
        f"console queue: {len(run.console_items)} items",
    ]
    for consumer, counts in reasons.items():
        lines.append(
            f"  dlq (consumer={consumer}): {sum(counts.values())}: "
            + ", ".join(f"{r} {n}" for r, n in counts.most_common())
        )
    for proc in run.procs.values():
        lines.append(
            f"  {proc.name}: peak RSS (VmHWM) {proc.peak_rss_bytes / 2**20:.0f} MiB "
            f"(bound {RSS_BOUND_BYTES[proc.name] / 2**20:.0f} MiB), SIGTERM exit {proc.exit_code} "
            f"in {proc.stop_s:.1f} s"
        )
    lines.append("  wall: " + ", ".join(f"{k} {v:.1f} s" for k, v in run.timings.items()))
    print("\n" + "\n".join(lines))


# -- what the run must show --------------------------------------------------------------------


def only(expect: frozenset[str]) -> str:
    (outcome,) = expect
    return outcome


@system
def test_the_console_stores_or_dead_letters_each_review_record(review_fuzz: ReviewFuzzRun) -> None:
    run = review_fuzz
    dead = run.dead_by_source("console")
    stored: set[str] = set()
    wrong: list[tuple[str, tuple[str, int, int], object]] = []
    for source, record in run.review_sources():
        reasons = dead.pop(source, [])
        if ACCEPTED in record.expect:
            body = orjson.loads(record.value or b"")
            loop = body["review"]["human_loop_name"]
            if reasons or run.console_items.get(loop) != body["id"]:
                wrong.append((record.kind, source, reasons or "not stored"))
            stored.add(loop)
        elif [f"dlq:{r}" for r in reasons] != [only(record.expect)]:
            wrong.append((record.kind, source, reasons))
    assert not wrong, f"{len(wrong)} review records misplaced, e.g. {wrong[:5]}\n{run.tail()}"
    assert not dead, f"console dead letters for records never produced: {list(dead)[:5]}"
    assert set(run.console_items) == stored, "the console stored items nobody sent"


@system
def test_the_sink_dead_letters_bad_review_records_once_and_decides_each_valid_one_once(
    review_fuzz: ReviewFuzzRun,
) -> None:
    run = review_fuzz
    dead = run.dead_by_source("sink")
    verdicts = run.verdicts_by_id()
    wrong: list[tuple[str, object, object]] = []
    for source, record in run.review_sources():
        reasons = dead.get(source, [])
        if ACCEPTED in record.expect:
            request_id = orjson.loads(record.value or b"")["id"]
            got = [(v["verdict"], v["decided_by"]) for v in verdicts.get(request_id, [])]
            if reasons or got != [run.corpus.verdicts[request_id]]:
                wrong.append((record.kind, request_id, (got, reasons)))
        elif [f"dlq:{r}" for r in reasons] != [only(record.expect)]:
            wrong.append((record.kind, source, reasons))
    assert not wrong, f"{len(wrong)} review records misplaced, e.g. {wrong[:5]}\n{run.tail()}"
    unexpected = set(verdicts) - set(run.corpus.verdicts)
    assert not unexpected, f"verdicts for no valid review: {sorted(unexpected)[:5]}"
    for verdict in run.verdicts:  # the original request travels on
        assert verdict["attributes"] is not None and verdict["image"], verdict["id"]


@system
def test_each_completion_event_ends_in_exactly_one_place(review_fuzz: ReviewFuzzRun) -> None:
    """A verdict for its loop (by the output it names), a counted duplicate, or one dead letter
    with the expected reason; a duplicate or a forged event never decides anything."""
    run = review_fuzz
    dead = run.dead_by_source("sink")
    decided_by_uri = Counter(
        v["human_review"]["output_uri"] for v in run.verdicts if v["decided_by"] == "human"
    )
    wrong: list[tuple[str, tuple[str, int, int], object]] = []
    duplicates = 0
    for source, record in run.event_sources():
        reasons = dead.pop(source, [])
        if record.kind in KNOWN_ISSUES:
            continue
        outcome = only(record.expect)
        if outcome in (DECIDES, DUPLICATE):
            duplicates += outcome == DUPLICATE
            if reasons:
                wrong.append((record.kind, source, reasons))
            if record.kind in ("event_valid", "event_before_review"):
                uri = parse_event(record.value).output_uri
                if decided_by_uri[uri] != 1:
                    wrong.append((record.kind, source, f"{decided_by_uri[uri]} verdicts"))
        elif [f"dlq:{r}" for r in reasons] != [outcome]:
            wrong.append((record.kind, source, reasons))
    assert not wrong, f"{len(wrong)} events misplaced, e.g. {wrong[:5]}\n{run.tail()}"
    others = {s: r for s, r in dead.items() if s[0] != run.topics.review}
    assert not others, (
        f"sink dead letters that point at no input record: {list(others.items())[:5]}"
    )
    counted = run.sink_metrics.get(DUPLICATES_SERIES)
    assert counted == duplicates, (counted, duplicates)
    forged = {
        parse_event(r.value).output_uri
        for _, r in run.event_sources()
        if r.kind == "event_forged_output"
    }
    assert not forged & set(decided_by_uri), "a forged output decided a loop"


@system
def test_two_events_held_for_one_loop_each_end_somewhere(review_fuzz: ReviewFuzzRun) -> None:
    run = review_fuzz
    dead = run.dead_by_source("sink")
    held = [(s, r) for s, r in run.event_sources() if r.kind == "event_held_twice"]
    assert held
    lost = [s for s, r in held if [f"dlq:{x}" for x in dead.get(s, [])] != [only(r.expect)]]
    assert not lost, f"{len(lost)} of {len(held)} held events ended nowhere: {lost[:4]}"


@system
def test_committed_offsets_reach_the_end_of_every_partition(review_fuzz: ReviewFuzzRun) -> None:
    run = review_fuzz
    for group, names in run.groups.items():
        for name in names:
            assert run.committed[group][name] == run.ends[name], (group, name, run.tail())


@system
def test_both_processes_stay_up_within_their_memory_bound_and_stop_on_sigterm(
    review_fuzz: ReviewFuzzRun,
) -> None:
    for proc in review_fuzz.procs.values():
        assert proc.alive_at_end, f"{proc.name} exited during the run\n{proc.log_tail}"
        bound = RSS_BOUND_BYTES[proc.name]
        assert 0 < proc.peak_rss_bytes < bound, (proc.name, proc.peak_rss_bytes)
        assert proc.exit_code == 0, f"{proc.name}: exit {proc.exit_code}\n{proc.log_tail}"
        assert proc.stop_s <= GRACE_S + 5, (proc.name, proc.stop_s)


# -- the generator itself (no broker) ----------------------------------------------------------


def test_the_review_run_is_deterministic_and_agrees_with_the_parsers() -> None:
    """Expectations decided at the door are what the parsers say; the rest (decides, duplicate,
    forged answers, orphans) parse as events and are left to the run."""
    args: dict[str, Any] = {
        "max_review_bytes": MAX_REVIEW_BYTES,
        "max_event_bytes": MAX_EVENT_BYTES,
    }
    run = review_run(SEED, **args)
    again = review_run(SEED, **args)
    assert run.produced() == again.produced()
    assert run.outputs == again.outputs
    assert len(run.produced()) >= 3000
    for record in [*run.reviews, *run.late_reviews]:
        if record.raw:
            continue
        outcome = door_outcome(parse_review_record, record.value, max_bytes=MAX_REVIEW_BYTES)
        assert outcome == only(record.expect), (record.kind, outcome)
    after_parse = {"event_forged_output", "event_orphan", "event_held_twice"}
    for record in [*run.events_first, *run.events]:
        if record.raw and record.headers:
            continue
        outcome = event_outcome(record.value, MAX_EVENT_BYTES)
        if outcome == ACCEPTED:
            assert record.kind in after_parse or only(record.expect) in (DECIDES, DUPLICATE)
        else:
            assert outcome == only(record.expect), (record.kind, outcome)
    kinds = run.kinds()
    for kind in (
        "review_valid", "review_invalid", "review_malformed", "review_huge", "review_large",
        "review_late", "undecodable_header", "huge_key", "many_headers", "event_valid",
        "event_failed", "event_duplicate", "event_before_review", "event_forged_output",
        "event_forged_uri", "event_forged_arn", "event_bad_uri", "event_malformed",
        "event_not_json", "event_wrong_shape", "event_tombstone", "event_oversized",
        "event_undecodable_header", "event_orphan", "event_held_twice",
    ):  # fmt: skip
        assert kinds.get(kind, 0) > 0, kind
