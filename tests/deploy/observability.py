"""Shared by the deploy tests and scripts/render-dashboard-png: the dashboard's queries, the alert
rules, and a real Prometheus server (Debian's `prometheus` binary) started on a free port.

Grafana variables are replaced by fixed values so every panel query can be evaluated by
Prometheus directly: ``$__rate_interval`` and ``$__range`` by windows, ``$namespace`` (a regex
matcher with allValue ``.*``) by ``.*``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiohttp import ClientSession, ClientTimeout

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "moderation-dashboard.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"
JOB = "image-moderation"  # the scrape job the alert rules and the dashboard select on

GRAFANA_VARIABLES: Mapping[str, str] = {
    "$__rate_interval": "1m",
    "$__range": "5m",
    "$namespace": ".*",
}
_METRIC = re.compile(r"\bmoderation_[a-z0-9_]+")


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref_id: str
    expr: str  # as written in the dashboard, Grafana variables included
    legend: str
    unit: str

    @property
    def promql(self) -> str:
        return substitute(self.expr)

    @property
    def metrics(self) -> set[str]:
        return set(_METRIC.findall(self.expr))


def substitute(expr: str, variables: Mapping[str, str] = GRAFANA_VARIABLES) -> str:
    # Longest names first, so "$__range" never eats the front of a longer variable.
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(name, variables[name])
    return expr


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    return orjson.loads(path.read_bytes())


def panels(dashboard: Mapping[str, Any]) -> Iterable[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(dashboard: Mapping[str, Any] | None = None) -> list[PanelQuery]:
    dashboard = dashboard if dashboard is not None else load_dashboard()
    return [
        PanelQuery(
            panel=panel["title"],
            ref_id=target["refId"],
            expr=target["expr"],
            legend=target.get("legendFormat", ""),
            unit=panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short"),
        )
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def alert_rules(path: Path = ALERTS) -> list[dict[str, Any]]:
    document = yaml.safe_load(path.read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrometheusError(AssertionError):
    pass


class Prometheus:
    """A real Prometheus scraping the given targets every ``scrape_interval`` and evaluating the
    rule files as often. Its log is kept in ``workdir/prometheus.log`` for failure messages."""

    def __init__(
        self,
        workdir: Path,
        targets: list[str],
        rule_files: list[Path],
        scrape_interval: str = "1s",
        binary: str | None = None,
    ) -> None:
        self.binary = binary or shutil.which("prometheus")
        if self.binary is None:
            raise FileNotFoundError("prometheus is not installed (scripts/install-system-deps)")
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "prometheus.yml"
        self.log = workdir / "prometheus.log"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "global": {
                        "scrape_interval": scrape_interval,
                        "scrape_timeout": scrape_interval,
                        "evaluation_interval": scrape_interval,
                    },
                    "rule_files": [str(path) for path in rule_files],
                    "scrape_configs": [
                        {"job_name": JOB, "static_configs": [{"targets": targets}]},
                    ],
                }
            )
        )
        self._process: subprocess.Popen[bytes] | None = None
        self._session: ClientSession | None = None

    def log_tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Prometheus]:
        storage = self.workdir / "tsdb"
        storage.mkdir(exist_ok=True)
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={storage}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._session = ClientSession(timeout=ClientTimeout(total=10))
        try:
            await self._wait_ready()
            yield self
        finally:
            await self._session.close()
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    async def _wait_ready(self, timeout_s: float = 20.0) -> None:
        assert self._session is not None
        assert self._process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise PrometheusError(f"prometheus exited:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                async with self._session.get(f"{self.url}/-/ready") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise PrometheusError(f"prometheus not ready after {timeout_s}s:\n{self.log_tail()}")

    async def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; returns ``data`` or raises with Prometheus' error."""
        assert self._session is not None
        async with self._session.get(f"{self.url}/api/v1/{path}", params=params) as response:
            body = await response.json()
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    async def query(self, promql: str) -> list[dict[str, Any]]:
        data = await self.api("query", query=promql)
        result = data["result"]
        return result if data["resultType"] in ("vector", "matrix") else [{"value": result}]

    async def query_range(
        self, promql: str, start: float, end: float, step_s: float
    ) -> list[dict[str, Any]]:
        data = await self.api(
            "query_range", query=promql, start=str(start), end=str(end), step=str(step_s)
        )
        return list(data["result"])

    async def wait_for_scrapes(self, count: int, timeout_s: float = 60.0) -> None:
        """Until every target of the job was scraped successfully ``count`` times."""
        promql = f'min(sum_over_time(up{{job="{JOB}"}}[10m]))'
        deadline = time.monotonic() + timeout_s
        seen = 0.0
        while time.monotonic() < deadline:
            result = await self.query(promql)
            seen = float(result[0]["value"][1]) if result else 0.0
            if seen >= count:
                return
            await asyncio.sleep(0.25)
        raise PrometheusError(f"only {seen} successful scrapes in {timeout_s}s:\n{self.log_tail()}")

    async def wait_rules_evaluated(self, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Until every loaded rule has been evaluated at least once; returns the rules."""
        deadline = time.monotonic() + timeout_s
        rules: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            groups = (await self.api("rules"))["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            if rules and all(rule.get("health") in ("ok", "err") for rule in rules):
                return rules
            await asyncio.sleep(0.25)
        raise PrometheusError(f"rules not evaluated in {timeout_s}s: {rules}")
