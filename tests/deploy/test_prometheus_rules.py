"""The alert rules: promtool's syntax check and unit tests (deploy/prometheus/alerts.test.yaml),
the conventions every alert follows (severity, summary, description, a runbook section that
exists), and the docker-compose Prometheus configuration.

promtool comes with Debian's `prometheus` package (scripts/install-system-deps); without it the
promtool tests skip and the pure-Python checks still run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.observability import ALERTS, JOB, REPO, alert_rules

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
ALERT_TESTS = PROMETHEUS_DIR / "alerts.test.yaml"
OPERATIONS = REPO / "docs" / "operations.md"
SEVERITIES = {"critical", "warning", "info"}

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian package prometheus: scripts/install-system-deps)",
)


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout + result.stderr


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", ALERT_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_tests_show_every_alert_firing_and_not_firing() -> None:
    document = yaml.safe_load(ALERT_TESTS.read_text())
    assert document["rule_files"] == [ALERTS.name]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in document["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown staying quiet"


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", OPERATIONS.read_text(), re.M)}
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), "duplicate alert names"
    assert len(names) >= 7
    for rule in alert_rules():
        name = rule["alert"]
        assert re.fullmatch(r"Moderation[A-Z][A-Za-z]+", name), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        assert annotations["description"].strip(), name
        document, _, anchor = annotations["runbook"].partition("#")
        assert document == "docs/operations.md", name
        assert anchor in anchors, f"{name}: no section #{anchor} in docs/operations.md"


def test_alerts_aggregate_per_release_and_select_the_job() -> None:
    """One alert per release, not per pod: pods come and go with rollouts and autoscaling."""
    for rule in alert_rules():
        expr = rule["expr"]
        if "moderation_" in expr:
            assert "by (job, namespace)" in expr, rule["alert"]
        else:
            assert f'job="{JOB}"' in expr, rule["alert"]


def test_the_required_alerts_exist() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    required = {
        "ModerationConsumerLagGrowing": "deriv(",
        "ModerationConsumptionStopped": "moderation_messages_consumed_total",
        "ModerationDeadLetterRateHigh": "moderation_dlq_total",
        "ModerationBackendThrottling": 'outcome="throttled"',
        "ModerationLimiterBelowQuota": "moderation_limiter_max_rate",
        "ModerationCircuitOpen": "moderation_circuit_open",
        "ModerationReviewSLABreached": "moderation_reviews_timed_out_total",
        "ModerationTargetDown": "up{",
    }
    for name, fragment in required.items():
        assert fragment in exprs.get(name, ""), name


@needs_promtool
def test_compose_prometheus_config_is_valid(tmp_path: Path) -> None:
    """prometheus.yml names container paths; check it with the rules file at a local path."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yaml"]
    assert JOB in {job["job_name"] for job in config["scrape_configs"]}
    config["rule_files"] = [str(ALERTS)]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    result = promtool("check", "config", str(local), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")
