"""The fuzz suite (issue 11): 10,000 seeded hostile records through the real pipeline process.

One run (a module fixture) produces the corpus of :mod:`tests.fuzz.generator` to a real broker,
runs ``python -m service run`` against the fake Rekognition and a local image origin, waits
until the group's committed offsets reach the end of every input partition, reads the process's
peak RSS, stops it with SIGTERM and reads every output topic. The tests below each check one
promise on that run; a second, small run puts image bombs through the local backend with the
same checks. The figures are printed (``-s``) and recorded in docs/fuzzing.md.

The dead-letter limit is off for bad input (``MODERATION_DLQ_MAX_RATIO=1``: the run is mostly
bad by design) and for bugs (``MODERATION_DLQ_MAX_INTERNAL_RATIO=1``): an ``internal_error``
must fail a class assertion below, with the record named, not pause intake until the timeout.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiokafka.structs import ConsumerRecord

from service.messages import MAX_CARRIED_HEADER_BYTES, MAX_OUTPUT_KEY_BYTES, parse_request
from tests.fakes.rekognition import FakeRekognition
from tests.fuzz.generator import (
    ACCEPTED,
    PIPELINE_FIXED,
    PIPELINE_WEIGHTS,
    Corpus,
    FuzzRecord,
    completion_events,
    local_backend_records,
    pipeline_records,
    review_topic_records,
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
from tests.kafka_helpers import Topics, committed, create_topics
from tests.processes import local_settings, process_env, running_process

RECORDS = 10_000
GRACE_S = 10.0
#: The Helm chart's memory limit for the pipeline (deploy/helm/*/values.yaml: pipeline
#: resources.limits.memory 1Gi): whatever the input mix, the process must fit in its pod.
RSS_BOUND_BYTES = 1024 * 1024 * 1024
#: Where the run must be by then, inside the 120 s test budget (setup and reading included).
PROCESS_DEADLINE_S = 80.0
DLQ_MAX_VALUE_BYTES = 1_000_000
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
ORIGIN_HOST = "127.0.0.2"  # allow-listed for fetching; 127.0.0.1 and localhost stay forbidden

#: Classes whose outcome is known to be wrong on main: kind -> what happens instead. Each is
#: left out of test_each_class_lands_where_it_should; give it a strict xfail test of its own
#: when you add one, so it starts failing the day it is fixed.
KNOWN_ISSUES: dict[str, str] = {
    # Empty: the one class this suite found wrong (attributes nested deeper than orjson writes,
    # dead-lettered as internal_error) is refused at parse time now (invalid_field).
}

# -- the run -----------------------------------------------------------------------------------


@dataclass
class FuzzRun:
    corpus: Corpus
    #: (partition, offset) of every produced record -> the record.
    by_source: dict[tuple[int, int], FuzzRecord]
    ends: dict[int, int]  # partition -> records produced there
    outputs: list[tuple[str, ConsumerRecord]]  # (output kind, record)
    committed: dict[int, int]
    proc: Proc
    produce_s: float
    process_s: float  # process start until every offset was committed
    topics: Topics
    figures: dict[str, Any] = field(default_factory=dict)

    def outcome(self, kind: str, record: ConsumerRecord) -> str:
        if kind == "dlq":
            return f"dlq:{orjson.loads(record.value)['error']['reason']}"
        return kind


@contextlib.asynccontextmanager
async def serve_origin(routes: dict[str, tuple[int, dict[str, str], bytes]]) -> AsyncIterator[str]:
    """An image origin on 127.0.0.2 serving ``routes`` (filled in after the URL is known)."""

    async def serve(request: web.Request) -> web.Response:
        status, headers, body = routes.get(request.path, (404, {}, b"not found"))
        return web.Response(status=status, headers=headers, body=body)

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, ORIGIN_HOST, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://{ORIGIN_HOST}:{port}"
    finally:
        await runner.cleanup()


async def read_outputs(bootstrap: str, topics: Topics) -> list[tuple[str, ConsumerRecord]]:
    """Every record of the output topics, read up to each partition's high watermark."""
    kind_of = {topic: kind for kind, topic in topics.outputs.items()}
    return [(kind_of[r.topic], r) for r in await read_topics(bootstrap, list(kind_of))]


async def run_pipeline(
    bootstrap: str, corpus: Corpus, settings: dict[str, str], log: Path
) -> FuzzRun:
    """Produce ``corpus`` while ``python -m service run`` starts, wait for every offset to be
    committed, read its peak RSS, SIGTERM it, then read every output."""
    started = time.monotonic()
    topics = Topics.unique("fz" + uuid.uuid4().hex[:8])
    await create_topics(bootstrap, [topics.input, *topics.outputs.values()], PARTITIONS)
    env = process_env(
        local_settings(bootstrap, topics)
        | {
            "MODERATION_DLQ_MAX_RATIO": "1",
            "MODERATION_DLQ_MAX_INTERNAL_RATIO": "1",
            "MODERATION_SHUTDOWN_GRACE_S": str(GRACE_S),
        }
        | settings
    )
    argv = [sys.executable, "-m", "service", "run"]
    async with running_process(argv, env, log) as proc:
        process_started = time.monotonic()
        # Produced while the process joins its group (Tansu holds a first join ~3 s).
        ends = dict.fromkeys(range(PARTITIONS), 0)
        by_source = await produce_records(bootstrap, topics.input, corpus.records, ends)
        produce_s = time.monotonic() - process_started

        async def all_committed() -> bool:
            return await committed(bootstrap, topics.group, topics.input, PARTITIONS) == ends

        await wait_until(all_committed, process_started + PROCESS_DEADLINE_S, [proc], 0.5)
        process_s = time.monotonic() - process_started
        [ended] = (await stop_processes({"pipeline": proc}, GRACE_S + 5)).values()
    ended.log_tail = log.read_text(errors="replace")[-4000:]
    run = FuzzRun(
        corpus=corpus,
        by_source=by_source,
        ends=ends,
        outputs=await read_outputs(bootstrap, topics),
        committed=await committed(bootstrap, topics.group, topics.input, PARTITIONS),
        proc=ended,
        produce_s=produce_s,
        process_s=process_s,
        topics=topics,
    )
    report(run, time.monotonic() - started)
    return run


@pytest.fixture(scope="module")
async def fuzz_run(
    kafka_bootstrap: str, moto_s3: str, tmp_path_factory: pytest.TempPathFactory
) -> FuzzRun:
    """The 10,000-record run on the Rekognition path (the fake endpoint, S3 objects in moto),
    URLs included."""
    log = tmp_path_factory.mktemp("fuzz") / "pipeline.log"
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
    async with (
        FakeRekognition(s3_endpoint_url=moto_s3) as fake,
        serve_origin(routes) as origin,
    ):
        corpus = pipeline_records(SEED, origin=origin, count=RECORDS, partitions=PARTITIONS)
        routes.update(corpus.url_routes)
        for (bucket, key), labels in corpus.s3_objects.items():
            await fake.put_object(bucket, key, labels=labels)
        settings = {
            "REKOGNITION_ENDPOINT_URL": fake.endpoint_url,
            "AWS_ENDPOINT_URL_S3": moto_s3,  # the SDK's own variable: the service reads S3 there
            "MODERATION_TPS": "5000",
            "MODERATION_FETCH_ALLOWED_NETWORKS": f"{ORIGIN_HOST}/32",
            "MODERATION_FETCH_TIMEOUT_S": "5",
        }
        return await run_pipeline(kafka_bootstrap, corpus, settings, log)


def report(run: FuzzRun, wall_s: float) -> None:
    reasons = Counter(run.outcome(k, r) for k, r in run.outputs if k == "dlq")
    verdicts = Counter(k for k, _ in run.outputs if k != "dlq")
    lines = [
        f"fuzz run (seed {SEED}, {run.corpus.backend} backend): {len(run.by_source)} records in "
        f"{PARTITIONS} partitions, "
        f"{sum(len(r.value or b'') for r in run.by_source.values()) / 1e6:.1f} MB of values",
        f"  outputs: {len(run.outputs)}; verdicts {dict(sorted(verdicts.items()))}",
        "  per class: " + ", ".join(f"{k} {n}" for k, n in run.corpus.kinds().items()),
        "  dlq reasons: "
        + ", ".join(f"{r.removeprefix('dlq:')} {n}" for r, n in reasons.most_common()),
        f"  pipeline peak RSS (VmHWM): {run.proc.peak_rss_bytes / 2**20:.0f} MiB "
        f"(bound {RSS_BOUND_BYTES / 2**20:.0f} MiB)",
        f"  wall: produce {run.produce_s:.1f} s (overlapping the group join), all committed "
        f"{run.process_s:.1f} s after start, SIGTERM exit {run.proc.exit_code} in "
        f"{run.proc.stop_s:.1f} s, "
        f"whole run {wall_s:.1f} s",
    ]
    print("\n" + "\n".join(lines))


# -- what the run must show --------------------------------------------------------------------


def outputs_by_source(run: FuzzRun) -> dict[tuple[int, int], list[tuple[str, ConsumerRecord]]]:
    found: dict[tuple[int, int], list[tuple[str, ConsumerRecord]]] = {}
    for kind, record in run.outputs:
        source = orjson.loads(record.value)["source"]
        assert source["topic"] == run.topics.input, source
        found.setdefault((source["partition"], source["offset"]), []).append((kind, record))
    return found


def check_exactly_one_output(run: FuzzRun) -> None:
    found = outputs_by_source(run)
    missing = sorted(set(run.by_source) - set(found))
    extra = sorted(set(found) - set(run.by_source))
    doubled = {src: [k for k, _ in outs] for src, outs in found.items() if len(outs) > 1}
    assert not missing, (
        f"{len(missing)} records without an output, e.g. "
        f"{[(s, run.by_source[s].kind) for s in missing[:5]]}\n{run.proc.log_tail}"
    )
    assert not extra, f"outputs for records never produced: {extra[:5]}"
    assert not doubled, (
        f"{len(doubled)} records with several outputs, e.g. {list(doubled.items())[:5]}"
    )


def check_classes(run: FuzzRun) -> None:
    wrong: Counter[tuple[str, str]] = Counter()
    examples: dict[tuple[str, str], str] = {}
    for source, outs in outputs_by_source(run).items():
        record = run.by_source.get(source)
        if record is None or record.kind in KNOWN_ISSUES:
            continue
        for kind, output in outs:
            outcome = run.outcome(kind, output)
            if outcome not in record.expect:
                wrong[(record.kind, outcome)] += 1
                examples.setdefault(
                    (record.kind, outcome),
                    orjson.loads(output.value).get("error", {}).get("message", ""),
                )
    assert not wrong, "\n".join(
        f"{kind} -> {outcome}: {n} (e.g. {examples[(kind, outcome)][:200]!r})"
        for (kind, outcome), n in wrong.most_common()
    )


def check_dead_letters(run: FuzzRun) -> None:
    """3 MiB of 0x01 -> a bounded letter cut to a base64 prefix with its size and digest; a
    non-UTF-8 header name -> carried as base64; huge keys -> their sha256; headers -> bounded."""
    found = outputs_by_source(run)
    checked: Counter[str] = Counter()
    for source, record in run.by_source.items():
        [(kind, output)] = found[source]
        body = orjson.loads(output.value)
        original = body.get("original", {})
        if record.kind == "poison_3mib":
            assert original["truncated"] == ["value"], original["truncated"]
            assert original["value_encoding"] == "base64"
            assert original["value_size"] == len(record.value or b"")
            assert original["value_sha256"] == hashlib.sha256(record.value or b"").hexdigest()
            checked[record.kind] += 1
        if record.kind == "undecodable_header":
            encodings = [h["key_encoding"] for h in original["headers"]]
            assert "base64" in encodings, original["headers"]
            assert body["source"]["offset"] == source[1]
            checked[record.kind] += 1
        if record.key is not None and len(record.key) > MAX_OUTPUT_KEY_BYTES:
            expected = hashlib.sha256(record.key).hexdigest().encode()
            assert output.key == (expected if kind == "dlq" else body["id"].encode())
            checked["huge_key"] += 1
        carried = sum(
            len(name.encode()) + len(value or b"")
            for name, value in output.headers
            if not name.startswith("moderation-")
        )
        assert carried <= MAX_CARRIED_HEADER_BYTES, (record.kind, carried)
    present = Counter(record.kind for record in run.by_source.values())
    for kind in ("poison_3mib", "undecodable_header", "huge_key"):
        assert checked[kind] == present[kind] > 0, (kind, checked, present)


def check_schemas_and_sizes(run: FuzzRun) -> None:
    import jsonschema

    validators = {
        name: jsonschema.Draft202012Validator(
            orjson.loads((SCHEMAS / f"{name}.schema.json").read_bytes())
        )
        for name in ("verdict", "dlq")
    }
    for kind, record in run.outputs:
        name = "dlq" if kind == "dlq" else "verdict"
        errors = list(validators[name].iter_errors(orjson.loads(record.value)))
        assert not errors, (kind, record.offset, [e.message[:200] for e in errors[:3]])
        if kind == "dlq":
            assert len(record.value) <= DLQ_MAX_VALUE_BYTES, (record.offset, len(record.value))


def check_committed(run: FuzzRun) -> None:
    assert run.committed == run.ends, (
        f"committed {run.committed}, produced {run.ends}\n{run.proc.log_tail}"
    )


def check_process(
    run: FuzzRun,
) -> None:
    proc = run.proc
    assert proc.alive_at_end, f"the pipeline exited during the run\n{proc.log_tail}"
    assert 0 < proc.peak_rss_bytes < RSS_BOUND_BYTES, proc.peak_rss_bytes
    assert proc.exit_code == 0, f"exit {proc.exit_code}\n{proc.log_tail}"
    assert proc.stop_s <= GRACE_S + 5


@system
def test_every_record_ends_in_exactly_one_output(fuzz_run: FuzzRun) -> None:
    check_exactly_one_output(fuzz_run)


@system
def test_each_class_lands_where_it_should(fuzz_run: FuzzRun) -> None:
    check_classes(fuzz_run)


@system
def test_dead_letters_keep_what_the_issue_asked_for(fuzz_run: FuzzRun) -> None:
    check_dead_letters(fuzz_run)


@system
def test_outputs_match_their_schemas_and_size_limits(fuzz_run: FuzzRun) -> None:
    check_schemas_and_sizes(fuzz_run)


@system
def test_committed_offsets_reach_the_end_of_every_partition(fuzz_run: FuzzRun) -> None:
    check_committed(fuzz_run)


@system
def test_the_process_stays_up_within_its_memory_bound_and_stops_on_sigterm(
    fuzz_run: FuzzRun,
) -> None:
    check_process(fuzz_run)


@system
async def test_image_bombs_on_the_local_backend(kafka_bootstrap: str, tmp_path: Path) -> None:
    """Issue 11 item 3 through the real process: the local backend (2 workers, 40 MP) refuses
    pixel floods and zlib bombs by their headers and truncated streams by their data, stays
    under the chart's limit with four zlib bombs in the mix, and decodes real images."""
    pytest.importorskip("onnxruntime", reason="the local model needs pip install '.[local]'")
    corpus = local_backend_records(SEED, partitions=PARTITIONS)
    settings = {"MODERATION_BACKEND": "local", "MODERATION_LOCAL_WORKERS": "2"}
    run = await run_pipeline(kafka_bootstrap, corpus, settings, tmp_path / "local.log")
    check_exactly_one_output(run)
    check_classes(run)
    check_dead_letters(run)
    check_schemas_and_sizes(run)
    check_committed(run)
    check_process(run)


# -- the generator itself (no broker: fast, and keeps the expectations honest) -------------------


def test_the_generator_is_deterministic_and_covers_every_class() -> None:
    first = pipeline_records(SEED, origin="http://127.0.0.2:1")
    again = pipeline_records(SEED, origin="http://127.0.0.2:1")
    assert first.records == again.records
    assert len(first.records) >= RECORDS
    kinds = first.kinds()
    for kind in [*PIPELINE_FIXED, *PIPELINE_WEIGHTS]:
        assert kinds.get(kind, 0) > 0, kind
    for kind, times in PIPELINE_FIXED.items():
        assert kinds[kind] == times, kind
    other = pipeline_records(SEED + 1, origin="http://127.0.0.2:1")
    assert other.records != first.records


#: Reasons that only show once the image is fetched, decoded or moderated: the request itself
#: parses.
_LATER = {
    "forbidden_url",
    "invalid_url",
    "url_http_error",
    "not_an_image",
    "invalid_s3_object",
    "invalid_image_format",
    "truncated_image",
    "image_too_many_pixels",
}


def test_pipeline_expectations_agree_with_the_request_parser() -> None:
    """Every expectation decided at the door is what ``parse_request`` says (raw-batch records
    are dead-lettered before parsing, so they are skipped)."""
    for record in pipeline_records(SEED, origin="http://127.0.0.2:1").records:
        if record.raw and record.kind == "undecodable_header":
            continue
        refused = door_outcome(
            parse_request, record.value, max_record_bytes=8 * 2**20, max_image_bytes=50 * 2**20
        )
        if refused != ACCEPTED:
            assert refused in record.expect, (record.kind, refused, record.expect)
        else:
            assert any(
                not e.startswith("dlq:") or e.removeprefix("dlq:") in _LATER for e in record.expect
            ), (record.kind, record.expect)


def test_review_and_completion_expectations_agree_with_the_parsers() -> None:
    from service.review.records import parse_review_record

    reviews = review_topic_records(SEED)
    loops: list[str] = []
    for record in reviews:
        if record.raw:
            continue
        outcome = door_outcome(parse_review_record, record.value, max_bytes=16 * 2**20)
        if outcome == ACCEPTED:
            loops.append(parse_review_record(record.value, max_bytes=16 * 2**20).loop_name)
        assert outcome in record.expect, (record.kind, outcome)
    limit = 256 * 1024
    for record in completion_events(SEED, loops=loops, max_event_bytes=limit):
        outcome = event_outcome(record.value, limit)
        assert outcome in record.expect, (record.kind, outcome)
