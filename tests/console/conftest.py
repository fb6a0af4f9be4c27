"""Fixtures shared by the console tests: a throwaway PostgreSQL server for the second driver."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.kafka.embedded import free_port


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on loopback (as the postgres user when run as root)."""
    bindir = _postgres_bin()
    if bindir is None or importlib.util.find_spec("asyncpg") is None:
        pytest.skip("PostgreSQL tests need Debian's postgresql package and asyncpg")
    data = Path(tempfile.mkdtemp(prefix="console-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = free_port()

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    run(str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "console", "--no-sync")
    options = f"-p {port} -k {data} -h 127.0.0.1 -c fsync=off -c max_connections=60"
    run(
        str(bindir / "pg_ctl"),
        "-D",
        str(data / "db"),
        "-o",
        options,
        "-l",
        str(data / "log"),
        "-w",
        "start",
    )
    try:
        yield f"postgresql://console@127.0.0.1:{port}"
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            run(str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(data, ignore_errors=True)


async def new_database(server: str) -> str:
    """A fresh, empty database on the test server; its DSN."""
    import asyncpg

    name = f"t{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(f"{server}/postgres")
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    return f"{server}/{name}"
