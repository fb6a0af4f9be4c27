"""Running the service's real processes in tests and benchmarks, and the settings they share."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from tests.kafka_helpers import Topics


def local_settings(bootstrap: str, topics: Topics) -> dict[str, str]:
    """Settings every test process shares: this broker, these topics, Tansu-friendly timings."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_ENABLE_IDEMPOTENCE": "false",  # Tansu refuses InitProducerId v0
        "KAFKA_SESSION_TIMEOUT_MS": "6000",  # Tansu holds a group's first join for half of it
        "KAFKA_FETCH_MAX_WAIT_MS": "20",  # Tansu answers fetches at their max wait
        "AWS_REGION": "us-east-1",
        "MODERATION_HTTP_HOST": "127.0.0.1",
        "MODERATION_HTTP_PORT": "0",
        **topics.env(),
    }


def process_env(settings: dict[str, str]) -> dict[str, str]:
    """This process's environment without any service settings, plus ``settings``."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("MODERATION_", "KAFKA_"))}
    return inherited | settings


@contextlib.asynccontextmanager
async def running_process(
    argv: Sequence[str], env: dict[str, str], log: Path, *, cwd: Path | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Start ``argv`` with output to ``log``; on exit SIGTERM it (SIGKILL after 30 s)."""
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=out, stderr=out, cwd=cwd)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def exit_output(command: str, env: dict[str, str], timeout_s: float = 60) -> tuple[int, str]:
    """Run ``python -m service <command>`` to its exit: (exit code, its output)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", command, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode()
