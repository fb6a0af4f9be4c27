"""Render docs/dashboard.png: the dashboard's panel queries, evaluated by a real Prometheus over a
real (local) run of the service, plotted with matplotlib in the dashboard's layout.

Not a Grafana screenshot (no Grafana here): the same PromQL, the same panels and positions, drawn
by matplotlib. The run: embedded broker, the fake Rekognition with a 20 TPS quota and ~150 ms
calls, the pipeline at 25 TPS (so it is throttled and adapts), and phases of steady traffic, a
burst, a backend outage and a wave of bad records. Run it with scripts/render-dashboard-png.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from moto.server import ThreadedMotoServer

from service.kafka.embedded import EmbeddedBroker, free_port
from tests.deploy.observability import (
    ALERTS,
    REPO,
    Prometheus,
    load_dashboard,
    panels,
    substitute,
)
from tests.fakes.rekognition import FakeRekognition
from tests.images import BORDERLINE, EXPLICIT, EXPLICIT_NUDITY, MILD, b64, label, png
from tests.integration.test_pipeline import make_settings, running
from tests.kafka_helpers import Topics, create_topics, request

OUTPUT = REPO / "docs" / "dashboard.png"
VIOLENCE = label("Violence", 88.0)
DRUGS = label("Drugs & Tobacco", 70.0)


def good(i: int, rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.55:
        return request(f"c{i}", {"s3": {"bucket": "uploads", "key": "clean.jpg"}})
    if roll < 0.70:
        return request(f"e{i}", {"s3": {"bucket": "uploads", "key": "explicit.jpg"}})
    if roll < 0.80:
        return request(f"s{i}", {"s3": {"bucket": "uploads", "key": "swimwear.png"}})
    if roll < 0.88:
        return request(f"v{i}", {"bytes": b64(png(VIOLENCE, salt=str(i)))})
    if roll < 0.94:
        return request(f"d{i}", {"bytes": b64(png(DRUGS, salt=str(i)))})
    return request(f"m{i}", {"bytes": b64(png(MILD, salt=str(i)))})


def bad(i: int, rng: random.Random) -> bytes:
    return rng.choice(
        [
            b"{not json",
            request(f"x{i}", {"bytes": b64(b"plain text")}),
            request(f"x{i}", {"bytes": "***"}),
            request(f"x{i}", {"s3": {"bucket": "uploads", "key": "missing.jpg"}}),
        ]
    )


async def traffic(bootstrap: str, topic: str, fake: FakeRekognition, duration_s: float) -> None:
    """Phases as fractions of the run: steady, burst, outage, steady with bad records."""
    rng = random.Random(7)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    start = time.monotonic()
    i = 0
    try:
        while (elapsed := time.monotonic() - start) < duration_s:
            phase = elapsed / duration_s
            rate, bad_share = 12.0, 0.03
            if 0.25 <= phase < 0.45:
                rate = 40.0  # burst: more than the quota, lag grows, throttling
            if 0.55 <= phase < 0.65:
                fake.inject_errors("ServiceUnavailableException")  # outage: the circuit opens
            elif phase >= 0.65:
                fake.inject_errors(None)
            if 0.75 <= phase < 0.85:
                bad_share = 0.35  # a producer sends garbage
            value = bad(i, rng) if rng.random() < bad_share else good(i, rng)
            await producer.send(topic, value=value)
            i += 1
            await asyncio.sleep(rng.expovariate(rate))
        await producer.flush()
    finally:
        await producer.stop()
    print(f"produced {i} records")


async def collect_panels(duration_s: float, workdir: Path) -> tuple[dict, dict, float, float]:
    # S3 objects live in moto: the service reads them (S3_ENDPOINT_URL) before passing
    # references to the fake, which reads them too.
    moto_port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    moto.start()
    s3_endpoint = f"http://127.0.0.1:{moto_port}"
    fake = FakeRekognition(tps_quota=20, latency_s=0.15, jitter_s=0.05, s3_endpoint_url=s3_endpoint)
    broker = EmbeddedBroker()
    await broker.start()
    await fake.start()
    try:
        await fake.put_object("uploads", "clean.jpg", labels=[])
        await fake.put_object("uploads", "explicit.jpg", labels=[EXPLICIT, EXPLICIT_NUDITY])
        await fake.put_object("uploads", "swimwear.png", labels=[BORDERLINE])
        topics = Topics.unique("dash")
        await create_topics(
            broker.bootstrap_servers, [topics.input, *topics.outputs.values()], partitions=4
        )
        settings = make_settings(
            broker.bootstrap_servers,
            topics,
            fake,
            MODERATION_TPS="25",
            MODERATION_MAX_IN_FLIGHT="64",
            KAFKA_SESSION_TIMEOUT_MS="6000",
        )
        async with running(settings) as runner:
            prometheus = Prometheus(workdir, [f"127.0.0.1:{runner.http_port}"], [ALERTS])
            async with prometheus.running() as prom:
                await prom.wait_for_scrapes(3)
                start = time.time()
                await traffic(broker.bootstrap_servers, topics.input, fake, duration_s)
                await asyncio.sleep(5)  # the last records' outcomes and two more scrapes
                end = time.time()
                variables = {
                    "$__rate_interval": "15s",
                    "$__range": f"{int(end - start)}s",
                    "$namespace": ".*",
                }
                dashboard = load_dashboard()
                series: dict[tuple[int, str], list[dict[str, Any]]] = {}
                for panel in panels(dashboard):
                    for target in panel.get("targets", []):
                        promql = substitute(target["expr"], variables)
                        key = (panel["id"], target["refId"])
                        if panel["type"] == "piechart":
                            series[key] = await prom.query(promql)
                        else:
                            series[key] = await prom.query_range(promql, start, end, 2)
        return dashboard, series, start, end
    finally:
        await fake.stop()
        await broker.stop()
        moto.stop()


def legend(template: str, metric: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m[1], ""), template) or "value"


def render(dashboard: dict, series: dict, start: float, end: float, output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec
    from matplotlib.ticker import FuncFormatter, PercentFormatter

    plt.style.use("dark_background")
    shown = [p for p in panels(dashboard) if p["type"] != "row"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in shown)
    fig = plt.figure(figsize=(22, rows * 0.5), facecolor="#111217")
    grid = GridSpec(rows, 24, figure=fig, hspace=0.0, wspace=1.2, top=0.975, bottom=0.02)
    fig.suptitle(
        f"{dashboard['title']} — panel queries evaluated by Prometheus over a local run "
        "(embedded Kafka, fake Rekognition: 20 TPS quota; burst, outage, bad records)",
        color="#d8d9da",
        fontsize=13,
        y=0.995,
    )
    for panel in shown:
        pos = panel["gridPos"]
        ax = fig.add_subplot(
            # The panel's first grid row is left for its title, as Grafana's panel header.
            grid[pos["y"] + 1 : pos["y"] + pos["h"], pos["x"] : pos["x"] + pos["w"]],
            facecolor="#181b1f",
        )
        ax.set_title(panel["title"], loc="left", fontsize=10, color="#d8d9da")
        ax.tick_params(labelsize=7, colors="#9fa7b3")
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        unit = panel["fieldConfig"]["defaults"].get("unit", "short")
        targets = panel["targets"]
        if panel["type"] == "stat":
            # Grafana's stat: the last value over a sparkline of the range.
            ax.set_xticks([])
            ax.set_yticks([])
            values = [series[(panel["id"], t["refId"])] for t in targets]
            last = [float(v[0]["values"][-1][1]) if v else float("nan") for v in values]
            text = " / ".join(fmt(value, unit) for value in last)
            if values[0]:
                points = values[0][0]["values"]
                ax.fill_between(
                    [float(t) - start for t, _ in points],
                    [float(v) if v != "NaN" else 0.0 for _, v in points],
                    color="#73bf69",
                    alpha=0.25,
                )
                ax.set_xlim(0, end - start)
            ax.text(
                0.5,
                0.5,
                text,
                ha="center",
                va="center",
                fontsize=20,
                color="#73bf69",
                transform=ax.transAxes,
            )
            continue
        if panel["type"] == "piechart":
            result = series[(panel["id"], targets[0]["refId"])]
            names = [legend(targets[0]["legendFormat"], s["metric"]) for s in result]
            values = [float(s["value"][1]) for s in result]
            colours = {"approved": "#73bf69", "rejected": "#f2495c", "review": "#fade2a"}
            ax.pie(
                values,
                labels=names,
                autopct="%1.0f%%",
                colors=[colours.get(n, "#5794f2") for n in names],
                textprops={"fontsize": 8, "color": "#d8d9da"},
                wedgeprops={"width": 0.45},
            )
            continue
        for j, target in enumerate(targets):
            for s in series[(panel["id"], target["refId"])]:
                times = [float(t) - start for t, _ in s["values"]]
                values = [float(v) for _, v in s["values"]]
                name = legend(target["legendFormat"], s["metric"]).replace("127.0.0.1:", ":")
                if panel["type"] == "state-timeline":
                    ax.fill_between(
                        times, 0, values, step="post", alpha=0.8, label=name, color="#f2495c"
                    )
                    ax.set_ylim(0, 1.1)
                    ax.set_yticks([0, 1])
                    ax.set_yticklabels(
                        [
                            "closed" if "Circuit" in panel["title"] else "running",
                            "open" if "Circuit" in panel["title"] else "paused",
                        ]
                    )
                else:
                    ax.plot(
                        times,
                        values,
                        linewidth=1.2,
                        label=name,
                        linestyle="--" if j % 2 and "configured" in name else "-",
                    )
        ax.set_xlim(0, end - start)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:.0f}s"))
        if unit == "percentunit":
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        elif unit in ("s", "ops"):
            suffix = " s" if unit == "s" else "/s"
            ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _, u=suffix: f"{y:g}{u}"))
        handles, _ = ax.get_legend_handles_labels()
        drawn = [line for line in ax.get_lines() if any(y == y for y in line.get_ydata())]
        if handles:
            ax.legend(fontsize=6, loc="upper left", ncol=2, framealpha=0.3)
        if not handles or (not drawn and panel["type"] != "state-timeline"):
            ax.text(  # once, even when both hold (it was drawn twice, one over the other)
                0.5,
                0.5,
                "no data",
                ha="center",
                va="center",
                color="#9fa7b3",
                transform=ax.transAxes,
            )
        ax.grid(color="#2c3235", linewidth=0.5)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=80, facecolor=fig.get_facecolor(), bbox_inches="tight")
    print(f"wrote {output}")


def fmt(value: float, unit: str) -> str:
    if value != value:  # NaN
        return "-"
    if unit == "percentunit":
        return f"{value * 100:.1f}%"
    if unit == "ops":
        return f"{value:.1f}/s"
    return f"{value:g}" if value == int(value) else f"{value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=150.0, help="seconds of traffic")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    # The SDK signs requests even to the local fake: never real credentials here.
    for name, value in (("AWS_ACCESS_KEY_ID", "local"), ("AWS_SECRET_ACCESS_KEY", "local")):
        os.environ[name] = value
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    with tempfile.TemporaryDirectory() as workdir:
        dashboard, series, start, end = asyncio.run(collect_panels(args.duration, Path(workdir)))
    render(dashboard, series, start, end, args.output)


if __name__ == "__main__":
    main()
