"""``python -m service local``: the whole job on one machine, no AWS account, one command.

Starts the embedded broker and creates the topics, then the pipeline (``run``), the completion
sink (``sink``) and the review console (``console``) as child processes with settings that fit
the embedded setup, and prints where to look. Ctrl-C (or SIGTERM) stops the children in reverse
order, each draining as it does in production, and then the broker. If a child dies, everything
stops and the exit code says so: a half-running stack would only mislead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from service.console.users import hash_password
from service.kafka.admin import ensure_topics
from service.kafka.embedded import EmbeddedBroker, free_port
from service.settings import Settings

log = logging.getLogger(__name__)

STATE_DIR = Path(".moderation-local")


@dataclass(frozen=True)
class Child:
    name: str
    command: str
    port: int


async def run_local_stack(settings: Settings, *, with_console: bool = True) -> int:
    state = _prepare_state_dir()
    broker = EmbeddedBroker(port=int(os.environ.get("MODERATION_LOCAL_BROKER_PORT", "0")) or None)
    await broker.start()
    children: list[tuple[Child, asyncio.subprocess.Process]] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        bootstrap = broker.bootstrap_servers
        (state / "bootstrap").write_text(bootstrap)
        await ensure_topics(settings.kafka, bootstrap, 4, (settings.review.completions_topic,))
        env = _child_env(settings, bootstrap, state)
        account = (
            _console_account(Path(env["MODERATION_CONSOLE_USERS_FILE"])) if with_console else ""
        )
        plan = [Child("pipeline", "run", 8080), Child("sink", "sink", 8081)]
        if with_console:
            plan.append(Child("console", "console", 8090))
        for child in plan:
            port = child.port if _port_free(child.port) else free_port()
            child = Child(child.name, child.command, port)  # noqa: PLW2901
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "service",
                child.command,
                env=env | {"MODERATION_HTTP_PORT": str(port), "MODERATION_CONSOLE_PORT": str(port)},
            )
            children.append((child, process))
        _announce(settings, bootstrap, children, state, account)
        waiters = {asyncio.create_task(p.wait()): c for c, p in children}
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopper, *waiters], return_when=asyncio.FIRST_COMPLETED)
        failed = [waiters[t] for t in done if t in waiters]
        stopper.cancel()
        for task in waiters:
            task.cancel()
        if failed:
            log.error("%s stopped unexpectedly; stopping the stack", failed[0].name)
        return 1 if failed else 0
    finally:
        for child, process in reversed(children):
            await _stop_child(child, process)
        await broker.stop()
        with contextlib.suppress(FileNotFoundError):
            (state / "bootstrap").unlink()


def _prepare_state_dir() -> Path:
    state = STATE_DIR.resolve()
    (state / "reviews").mkdir(parents=True, exist_ok=True)
    return state


def _child_env(settings: Settings, bootstrap: str, state: Path) -> dict[str, str]:
    env = dict(os.environ)
    env |= {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_ENABLE_IDEMPOTENCE": "false",
        "KAFKA_FETCH_MAX_WAIT_MS": str(settings.kafka.fetch_max_wait_ms),
        "SINK_PRODUCER_MAX_BATCH_SIZE": "16",
        "MODERATION_REVIEW_LOCAL_STORE": str(state / "reviews"),
        "MODERATION_HTTP_HOST": "127.0.0.1",
        "LOG_FORMAT": os.environ.get("LOG_FORMAT", "text"),
    }
    # The banner prints the admin password: only this machine reaches the console by default.
    env.setdefault("MODERATION_CONSOLE_HOST", "127.0.0.1")
    env.setdefault("MODERATION_CONSOLE_SECRET", secrets.token_urlsafe(32))
    env.setdefault("MODERATION_CONSOLE_DATABASE", f"sqlite:///{state / 'console.db'}")
    env.setdefault("MODERATION_CONSOLE_USERS_FILE", str(state / "users.txt"))
    env.setdefault("MODERATION_CONSOLE_LEADS", "admin")
    return env


def _console_account(users_file: Path) -> str:
    """Create the ``admin`` reviewer once; returns what to tell the person at the terminal."""
    if users_file.is_file() and users_file.read_text().strip():
        return f"accounts in {users_file}"
    password = os.environ.get("MODERATION_CONSOLE_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
    users_file.write_text(f"admin:{hash_password(password)}\n")
    users_file.chmod(0o600)
    return f"log in as admin / {password}"


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _announce(
    settings: Settings,
    bootstrap: str,
    children: list[tuple[Child, asyncio.subprocess.Process]],
    state: Path,
    account: str,
) -> None:
    kafka = settings.kafka
    ports = {child.name: child.port for child, _ in children}
    lines = [
        "",
        "image moderation is running locally (Ctrl-C stops everything)",
        f"  broker (embedded Tansu, in memory): {bootstrap}",
        f"  backend: {settings.backend.kind}",
        f"  topics: in {kafka.input_topic} -> {kafka.approved_topic} | {kafka.rejected_topic}"
        f" | {kafka.review_topic} | {kafka.dlq_topic}",
        f"  metrics: pipeline http://127.0.0.1:{ports['pipeline']}/metrics,"
        f" sink http://127.0.0.1:{ports['sink']}/metrics",
    ]
    if "console" in ports:
        lines.append(f"  review console: http://127.0.0.1:{ports['console']}/ ({account})")
    lines += [
        f"  review outputs (A2I output.json): {state / 'reviews'}",
        "  try:  python -m service publish path/to/image.jpg https://example.com/photo.png",
        "",
    ]
    print("\n".join(lines), flush=True)


async def _stop_child(child: Child, process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), timeout=40)
    except TimeoutError:
        log.warning("%s did not stop in time; killing it", child.name)
        process.kill()
        await process.wait()
