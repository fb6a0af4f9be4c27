"""noida-db, a second Kafka-protocol broker with transactions, started per test session.

The embedded Tansu refuses transactional producers, so exactly-once claims are checked here (and
on Apache Kafka where Docker runs). noida-db is one binary from PyPI: it stops on SIGINT, not
SIGTERM, and keeps its data in ``--data-dir``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from service.kafka.embedded import free_port

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def noida_binary() -> str | None:
    """The venv's ``noida-db`` (the ``dev`` extra installs it), else one on PATH."""
    beside = Path(sys.executable).with_name("noida-db")
    return str(beside) if beside.is_file() else shutil.which("noida-db")


async def _accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


@contextlib.asynccontextmanager
async def noida_broker() -> AsyncIterator[str]:
    """A running noida-db on a free loopback port; yields its bootstrap address."""
    binary = noida_binary()
    if binary is None:
        raise RuntimeError("noida-db is not installed (pip install '.[dev]')")
    with tempfile.TemporaryDirectory(prefix="noida-") as data:
        port = free_port()
        log = Path(data) / "noida.log"
        argv = [binary, "start", "--only", "kafka", "--host", "127.0.0.1"]
        argv += ["--kafka-port", str(port), "--data-dir", str(Path(data) / "db")]
        with log.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=out)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + START_TIMEOUT_S
            while not await _accepts(port):
                if proc.returncode is not None or loop.time() > deadline:
                    raise RuntimeError(f"noida-db did not start: {log.read_text()[-2000:]}")
                await asyncio.sleep(0.1)
            yield f"127.0.0.1:{port}"
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)
                try:
                    await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
