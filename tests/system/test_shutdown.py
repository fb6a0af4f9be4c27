"""SIGTERM ends the real process within its grace period, whatever state it is in.

Both cases failed before: a process still joining its group (aiokafka's ``start()`` waits for
the first assignment, and the embedded broker holds a first join for half the session timeout)
took 27 s to stop with a 5 s grace; with the broker gone, the consumer's close raised a
CancelledError out of the shutdown and the process exited with 1.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest

from service.kafka.embedded import EmbeddedBroker
from tests.group_wedge import broker_is_tansu, wedge
from tests.kafka_helpers import Topics, create_topics
from tests.processes import local_settings, process_env

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

GRACE_S = 5.0
SLACK_S = 2.0  # process exit and interpreter teardown


async def start(
    bootstrap: str, log: Path, topics: Topics | None = None, **extra: str
) -> asyncio.subprocess.Process:
    if topics is None:
        topics = Topics.unique(uuid.uuid4().hex[:10])
        await create_topics(bootstrap, [topics.input, *topics.outputs.values()], 2)
    env = process_env(
        local_settings(bootstrap, topics)
        | {
            "MODERATION_BACKEND": "rekognition",
            "REKOGNITION_ENDPOINT_URL": "http://127.0.0.1:9",  # never called: no input
            "MODERATION_SHUTDOWN_GRACE_S": str(GRACE_S),
            "LOG_FORMAT": "text",
        }
        | extra
    )
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service", "run", env=env, stdout=out, stderr=out
        )


async def stop_timed(proc: asyncio.subprocess.Process, log: Path) -> tuple[int | None, float]:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), GRACE_S + 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"no exit 30 s past the grace\n{log.read_text()[-3000:]}") from None
    return proc.returncode, time.monotonic() - started


def assert_clean_exit_in_grace(code: int | None, took: float, log: Path) -> None:
    assert code == 0, log.read_text()[-3000:]
    assert took <= GRACE_S + SLACK_S, (took, log.read_text()[-3000:])


async def test_sigterm_while_joining_the_group(kafka_bootstrap: str, tmp_path: Path) -> None:
    # A 60 s session: the embedded broker holds the group's first join for about 30 s.
    log = tmp_path / "joining.log"
    proc = await start(kafka_bootstrap, log, KAFKA_SESSION_TIMEOUT_MS="60000")
    try:
        await asyncio.sleep(4)
        assert proc.returncode is None, log.read_text()[-3000:]
        code, took = await stop_timed(proc, log)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert_clean_exit_in_grace(code, took, log)


@pytest.mark.skipif(not broker_is_tansu(), reason="the wedge is Tansu's")
async def test_sigterm_while_looping_on_a_failed_sync(kafka_bootstrap: str, tmp_path: Path) -> None:
    """A group wedged on a departed leader (recovery off): the process joins, its SyncGroup
    fails after the rebalance timeout, it joins again, forever; SIGTERM still ends it."""
    topics = Topics.unique(uuid.uuid4().hex[:10])
    await create_topics(kafka_bootstrap, [topics.input, *topics.outputs.values()], 2)
    await wedge(kafka_bootstrap, topics.group, topics.input)
    log = tmp_path / "looping.log"
    proc = await start(
        kafka_bootstrap,
        log,
        topics,
        KAFKA_SESSION_TIMEOUT_MS="4000",
        KAFKA_REBALANCE_RECOVERY="false",
    )
    try:
        await asyncio.sleep(10)  # at least one failed sync and a rejoin
        assert proc.returncode is None, log.read_text()[-3000:]
        assert "consuming" not in log.read_text()  # never settled
        code, took = await stop_timed(proc, log)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert_clean_exit_in_grace(code, took, log)


async def test_sigterm_after_the_broker_is_gone(tmp_path: Path) -> None:
    broker = EmbeddedBroker()  # its own broker: this test kills it
    await broker.start()
    log = tmp_path / "gone.log"
    proc = await start(broker.bootstrap_servers, log)
    try:
        try:
            for _ in range(100):  # joined and polling
                if "consuming" in log.read_text():
                    break
                await asyncio.sleep(0.2)
        finally:
            await broker.stop()
        await asyncio.sleep(2)  # the clients notice and start retrying
        code, took = await stop_timed(proc, log)
    finally:
        if proc.returncode is None:  # never leave the process behind, whatever failed first
            proc.kill()
            await proc.wait()
    assert_clean_exit_in_grace(code, took, log)
