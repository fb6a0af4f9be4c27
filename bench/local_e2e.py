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

    .venv/bin/python -m bench.local_e2e                       # 400 images, 3 rounds, ~4 minutes
    .venv/bin/python -m bench.local_e2e --images 200 --rounds 1 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
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


def pictures(count: int, width: int, height: int) -> list[bytes]:
    """``count`` distinct photo-like JPEGs (bench.local_model.photo), about 75 KiB each."""
    return [photo(width, height, seed) for seed in range(count)]


def bare_rate(images: Sequence[bytes], workers: int, threads: int) -> float:
    """Images/s of ``workers`` threads running every default model on prepared tensors."""
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
    started = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return len(tensors) / (time.perf_counter() - started)


async def verdict_times(
    bootstrap: str, topics: Topics, expected: int, timeout_s: float
) -> tuple[list[int], dict[str, int]]:
    """Timestamps (ms) of the first ``expected`` records on the output topics, and the count
    per topic."""
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
        deadline = time.monotonic() + timeout_s
        while len(stamps) < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                for record in records:
                    stamps.append(record.timestamp)
                    counts[names[tp.topic]] += 1
        return sorted(stamps), counts
    finally:
        await consumer.stop()


async def end_to_end_rate(
    bootstrap: str, values: Sequence[bytes], workers: int, threads: int, log: Path
) -> tuple[float, dict[str, int]]:
    """Verdicts/s of the real service process over a backlog of ``values``."""
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
    async with running_process(argv, env, log, cwd=ROOT):
        stamps, counts = await verdict_times(bootstrap, topics, len(values), 600)
    if len(stamps) < len(values):
        raise RuntimeError(f"{len(stamps)} of {len(values)} verdicts (see {log})")
    return (len(stamps) - 1) / ((stamps[-1] - stamps[0]) / 1000), counts


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
    print("| round | bare images/s | end-to-end verdicts/s | ratio | verdict topics |")
    print("|---|---|---|---|---|", flush=True)
    broker = EmbeddedBroker()
    await broker.start()
    ratios: list[float] = []
    bares: list[float] = []
    e2es: list[float] = []
    try:
        with tempfile.TemporaryDirectory(prefix="local-e2e-") as logs:
            for round_ in range(1, args.rounds + 1):
                bare = await asyncio.to_thread(bare_rate, images, args.workers, args.threads)
                e2e, counts = await end_to_end_rate(
                    broker.bootstrap_servers,
                    values,
                    args.workers,
                    args.threads,
                    Path(logs) / f"service-{round_}.log",
                )
                bares.append(bare)
                e2es.append(e2e)
                ratios.append(e2e / bare)
                spread = ", ".join(f"{name} {count}" for name, count in counts.items() if count)
                print(f"| {round_} | {bare:.1f} | {e2e:.1f} | {e2e / bare:.2f}x | {spread} |")
                sys.stdout.flush()
    finally:
        await broker.stop()
    print(
        f"| median | {statistics.median(bares):.1f} | {statistics.median(e2es):.1f} "
        f"| {statistics.median(ratios):.2f}x | |"
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
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
