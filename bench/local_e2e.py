"""End to end: the offline default through Kafka, against bare inference on the same images.

Issue 14's target: verdicts/s of ``python -m service run`` with ``MODERATION_BACKEND=local``
(the default models) on inline 1024x768 JPEGs >= 0.9x what bare onnxruntime does with the same
models, workers and inputs.

* ``bare``: in this process, ``workers`` threads call ``session.run`` of every default model on
  tensors prepared beforehand from the very pixels the service gets (normalized for the
  backend's input, each model's preprocessing applied): pure inference, nothing else.
* ``end to end``: ``images`` requests with the JPEG inline (base64 in the JSON record) are put
  on the embedded broker (Tansu) first; then the real service process starts, joins, and works
  through the backlog: parse, normalize (JPEG draft-mode decode), both models, verdict publish,
  offset commit. Its rate is over the verdicts' timestamps, first to last, so start-up and the
  group join are not counted: (verdicts - 1) / (last - first).

Rounds are interleaved (bare, then end to end, each round), so a noisy neighbour hits both; the
ratio is the median of per-round ratios. Everything shares this machine's cores: the broker,
this process (idle while the service runs) and the service.

On a busy machine wall-clock rates say more about the neighbours than about the service (the
scheduler shares cores between processes, not between threads), so CPU time per image is
reported too: the bench's inference threads (bare), and the service process, and the broker
(end to end), between the first verdict and the last. Their ratio is what the wall-clock ratio
tends to on a quiet machine where both are CPU-bound.

    .venv/bin/python -m bench.local_e2e                       # 400 images, 3 rounds, ~4 minutes
    .venv/bin/python -m bench.local_e2e --images 200 --rounds 1 --workers 2
    .venv/bin/python -m bench.local_e2e --quiet 0.5     # on a shared machine: wait for calm
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import math
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.local_model import photo
from service.backends.local import LocalModelBackend
from service.backends.local_models import DEFAULT_MODELS
from service.imaging.normalize import PixelFrame, normalize
from service.imaging.spec import DecodeLimits
from service.kafka.embedded import EmbeddedBroker
from tests.kafka_helpers import Topics, create_topics, produce
from tests.processes import local_settings, process_env, running_process

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 6


async def wait_for_quiet(load: float | None, patience_s: float = 120) -> None:
    """With ``--quiet LOAD``: wait (up to ``patience_s``) until the 1-minute load average of the
    machine is under ``load``, so a round starts while the neighbours rest."""
    deadline = time.monotonic() + patience_s
    while load is not None and os.getloadavg()[0] >= load and time.monotonic() < deadline:
        await asyncio.sleep(5)


def pictures(count: int, width: int, height: int) -> list[bytes]:
    """``count`` distinct photo-like JPEGs (bench.local_model.photo), about 75 KiB each."""
    return [photo(width, height, seed) for seed in range(count)]


def broker_pid(broker: EmbeddedBroker) -> int:
    process = broker._process  # the embedded broker does not publish its pid
    assert process is not None
    return process.pid


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bare_rate(images: Sequence[bytes], workers: int, threads: int) -> tuple[float, float]:
    """Images/s of ``workers`` threads running every default model on prepared tensors, and
    the CPU seconds per image."""
    backend = LocalModelBackend(workers=workers, threads_per_worker=threads)
    models = backend._load_models()  # the backend's own sessions and settings, no pool
    frames = []
    for data in images:
        frame = normalize(data, backend.input, DecodeLimits()).frames[0]
        assert isinstance(frame, PixelFrame)
        frames.append(frame.image)
    tensors: list[list[npt.NDArray[np.float32]]] = [
        [model.preprocess(image) for model in models] for image in frames
    ]
    for model, tensor in zip(models, tensors[0], strict=True):
        model.run(tensor)
    lock = threading.Lock()
    next_index = 0

    def work() -> None:
        nonlocal next_index
        while True:
            with lock:
                index, next_index = next_index, next_index + 1
            if index >= len(tensors):
                return
            for model, tensor in zip(models, tensors[index], strict=True):
                model.run(tensor)

    pool = [threading.Thread(target=work) for _ in range(workers)]
    started, cpu = time.perf_counter(), time.process_time()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    cpu = time.process_time() - cpu
    return len(tensors) / (time.perf_counter() - started), cpu / len(tensors)


@dataclass
class Verdicts:
    stamps: list[int]  # the verdict records' timestamps (ms), sorted
    counts: dict[str, int]  # per output topic
    cpu_per_verdict: dict[int, float]  # CPU seconds per verdict after the first batch, per pid


async def verdict_times(
    bootstrap: str, topics: Topics, expected: int, timeout_s: float, pids: Sequence[int]
) -> Verdicts:
    """The first ``expected`` records on the output topics, and the CPU time ``pids`` spent
    from the first batch of them to the last."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        outputs = topics.outputs
        partitions = [
            TopicPartition(topic, p) for topic in outputs.values() for p in range(PARTITIONS)
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        names = {topic: name for name, topic in outputs.items()}
        stamps: list[int] = []
        counts = dict.fromkeys(outputs, 0)
        first: tuple[int, dict[int, float]] | None = None
        deadline = time.monotonic() + timeout_s
        while len(stamps) < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=100)
            for tp, records in batches.items():
                for record in records:
                    stamps.append(record.timestamp)
                    counts[names[tp.topic]] += 1
            if batches and first is None:
                first = (len(stamps), {pid: cpu_seconds(pid) for pid in pids})
        cpu: dict[int, float] = {}
        if first is not None and len(stamps) > first[0]:
            seen, before = first
            cpu = {pid: (cpu_seconds(pid) - before[pid]) / (len(stamps) - seen) for pid in pids}
        return Verdicts(sorted(stamps), counts, cpu)
    finally:
        await consumer.stop()


async def end_to_end_rate(
    broker: EmbeddedBroker, values: Sequence[bytes], workers: int, threads: int, log: Path
) -> tuple[float, Verdicts, int]:
    """Verdicts/s of the real service process over a backlog of ``values``, the verdicts, and
    the service's pid."""
    bootstrap = broker.bootstrap_servers
    topics = Topics.unique(uuid.uuid4().hex[:8])
    await create_topics(bootstrap, [topics.input, *topics.outputs.values()], PARTITIONS)
    await produce(
        bootstrap,
        topics.input,
        [(f"k{index}".encode(), value, []) for index, value in enumerate(values)],
    )
    env = process_env(local_settings(bootstrap, topics)) | {
        "MODERATION_BACKEND": "local",
        "MODERATION_LOCAL_WORKERS": str(workers),
        "MODERATION_LOCAL_THREADS_PER_WORKER": str(threads),
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("AWS_REGION", None)
    argv = [sys.executable, "-m", "service", "run"]
    async with running_process(argv, env, log, cwd=ROOT) as service:
        pids = (service.pid, broker_pid(broker))
        verdicts = await verdict_times(bootstrap, topics, len(values), 600, pids)
    stamps = verdicts.stamps
    if len(stamps) < len(values):
        raise RuntimeError(f"{len(stamps)} of {len(values)} verdicts (see {log})")
    return (len(stamps) - 1) / ((stamps[-1] - stamps[0]) / 1000), verdicts, service.pid


def request_values(images: Sequence[bytes]) -> list[bytes]:
    return [
        orjson.dumps({"id": f"e2e-{index}", "image": {"bytes": base64.b64encode(data).decode()}})
        for index, data in enumerate(images)
    ]


async def run(args: argparse.Namespace) -> None:
    width, height = (int(part) for part in args.size.split("x"))
    images = pictures(args.images, width, height)
    values = request_values(images)
    mean_kib = sum(map(len, images)) / len(images) / 1024
    cores = len(os.sched_getaffinity(0))
    print(
        f"{len(images)} inline JPEGs {width}x{height} (mean {mean_kib:.0f} KiB), models "
        f"{'+'.join(DEFAULT_MODELS)}, {args.workers} workers x {args.threads} threads, "
        f"{cores} cores, {args.rounds} interleaved rounds"
    )
    print(
        "| round | bare images/s | end-to-end verdicts/s | ratio | bare CPU ms/image "
        "| service CPU ms/verdict | broker CPU ms/verdict | CPU ratio | verdict topics |"
    )
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    broker = EmbeddedBroker()
    await broker.start()
    rows: list[tuple[float, float, float, float, float]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="local-e2e-") as logs:
            for round_ in range(1, args.rounds + 1):
                await wait_for_quiet(args.quiet)
                bare, bare_cpu = await asyncio.to_thread(
                    bare_rate, images, args.workers, args.threads
                )
                await wait_for_quiet(args.quiet)
                e2e, verdicts, pid = await end_to_end_rate(
                    broker, values, args.workers, args.threads, Path(logs) / f"{round_}.log"
                )
                service_cpu = verdicts.cpu_per_verdict.get(pid, math.nan)
                broker_cpu = verdicts.cpu_per_verdict.get(broker_pid(broker), math.nan)
                row = (bare, e2e, bare_cpu, service_cpu, broker_cpu)
                rows.append(row)
                spread = ", ".join(f"{k} {n}" for k, n in verdicts.counts.items() if n)
                print(f"| {round_} | {_cells(row)} | {spread} |", flush=True)
    finally:
        await broker.stop()
    medians = [statistics.median(column) for column in zip(*rows, strict=True)]
    ratios = [e2e / bare for bare, e2e, *_ in rows]
    cpu_ratios = [bare_cpu / (service + broker_cpu) for _, _, bare_cpu, service, broker_cpu in rows]
    print(
        f"| median | {medians[0]:.1f} | {medians[1]:.1f} | {statistics.median(ratios):.2f}x "
        f"| {medians[2] * 1000:.1f} | {medians[3] * 1000:.1f} | {medians[4] * 1000:.1f} "
        f"| {statistics.median(cpu_ratios):.2f}x | |"
    )


def _cells(row: tuple[float, float, float, float, float]) -> str:
    bare, e2e, bare_cpu, service_cpu, broker_cpu = row
    cpu_ratio = bare_cpu / (service_cpu + broker_cpu)
    return (
        f"{bare:.1f} | {e2e:.1f} | {e2e / bare:.2f}x | {bare_cpu * 1000:.1f} "
        f"| {service_cpu * 1000:.1f} | {broker_cpu * 1000:.1f} | {cpu_ratio:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--size", default="1024x768", help="picture size, WxH")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads per worker")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--quiet", type=float, help="before each measurement, wait until the load average < this"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
