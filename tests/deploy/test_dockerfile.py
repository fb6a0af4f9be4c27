"""The image: the Dockerfile's shape and its build context (always), the docker-compose wiring
(always, by reading it), and a real build and run where a Docker engine answers (marker docker).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "deploy" / "docker-compose.yaml"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, rest))
    return found


def test_multi_stage_on_python_311_slim() -> None:
    args = dict(
        rest.split("=", 1) for keyword, rest in instructions() if keyword == "ARG" and "=" in rest
    )
    built = stages()
    assert len(built) >= 2, "builder and runtime stages"
    bases = [rest.split()[0] for (_, rest), *_ in built]
    runtime = bases[-1].replace("${PYTHON_IMAGE}", args.get("PYTHON_IMAGE", ""))
    assert runtime == "python:3.11-slim"
    final = built[-1]
    assert any(k == "COPY" and rest.startswith("--from=builder") for k, rest in final)
    assert not any(k == "RUN" and "pip install" in rest for k, rest in final), "install in builder"
    builder = built[0]
    assert any(k == "ARG" and rest.startswith("EXTRAS") for k, rest in builder)
    assert any(k == "RUN" and "${EXTRAS}" in rest for k, rest in builder)


def test_runs_as_a_non_root_user() -> None:
    users = [rest for keyword, rest in stages()[-1] if keyword == "USER"]
    assert users, "the runtime stage sets USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert user.isdigit(), "numeric, so Kubernetes' runAsNonRoot can verify it"


def test_exec_form_entrypoint_runs_the_cli_with_run_as_default() -> None:
    final = dict(stages()[-1])
    assert json.loads(final["ENTRYPOINT"]) == ["python", "-m", "service"]
    assert json.loads(final["CMD"]) == ["run"]
    assert "HEALTHCHECK" not in final


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes; a directory pattern
    covers what is under it."""
    ignored = False
    for rule in patterns:
        negated = rule.startswith("!")
        pattern = rule.removeprefix("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes) or (
            pattern.startswith("**/") and any(fnmatch.fnmatch(p, pattern[3:]) for p in parts)
        ):
            ignored = not negated
    return ignored


def test_dockerignore_lets_every_copy_source_through_and_little_else() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for keyword, rest in instructions():
        if keyword == "COPY" and not rest.startswith("--from"):
            sources += rest.split()[:-1]
    assert sources, "the Dockerfile copies the project"
    for source in sources:
        assert (REPO / source).exists(), source
        assert not dockerignored(source, patterns), f"{source} is excluded by .dockerignore"
    assert not dockerignored("service/__main__.py", patterns)
    for private in (".venv/bin/python", ".git/config", "tests/conftest.py", "deploy/x.yaml"):
        assert dockerignored(private, patterns), private
    assert dockerignored("service/__pycache__/x.pyc", patterns)


def test_the_entrypoint_module_answers() -> None:
    """What the ENTRYPOINT runs: `python -m service --help` lists the `run` command."""
    result = subprocess.run(
        [sys.executable, "-m", "service", "--help"],
        capture_output=True,
        text=True,
        cwd="/",  # as in the image: the installed package, not the working tree
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "run" in result.stdout


def test_compose_wiring() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"kafka", "moderation", "prometheus", "grafana"} <= set(services)
    assert "KAFKA_PROCESS_ROLES" in services["kafka"]["environment"]  # KRaft, no ZooKeeper
    moderation = services["moderation"]
    assert moderation["build"]["context"] == ".."
    assert (COMPOSE.parent / moderation["build"]["context"] / "Dockerfile").exists()
    env = moderation["environment"]
    listeners = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"PLAINTEXT://{env['KAFKA_BOOTSTRAP_SERVERS']}" in listeners
    assert parse_seconds(moderation["stop_grace_period"]) > float(
        env["MODERATION_SHUTDOWN_GRACE_S"]
    )
    # Every bind-mounted file or folder exists (paths are relative to deploy/).
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), (name, source)
    # Prometheus scrapes the service under the job the alerts select; Grafana loads the dashboard
    # from where the provisioning file says.
    prometheus = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "image-moderation"]
    assert job["static_configs"][0]["targets"] == ["moderation:8080"]
    provider = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/dashboards/moderation.yaml").read_text()
    )["providers"][0]
    mounted = [v.split(":")[1] for v in services["grafana"]["volumes"] if "dashboard.json" in v]
    assert mounted
    assert mounted[0].startswith(provider["options"]["path"] + "/")
    datasource = yaml.safe_load(
        (REPO / "deploy/grafana/provisioning/datasources/prometheus.yaml").read_text()
    )["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"


def parse_seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, duration
    return float(match[1]) * (60 if match[2] == "m" else 1)


def docker_engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return (
            subprocess.run(
                ["docker", "info"], capture_output=True, timeout=20, check=False
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_image_builds_and_runs_as_non_root() -> None:
    if not docker_engine_answers():
        pytest.skip("no Docker engine answers (`docker info` failed)")
    tag = f"image-moderation-test:{uuid.uuid4().hex[:8]}"
    build = subprocess.run(
        ["docker", "build", "-t", tag, str(REPO)],
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    try:
        run = subprocess.run(
            ["docker", "run", "--rm", "--read-only", tag, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        assert "run" in run.stdout
        whoami = subprocess.run(
            ["docker", "run", "--rm", "--entrypoint", "id", tag, "-u"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert whoami.stdout.strip() == "10001"
        # Without configuration the CLI stops with exit code 2 naming the variable.
        bare = subprocess.run(
            ["docker", "run", "--rm", tag], capture_output=True, text=True, timeout=60, check=False
        )
        assert bare.returncode == 2, bare.stderr
        assert "AWS_REGION" in bare.stderr
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=120, check=False)
