"""The pipeline in-process against a real broker over TCP and the real SDK against the fake."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import jsonschema
import orjson
import pytest
from aiohttp import ClientSession

from service.policy import Thresholds, load_policy
from service.runner import Runner
from service.settings import Settings
from tests.fakes.rekognition import FakeRekognition
from tests.images import BORDERLINE, EXPLICIT, EXPLICIT_NUDITY, MILD, b64, label, png
from tests.kafka_helpers import (
    Topics,
    by_topic,
    collect,
    committed,
    create_topics,
    produce,
    request,
)
from tests.processes import local_settings
from tests.servers import serve_images

pytestmark = pytest.mark.kafka

PARTITIONS = 3
SCHEMAS = Path(__file__).parents[2] / "schemas"


def schema(name: str) -> dict:
    return orjson.loads((SCHEMAS / f"{name}.schema.json").read_bytes())


def make_settings(
    bootstrap: str, topics: Topics, fake: FakeRekognition, **overrides: str
) -> Settings:
    env: dict[str, str] = {
        **local_settings(bootstrap, topics),
        "REKOGNITION_ENDPOINT_URL": fake.endpoint_url,
        # The service reads S3 where the fake reads it (moto): our variable in-process (the
        # SDK's own AWS_ENDPOINT_URL_S3 is process-wide; the process tests set that one).
        "S3_ENDPOINT_URL": fake.s3_endpoint_url or "",
        "MODERATION_TPS": "200",
        "MODERATION_MAX_IN_FLIGHT": "32",
        "MODERATION_FETCH_ALLOWED_NETWORKS": "127.0.0.1/32",
        "MODERATION_FETCH_TIMEOUT_S": "2",
        "MODERATION_SHUTDOWN_GRACE_S": "5",
    }
    env.update(overrides)
    return Settings.from_env(env)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Runner]:
    runner = Runner(
        settings,
        load_policy(
            settings.policy_file, Thresholds(settings.reject_threshold, settings.review_threshold)
        ),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await asyncio.wait_for(runner.ready.wait(), 30)
        yield runner
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


image_server = serve_images  # a local origin for URL references


async def http_probes(port: int | None) -> dict[str, tuple[int, str]]:
    assert port is not None
    results: dict[str, tuple[int, str]] = {}
    async with ClientSession() as session:
        for path in ("/healthz", "/readyz", "/metrics"):
            async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                results[path] = (response.status, await response.text())
    return results


def sample(exposition: str, name: str) -> float:
    """Sum of the samples whose name (and labels, if given) start with ``name``."""
    total = 0.0
    found = False
    for line in exposition.splitlines():
        if line.startswith(name) and (line[len(name)] in " {" or name.endswith("}")):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    assert found, f"no sample {name}"
    return total


def outcomes(records: list) -> dict[str, list[tuple[str, dict]]]:
    """id -> every (topic kind, value) it was published under."""
    seen: dict[str, list[tuple[str, dict]]] = {}
    for record in records:
        value = orjson.loads(record.value)
        seen.setdefault(value["id"], []).append((record.topic, value))
    return seen


async def test_every_kind_of_input_ends_in_exactly_one_topic(
    kafka_bootstrap: str, topics: Topics, fake_rekognition: FakeRekognition
) -> None:
    await check_every_kind_of_input(kafka_bootstrap, topics, fake_rekognition)


async def check_every_kind_of_input(
    kafka_bootstrap: str, topics: Topics, fake_rekognition: FakeRekognition, **overrides: str
) -> None:
    """Shared with the Apache Kafka run (tests/integration/test_apache_kafka.py)."""
    await fake_rekognition.put_object("bucket", "clean.jpg", labels=[])
    await fake_rekognition.put_object("bucket", "explicit.jpg", labels=[EXPLICIT, EXPLICIT_NUDITY])
    await fake_rekognition.put_object("bucket", "swimwear.png", labels=[BORDERLINE])
    await create_topics(kafka_bootstrap, [topics.input, *topics.outputs.values()], PARTITIONS)
    async with image_server({"/ok.png": png(MILD), "/page.html": b"<html></html>"}) as origin:
        cases: dict[str, tuple[bytes, str, str | None]] = {
            # id: (value, expected topic kind, expected DLQ reason)
            "s3-clean": (
                request("s3-clean", {"s3": {"bucket": "bucket", "key": "clean.jpg"}}),
                "approved",
                None,
            ),
            "s3-explicit": (
                request("s3-explicit", {"s3": {"bucket": "bucket", "key": "explicit.jpg"}}),
                "rejected",
                None,
            ),
            "s3-swimwear": (
                request("s3-swimwear", {"s3": {"bucket": "bucket", "key": "swimwear.png"}}),
                "review",
                None,
            ),
            "s3-missing": (
                request("s3-missing", {"s3": {"bucket": "bucket", "key": "nope.jpg"}}),
                "dlq",
                "invalid_s3_object",
            ),
            "bytes-explicit": (
                request("bytes-explicit", {"bytes": b64(png(EXPLICIT))}),
                "rejected",
                None,
            ),
            "bytes-text": (
                request("bytes-text", {"bytes": b64(b"hello, not an image")}),
                "dlq",
                "not_an_image",
            ),
            "bytes-bad-b64": (request("bytes-bad-b64", {"bytes": "***"}), "dlq", "invalid_base64"),
            "url-ok": (request("url-ok", {"url": f"{origin}/ok.png"}), "approved", None),
            "url-html": (
                request("url-html", {"url": f"{origin}/page.html"}),
                "dlq",
                "not_an_image",
            ),
            "url-404": (
                request("url-404", {"url": f"{origin}/missing.png"}),
                "dlq",
                "url_http_error",
            ),
            "url-metadata": (
                request("url-metadata", {"url": "http://169.254.169.254/latest/meta-data/"}),
                "dlq",
                "forbidden_url",
            ),
            "url-ftp": (
                request("url-ftp", {"url": "ftp://example.com/a.png"}),
                "dlq",
                "invalid_url",
            ),
            "no-image": (orjson.dumps({"id": "no-image"}), "dlq", "missing_field"),
            "two-images": (
                request(
                    "two-images", {"url": f"{origin}/ok.png", "s3": {"bucket": "b", "key": "k"}}
                ),
                "dlq",
                "invalid_field",
            ),
        }
        raw_bad = [
            (b"k-json", b"{not json", "malformed_json"),
            (b"k-noid", orjson.dumps({"image": {}}), "missing_field"),
        ]
        trace = [("traceparent", b"00-abc-def-01")]
        records = [(key.encode(), value, trace) for key, (value, _, _) in cases.items()]
        records += [(key, value, trace) for key, value, _ in raw_bad]
        await produce(kafka_bootstrap, topics.input, records)

        settings = make_settings(kafka_bootstrap, topics, fake_rekognition, **overrides)
        async with running(settings) as runner:
            out = await collect(kafka_bootstrap, list(topics.outputs.values()), len(records))
            probes = await http_probes(runner.http_port)

    kind_of = {topic: kind for kind, topic in topics.outputs.items()}
    by_id: dict[str, list[tuple[str, dict]]] = {}
    unparsed: list[dict] = []
    for record in out:
        value = orjson.loads(record.value)
        assert ("traceparent", b"00-abc-def-01") in list(record.headers)
        jsonschema.validate(value, schema("dlq" if record.topic == topics.dlq else "verdict"))
        if value.get("id") is None:
            unparsed.append(value)
        else:
            by_id.setdefault(value["id"], []).append((kind_of[record.topic], value))

    for request_id, (_, kind, reason) in cases.items():
        assert [k for k, _ in by_id.get(request_id, [])] == [kind], request_id
        value = by_id[request_id][0][1]
        if kind == "dlq":
            assert value["error"]["reason"] == reason, (request_id, value["error"])
            assert value["source"]["topic"] == topics.input
        else:
            assert value["verdict"] == kind
            assert value["decided_by"] == "model"
            assert value["reasons"], value
    assert sorted(v["error"]["reason"] for v in unparsed) == sorted(r for _, _, r in raw_bad)
    assert {v["original"]["value"] for v in unparsed} == {
        b"{not json".decode(),
        orjson.dumps({"image": {}}).decode(),
    }

    rejected = by_id["s3-explicit"][0][1]
    assert {label["name"] for label in rejected["labels"]} == {"Explicit", "Explicit Nudity"}
    assert rejected["model_version"] == "7.0"
    assert rejected["reasons"][0]["rule"] == "reject_threshold"

    assert probes["/healthz"][0] == 200
    assert probes["/readyz"][0] == 200
    metrics = probes["/metrics"][1]
    dead = sum(1 for _, kind, _ in cases.values() if kind == "dlq") + len(raw_bad)
    assert sample(metrics, "moderation_dlq_total") == dead
    assert sample(metrics, "moderation_messages_consumed_total") == len(records)
    assert sample(metrics, 'moderation_verdicts_total{decided_by="model",verdict="rejected"}') == 2
    assert sample(metrics, 'moderation_labels_total{category="Explicit"}') == 2
    assert sample(metrics, 'moderation_dlq_total{reason="forbidden_url"}') == 1
    assert sample(metrics, "moderation_in_flight") == 0

    # Every input offset is committed once the outputs were acknowledged.
    offsets = await committed(kafka_bootstrap, topics.group, topics.input, PARTITIONS)
    assert sum(offsets.values()) == len(records)


async def test_throttling_slows_down_but_never_dead_letters(
    kafka_bootstrap: str, topics: Topics, fake_rekognition: FakeRekognition
) -> None:
    fake_rekognition.set_quota(20, burst=2)
    count = 60
    await create_topics(kafka_bootstrap, [topics.input, *topics.outputs.values()], PARTITIONS)
    await produce(
        kafka_bootstrap,
        topics.input,
        [(None, request(f"m{i}", {"bytes": b64(png(salt=str(i)))}), []) for i in range(count)],
    )
    # Configured far above the quota: only adaptation keeps the service near it.
    settings = make_settings(kafka_bootstrap, topics, fake_rekognition, MODERATION_TPS="200")
    async with running(settings):
        out = await collect(kafka_bootstrap, list(topics.outputs.values()), count, timeout_s=90)
    grouped = by_topic(out)
    assert topics.dlq not in grouped
    assert len({orjson.loads(r.value)["id"] for r in grouped[topics.approved]}) == count
    assert fake_rekognition.stats.throttled > 0  # the limit was really hit, and survived


async def test_backend_outage_waits_instead_of_dead_lettering(
    kafka_bootstrap: str, topics: Topics, fake_rekognition: FakeRekognition
) -> None:
    fake_rekognition.inject_errors("AccessDeniedException", count=12)
    count = 10
    await create_topics(kafka_bootstrap, [topics.input, *topics.outputs.values()], PARTITIONS)
    await produce(
        kafka_bootstrap,
        topics.input,
        [
            (None, request(f"o{i}", {"bytes": b64(png(EXPLICIT, salt=str(i)))}), [])
            for i in range(count)
        ],
    )
    settings = make_settings(kafka_bootstrap, topics, fake_rekognition)
    async with running(settings):
        out = await collect(kafka_bootstrap, list(topics.outputs.values()), count, timeout_s=90)
    grouped = by_topic(out)
    assert topics.dlq not in grouped
    assert len(grouped[topics.rejected]) == count
    assert fake_rekognition.stats.errors_by_code.get("AccessDeniedException") == 12


async def test_image_the_backend_always_fails_on_is_dead_lettered_while_others_pass(
    kafka_bootstrap: str, topics: Topics, fake_rekognition: FakeRekognition
) -> None:
    await fake_rekognition.put_object("bucket", "poison.png", error="InternalServerError")
    await fake_rekognition.put_object("bucket", "fine.png", labels=[])
    await create_topics(kafka_bootstrap, [topics.input, *topics.outputs.values()], PARTITIONS)
    poison = request("poison", {"s3": {"bucket": "bucket", "key": "poison.png"}})
    fine = [request(f"fine{i}", {"s3": {"bucket": "bucket", "key": "fine.png"}}) for i in range(20)]
    settings = make_settings(kafka_bootstrap, topics, fake_rekognition, MODERATION_MAX_ATTEMPTS="3")
    async with running(settings):
        await produce(kafka_bootstrap, topics.input, [(None, poison, [])])
        # Only once the poison image has failed do the healthy ones arrive: the service must tell
        # "this image" from "the backend" by seeing others succeed in the meantime.
        for _ in range(300):
            if fake_rekognition.stats.errors_by_code.get("InternalServerError"):
                break
            await asyncio.sleep(0.05)
        await produce(kafka_bootstrap, topics.input, [(None, v, []) for v in fine])
        out = await collect(kafka_bootstrap, list(topics.outputs.values()), 21, timeout_s=90)
    grouped = by_topic(out)
    dead = [orjson.loads(r.value) for r in grouped[topics.dlq]]
    assert [(d["id"], d["error"]["reason"]) for d in dead] == [("poison", "backend_error")]
    assert dead[0]["attempts"] >= 3
    assert len(grouped[topics.approved]) == 20


ALWAYS_REVIEW_FLOW = "arn:aws:sagemaker:us-east-1:000000000000:flow-definition/always-review"


async def test_managed_a2i_starts_one_loop_per_request_and_routes_to_review(
    kafka_bootstrap: str, topics: Topics, fake_rekognition: FakeRekognition
) -> None:
    await fake_rekognition.put_object("bucket", "beach.jpg", labels=[BORDERLINE])
    await create_topics(kafka_bootstrap, [topics.input, *topics.outputs.values()], PARTITIONS)
    same = request("r1", {"s3": {"bucket": "bucket", "key": "beach.jpg"}}, attributes={"a": 1})
    # r1 twice (a redelivery), then r2: the redelivery must ask for the same loop.
    values = [same, same, request("r2", {"s3": {"bucket": "bucket", "key": "beach.jpg"}})]
    await produce(kafka_bootstrap, topics.input, [(None, v, []) for v in values])
    settings = make_settings(
        kafka_bootstrap,
        topics,
        fake_rekognition,
        A2I_FLOW_DEFINITION_ARN=ALWAYS_REVIEW_FLOW,
        A2I_CONTENT_CLASSIFIERS="FreeOfPersonallyIdentifiableInformation",
    )
    async with running(settings):
        out = await collect(kafka_bootstrap, list(topics.outputs.values()), len(values))
    grouped = by_topic(out)
    assert set(grouped) == {topics.review}
    reviews = [orjson.loads(r.value) for r in grouped[topics.review]]
    for review in reviews:
        jsonschema.validate(review, schema("verdict"))
        details = review["review"]
        assert details["mode"] == "managed"
        assert details["flow_definition_arn"] == ALWAYS_REVIEW_FLOW
        assert details["human_loop_arn"].endswith("/" + details["human_loop_name"])
        assert details["activation_reasons"] == ["ConditionsEvaluation"]
        assert review["reasons"][0]["rule"] == "human_loop_started"
    names = {r["id"]: set() for r in reviews}
    for review in reviews:
        names[review["id"]].add(review["review"]["human_loop_name"])
    assert len(names["r1"]) == 1  # the redelivered request asked for the same loop
    assert names["r1"] != names["r2"]


@pytest.mark.parametrize("fallback", ["hold", "policy"])
async def test_human_loop_quota_exceeded_holds_or_falls_back_to_local_policy(
    kafka_bootstrap: str, topics: Topics, fake_rekognition: FakeRekognition, fallback: str
) -> None:
    await fake_rekognition.put_object("bucket", "beach.jpg", labels=[BORDERLINE])
    fake_rekognition.inject_errors("HumanLoopQuotaExceededException", count=2)
    await create_topics(kafka_bootstrap, [topics.input, *topics.outputs.values()], PARTITIONS)
    await produce(
        kafka_bootstrap,
        topics.input,
        [(None, request("q1", {"s3": {"bucket": "bucket", "key": "beach.jpg"}}), [])],
    )
    settings = make_settings(
        kafka_bootstrap,
        topics,
        fake_rekognition,
        A2I_FLOW_DEFINITION_ARN=ALWAYS_REVIEW_FLOW,
        MODERATION_REVIEW_QUOTA_FALLBACK=fallback,
    )
    async with running(settings):
        out = await collect(kafka_bootstrap, list(topics.outputs.values()), 1, timeout_s=30)
    (record,) = out
    review = orjson.loads(record.value)
    assert record.topic == topics.review  # BORDERLINE (65) is in the default review band
    if fallback == "hold":
        assert review["review"]["mode"] == "managed"  # waited for A2I to take it
        assert fake_rekognition.stats.errors_by_code["HumanLoopQuotaExceededException"] == 2
    else:
        assert review["review"]["mode"] == "self_hosted"  # decided locally, our console reviews
        assert review["review"]["fallback_reason"] == "human_loop_quota_exceeded"
        assert review["review"]["human_loop_arn"] is None


async def test_self_hosted_activation_conditions_route_and_report_like_a2i(
    kafka_bootstrap: str, topics: Topics, fake_rekognition: FakeRekognition
) -> None:
    conditions = {
        "Conditions": [
            {
                "ConditionType": "ModerationLabelConfidenceCheck",
                "ConditionParameters": {
                    "ModerationLabelName": "Alcohol",
                    "ConfidenceGreaterThan": 55,
                },
            }
        ]
    }
    await create_topics(kafka_bootstrap, [topics.input, *topics.outputs.values()], PARTITIONS)
    values = [
        request("drinks", {"bytes": b64(png(label("Alcohol", 60.0), salt="a"))}),
        request("sober", {"bytes": b64(png(label("Alcohol", 52.0), salt="b"))}),
    ]
    await produce(kafka_bootstrap, topics.input, [(None, v, []) for v in values])
    settings = make_settings(
        kafka_bootstrap,
        topics,
        fake_rekognition,
        MODERATION_ACTIVATION_CONDITIONS=orjson.dumps(conditions).decode(),
        MODERATION_REVIEW_THRESHOLD="70",  # keep the threshold band out of the way
    )
    async with running(settings):
        out = await collect(kafka_bootstrap, list(topics.outputs.values()), len(values))
    by_id = {orjson.loads(r.value)["id"]: (r.topic, orjson.loads(r.value)) for r in out}
    topic, review = by_id["drinks"]
    assert topic == topics.review
    details = review["review"]
    assert details["mode"] == "self_hosted"
    assert details["activation_results"]["Conditions"][0]["EvaluationResult"] is True
    assert details["activation_reasons"] == ["Alcohol confidence 60.0 > 55"]
    assert by_id["sober"][0] == topics.approved


def consumed(runner: Runner) -> float:
    return runner.metrics.registry.get_sample_value("moderation_messages_consumed_total") or 0.0


async def test_rebalances_lose_nothing_and_commit_only_finished_work(
    kafka_bootstrap: str, topics: Topics, fake_rekognition: FakeRekognition
) -> None:
    """A second replica joins mid-run and the first leaves mid-run: two rebalances with work in
    flight. Every request still ends in its topic and every offset is committed."""
    fake_rekognition.set_latency(0.05, 0.02)
    await fake_rekognition.put_object("bucket", "ok.jpg", labels=[])
    count = 300
    await create_topics(kafka_bootstrap, [topics.input, *topics.outputs.values()], 4)
    await produce(
        kafka_bootstrap,
        topics.input,
        [
            (None, request(f"rb{i}", {"s3": {"bucket": "bucket", "key": "ok.jpg"}}), [])
            for i in range(count)
        ],
    )
    settings = make_settings(
        kafka_bootstrap,
        topics,
        fake_rekognition,
        MODERATION_TPS="60",
        MODERATION_MAX_IN_FLIGHT="16",
    )
    outputs = list(topics.outputs.values())
    async with running(settings) as first:
        while consumed(first) < 60:
            await asyncio.sleep(0.1)
        async with running(settings) as second:
            while consumed(second) < 30:
                await asyncio.sleep(0.1)
        # The second replica left with work in flight; the first takes its partitions back.
        out = await collect(kafka_bootstrap, outputs, count, timeout_s=90)
        seen = {orjson.loads(r.value)["id"] for r in out}
        while len(seen) < count:
            out = await collect(kafka_bootstrap, outputs, 10**9, timeout_s=3)
            seen = {orjson.loads(r.value)["id"] for r in out}
    assert seen == {f"rb{i}" for i in range(count)}
    assert {r.topic for r in out} == {topics.approved}
    offsets = await committed(kafka_bootstrap, topics.group, topics.input, 4)
    assert sum(offsets.values()) == count
