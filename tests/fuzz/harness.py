"""What both fuzz runs (issue 11) do the same way: produce a generated corpus, wait on real
processes, read their peak RSS, stop them with SIGTERM and time it, read output topics, and
decide what the parsers at the door make of a record. One copy, so the halves cannot drift."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from service.errors import InputError
from service.review.events import parse_event
from tests.fuzz.generator import ACCEPTED, FuzzRecord
from tests.kafka_helpers import send_records_with_raw_headers

#: Both runs use three partitions a topic and the same seed, so docs/fuzzing.md's figures repeat.
PARTITIONS = 3
SEED = 11

_Test = TypeVar("_Test", bound=Callable[..., Any])


def system(test: _Test) -> _Test:
    """The run's tests: a real broker and real processes. The first one to run pays for the run
    (about a minute on two cores), hence the timeout; the generator's own tests need neither."""
    for mark in (pytest.mark.kafka, pytest.mark.slow, pytest.mark.fuzz, pytest.mark.timeout(120)):
        test = mark(test)
    return test


async def produce_records(
    bootstrap: str, topic: str, records: list[FuzzRecord], ends: dict[int, int]
) -> dict[tuple[int, int], FuzzRecord]:
    """Send ``records`` in order, continuing the offsets in ``ends`` (partition -> next offset,
    updated in place); returns (partition, offset) -> record. Offsets follow from the order per
    partition (one producer, one request in flight per broker), and each normal send's metadata
    confirms the offset it was given; raw batches go through the pure-Python builder."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, max_request_size=16 * 1024 * 1024
    )
    await producer.start()
    by_source: dict[tuple[int, int], FuzzRecord] = {}
    sent: list[tuple[asyncio.Future[Any], int, int]] = []
    try:
        index = 0
        while index < len(records):
            record = records[index]
            if record.batch is not None:
                batch = [r for r in records[index : index + 8] if r.batch == record.batch]
                await send_records_with_raw_headers(
                    producer,
                    topic,
                    record.partition,
                    [(r.key, r.value, list(r.headers)) for r in batch],  # type: ignore[arg-type]  # a None value is a null header
                )
            else:
                batch = [record]
                future = await producer.send(
                    topic,
                    value=record.value,
                    key=record.key,
                    headers=list(record.headers),
                    partition=record.partition,
                    timestamp_ms=record.timestamp_ms,
                )
                sent.append((future, record.partition, ends[record.partition]))
            for member in batch:
                by_source[(member.partition, ends[member.partition])] = member
                ends[member.partition] += 1
            index += len(batch)
        for future, partition, offset in sent:
            metadata = await future
            assert (metadata.partition, metadata.offset) == (partition, offset)
    finally:
        await producer.stop()
    return by_source


async def read_topics(bootstrap: str, names: list[str]) -> list[ConsumerRecord]:
    """Every record of ``names``, read from the beginning up to each partition's high watermark."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in names for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[ConsumerRecord] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while loop.time() < deadline:
            for batch in (await consumer.getmany(timeout_ms=200, max_records=5000)).values():
                out.extend(batch)
            marks = [consumer.highwater(tp) for tp in tps]
            if all(m is not None for m in marks):
                positions = [await consumer.position(tp) for tp in tps]
                if all(pos >= mark for pos, mark in zip(positions, marks, strict=True)):
                    return out
        raise AssertionError("output topics not read to their end within 30 s")
    finally:
        await consumer.stop()


async def wait_until(
    check: Callable[[], Awaitable[bool]],
    deadline: float,
    procs: list[asyncio.subprocess.Process],
    every_s: float = 0.3,
) -> bool:
    """Poll ``check`` until it holds (True) or ``deadline`` (monotonic) passes or one of
    ``procs`` exits (False): a dead process must fail the run at once, not at the timeout."""
    while time.monotonic() < deadline:
        if any(p.returncode is not None for p in procs):
            return False
        if await check():
            return True
        await asyncio.sleep(every_s)
    return False


def peak_rss(pid: int) -> int:
    """VmHWM: the process's resident-set high-water mark, in bytes (read before it stops)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


@dataclass
class Proc:
    """How one process came through a run: what its test checks and the report prints."""

    name: str
    alive_at_end: bool
    peak_rss_bytes: int
    exit_code: int | None  # None: it did not exit in time after SIGTERM
    stop_s: float  # SIGTERM until it exited
    log_tail: str = ""  # read by the caller once the process is gone


async def stop_processes(
    procs: dict[str, asyncio.subprocess.Process], timeout_s: float
) -> dict[str, Proc]:
    """Whether each process is still up and its peak RSS (all read while all still run), then
    SIGTERM each in turn and wait up to ``timeout_s`` for it, timing how long it took."""
    alive = {name: proc.returncode is None for name, proc in procs.items()}
    rss = {name: peak_rss(proc.pid) if alive[name] else 0 for name, proc in procs.items()}
    ended: dict[str, Proc] = {}
    for name, proc in procs.items():
        started = time.monotonic()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), timeout_s)
        stop_s = time.monotonic() - started
        ended[name] = Proc(name, alive[name], rss[name], proc.returncode, stop_s)
    return ended


def door_outcome(parse: Callable[..., object], *args: Any, **kwargs: Any) -> str:
    """ACCEPTED if ``parse(*args, **kwargs)`` takes the record, else the DLQ outcome
    (``dlq:<reason>``) its InputError names: what an expectation decided at the door must say."""
    try:
        parse(*args, **kwargs)
    except InputError as exc:
        return f"dlq:{exc.reason.value}"
    return ACCEPTED


def event_outcome(value: bytes | None, max_event_bytes: int) -> str:
    """:func:`door_outcome` for a completion event: the sink checks the size before parsing."""
    if value is not None and len(value) > max_event_bytes:
        return "dlq:record_too_large"
    return door_outcome(parse_event, value)
