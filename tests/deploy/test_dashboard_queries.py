"""The Grafana dashboard: its structure, that every panel query parses and every metric is on a
panel, and (markers kafka + slow) that every panel query and every alert expression evaluates
against a real Prometheus scraping the real service.

The live test runs the pipeline in-process on the test broker with the fake Rekognition (as
tests/integration/test_pipeline.py does) and a review console beside it, sends good, throttled,
failing and bad records so the series exist, and points Debian's `prometheus` binary at both
/metrics endpoints every second with deploy/prometheus/alerts.yaml loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from itertools import combinations
from pathlib import Path

import pytest
import yaml

from service.console.metrics import ConsoleMetrics
from service.http_server import Health, HttpServer
from service.metrics import PipelineMetrics, SinkMetrics
from tests.console.harness import FakeClock, base_env, running_console
from tests.deploy.observability import (
    ALERTS,
    JOB,
    PanelQuery,
    Prometheus,
    alert_rules,
    dashboard_queries,
    load_dashboard,
    panels,
)
from tests.fakes.rekognition import FakeRekognition
from tests.images import BORDERLINE, EXPLICIT, EXPLICIT_NUDITY, MILD, b64, png
from tests.integration.test_pipeline import make_settings, running
from tests.kafka_helpers import Topics, collect, create_topics, produce, request

# Counters with labels have no series until their first increment, and nothing the pipeline does
# in this test increments these (the review sink does). Queries over them may come back empty
# until the service pre-initialises their label sets at start-up.
MAY_BE_EMPTY: set[str] = set()  # every series is initialised at start-up (*Metrics.initialise)
REQUIRED_PANELS = {
    "Throughput",
    "Verdict mix",
    "Labels by category",
    "End-to-end latency",
    "Backend call latency",
    "Backend calls by outcome",
    "Throttled ratio",
    "Limiter rate vs configured",
    "Circuit breaker",
    "In flight vs budget",
    "Intake paused",
    "Consumer lag per partition",
    "Dead letters by reason",
    "Review queue",
    "Review turnaround",
    "Review console: queue",
}
# The console's gauges read the store every replica shares: each replica reports the same value.
SHARED_STORE_GAUGES = {
    "moderation_console_items_pending",
    "moderation_console_claims_active",
    "moderation_console_reviews_overdue",
    "moderation_console_decisions_undelivered",
}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return load_dashboard()


# --- offline checks ----------------------------------------------------------------------------


def test_dashboard_structure(dashboard: dict) -> None:
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] == "image-moderation"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["namespace"]["allValue"] == ".*"
    all_panels = list(panels(dashboard))
    ids = [p["id"] for p in all_panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert {p["title"] for p in all_panels} >= REQUIRED_PANELS
    for panel in all_panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs, panel["title"]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]
            assert target["expr"].strip(), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert grid["h"] > 0, panel["title"]
    for a, b in combinations([p for p in all_panels if p["type"] != "row"], 2):
        assert not overlaps(a["gridPos"], b["gridPos"]), (a["title"], b["title"])


def overlaps(a: dict, b: dict) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


def exposed_metric_names() -> Iterator[str]:
    """The names the service exposes (the pipeline and sink, service/metrics.py; the console,
    service/console/metrics.py): counters as _total, histograms by their _bucket."""
    for metrics in (PipelineMetrics(), SinkMetrics(), ConsoleMetrics()):
        for family in metrics.registry.collect():
            suffix = {"counter": "_total", "histogram": "_bucket"}.get(family.type, "")
            yield family.name + suffix


def test_every_metric_is_on_a_panel(dashboard: dict) -> None:
    used = set().union(*(q.metrics for q in dashboard_queries(dashboard)))
    missing = set(exposed_metric_names()) - used
    assert not missing, f"metrics no panel shows: {sorted(missing)}"
    unknown = used - set(exposed_metric_names())
    assert not unknown, f"panels query metrics the service does not export: {sorted(unknown)}"


def test_shared_store_gauges_take_the_max_over_console_replicas(dashboard: dict) -> None:
    """A sum() would count every waiting item once per console replica."""
    queries = [q for q in dashboard_queries(dashboard) if q.metrics & SHARED_STORE_GAUGES]
    assert {metric for q in queries for metric in q.metrics} >= SHARED_STORE_GAUGES
    for query in queries:
        assert query.expr.startswith("max("), (query.panel, query.expr)
        assert "sum" not in query.expr, (query.panel, query.expr)
    for rule in alert_rules():
        used = PanelQuery("", "", rule["expr"], "", "").metrics
        assert not (used & SHARED_STORE_GAUGES and "sum" in rule["expr"]), rule["alert"]


def test_alerts_only_use_exported_metrics() -> None:
    exported = set(exposed_metric_names())
    for rule in alert_rules():
        used = PanelQuery("", "", rule["expr"], "", "").metrics
        assert used <= exported, (rule["alert"], used - exported)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_every_panel_query_parses(dashboard: dict, tmp_path: Path) -> None:
    """promtool parses recording rules offline: one per panel query, variables substituted."""
    queries = dashboard_queries(dashboard)
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": q.promql}
                    for i, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "$" not in "".join(q.promql for q in queries), "a Grafana variable was not substituted"


# --- the real thing ----------------------------------------------------------------------------

PARTITIONS = 3


def traffic() -> list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]:
    """Approved, rejected, review, and dead letters of several reasons (parsing and backend)."""
    records: list[bytes] = []
    records += [
        request(f"clean{i}", {"s3": {"bucket": "uploads", "key": "clean.jpg"}}) for i in range(10)
    ]
    records += [
        request(f"explicit{i}", {"s3": {"bucket": "uploads", "key": "explicit.jpg"}})
        for i in range(4)
    ]
    records += [
        request(f"swim{i}", {"s3": {"bucket": "uploads", "key": "swimwear.png"}}) for i in range(3)
    ]
    records += [request(f"inline{i}", {"bytes": b64(png(EXPLICIT, salt=str(i)))}) for i in range(3)]
    records += [request(f"mild{i}", {"bytes": b64(png(MILD, salt=str(i)))}) for i in range(3)]
    records += [
        request("missing", {"s3": {"bucket": "uploads", "key": "nope.jpg"}})
    ]  # backend refuses
    records += [request("text", {"bytes": b64(b"not an image")})]
    records += [request("bad-b64", {"bytes": "***"}), b"{not json", b'{"image": {}}']
    return [(None, value, []) for value in records]


async def script_fake(fake: FakeRekognition) -> None:
    await fake.put_object("uploads", "clean.jpg", labels=[])
    await fake.put_object("uploads", "explicit.jpg", labels=[EXPLICIT, EXPLICIT_NUDITY])
    await fake.put_object("uploads", "swimwear.png", labels=[BORDERLINE])
    fake.set_quota(15, burst=1)  # far below the service's 50 TPS: throttling is certain
    fake.set_latency(0.02, 0.01)
    fake.inject_errors("InternalServerError", count=2)  # outcome="error", then retried


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_every_panel_query_and_alert_evaluates_against_real_prometheus(
    kafka_bootstrap: str, topics: Topics, fake_rekognition: FakeRekognition, tmp_path: Path
) -> None:
    if shutil.which("prometheus") is None:
        pytest.skip(
            "the prometheus binary is not installed (Debian package prometheus; CI installs it "
            "with scripts/install-system-deps)"
        )
    await script_fake(fake_rekognition)
    await create_topics(kafka_bootstrap, [topics.input, *topics.outputs.values()], PARTITIONS)
    records = traffic()
    settings = make_settings(kafka_bootstrap, topics, fake_rekognition, MODERATION_TPS="50")

    console_dir = tmp_path / "console"
    console_dir.mkdir()
    async with (
        running(settings) as runner,
        running_console(base_env(console_dir), clock=FakeClock()) as console,
        sink_metrics_served() as sink_port,
    ):
        targets = [
            f"127.0.0.1:{runner.http_port}",
            f"127.0.0.1:{console.port}",
            f"127.0.0.1:{sink_port}",
        ]
        prometheus = Prometheus(tmp_path, targets, [ALERTS])
        async with prometheus.running() as prom:
            await prom.wait_for_scrapes(2)  # counters seen at zero: rates see the increase
            await produce(kafka_bootstrap, topics.input, records)
            out = await collect(
                kafka_bootstrap, list(topics.outputs.values()), len(records), timeout_s=90
            )
            assert len(out) == len(records)
            await wait_until_scraped(prom, "sum(moderation_messages_consumed_total)", len(records))
            await asyncio.sleep(2)  # two more scrapes after the last increase
            rules = await prom.wait_rules_evaluated()

            panel_results = {q: await prom.query(q.promql) for q in dashboard_queries()}
            alert_results = {r["alert"]: await prom.query(r["expr"]) for r in alert_rules()}
            up = await prom.query(f'up{{job="{JOB}"}}')

    assert fake_rekognition.stats.throttled > 0, "the traffic was meant to be throttled"
    assert [float(s["value"][1]) for s in up] == [1.0, 1.0, 1.0]  # pipeline, console, sink
    assert {r["name"] for r in rules} == {r["alert"] for r in alert_rules()}
    for rule in rules:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
        assert rule["state"] != "firing", rule["name"]  # healthy traffic: no alert fires
    assert set(alert_results) == {r["alert"] for r in alert_rules()}  # each evaluated: success

    empty = [
        f"{q.panel} [{q.ref_id}]: {q.promql}"
        for q, result in panel_results.items()
        if not result and not (q.metrics & MAY_BE_EMPTY)
    ]
    assert not empty, "panel queries without data:\n" + "\n".join(empty)


@contextlib.asynccontextmanager
async def sink_metrics_served() -> AsyncIterator[int]:
    """The review sink's metrics page as the sink serves it (its HTTP server, its metrics,
    initialised as at its start), without a faust worker: the sink's panels need its series."""
    metrics = SinkMetrics()
    metrics.initialise()
    server = HttpServer(metrics, Health(started=True), "127.0.0.1", 0)
    await server.start()
    try:
        assert server.port is not None
        yield server.port
    finally:
        await server.close()


async def wait_until_scraped(prom: Prometheus, promql: str, at_least: float) -> None:
    for _ in range(120):
        result = await prom.query(promql)
        if result and float(result[0]["value"][1]) >= at_least:
            return
        await asyncio.sleep(0.25)
    pytest.fail(f"Prometheus never saw {promql} >= {at_least}: {result}")
