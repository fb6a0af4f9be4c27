"""Local model benchmark: does the service path keep up with the bare model?

Compares, on the same pictures and with the same onnxruntime thread settings:

* ``raw run``: ``session.run`` alone on tensors preprocessed beforehand, from ``workers`` threads
  (the ceiling: pure inference);
* ``raw decode+run``: decode + preprocess + ``session.run`` from ``workers`` threads, no asyncio
  (what any implementation must at least do per image);
* ``service``: ``LocalModelBackend.moderate`` from N concurrent asyncio callers, through the
  bounded pool, with taxonomy mapping (what the pipeline calls).

The target is service >= 0.9x raw run. Pictures are photo-like JPEGs drawn with Pillow (sky,
mountains, trees, noise; a typical upload size, 1024x768 by default).

    .venv/bin/python -m bench.local_model                    # the default grid, ~5 minutes
    .venv/bin/python -m bench.local_model --workers 2 --threads 1 --callers 1 4 16 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from service.backends.local import LocalModelBackend, OpenNsfwModel, resolve_model_file
from service.imaging.normalize import PixelFrame, normalize
from service.imaging.spec import BackendInput, DecodeLimits

_PIXELS = BackendInput("pixels", pixel_side=256, s3_max_bytes=None)


def decode_image(data: bytes) -> Image.Image:
    """The first frame's pixels as the normalize stage hands them to the backend."""
    frame = normalize(data, _PIXELS, DecodeLimits()).frames[0]
    assert isinstance(frame, PixelFrame)
    return frame.image


def photo(width: int, height: int, seed: int) -> bytes:
    """A photo-like JPEG: gradient sky, sun, two mountains, a meadow with trees, noise, blur."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    horizon = int(height * (0.45 + 0.2 * rng.random()))
    for y in range(horizon):
        draw.line([(0, y), (width, y)], fill=(70 + y * 60 // horizon, 130 + y * 50 // horizon, 230))
    sun_x = int(rng.integers(width // 10, width * 9 // 10))
    draw.ellipse([sun_x, height // 10, sun_x + width // 10, height // 10 + width // 10], "#ffe678")
    for _ in range(2):
        peak = int(rng.integers(0, width))
        spread = int(rng.integers(width // 4, width // 2))
        top = int(height * (0.15 + 0.2 * rng.random()))
        grey = int(rng.integers(80, 130))
        draw.polygon([(peak - spread, horizon), (peak, top), (peak + spread, horizon)], (grey,) * 3)
    draw.rectangle([0, horizon, width, height], fill=(60, 140, 60))
    for _ in range(40):
        x = int(rng.integers(0, width))
        y = int(rng.integers(horizon, height))
        size = int(rng.integers(height // 50, height // 15))
        draw.rectangle([x - 2, y, x + 2, y + size], fill=(90, 60, 30))
        draw.ellipse([x - size // 2, y - size, x + size // 2, y + size // 4], (30, 110, 40))
    pixels = np.asarray(image).astype(np.int16) + rng.integers(-12, 12, (height, width, 3))
    noisy = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(1)
    )
    buffer = io.BytesIO()
    noisy.save(buffer, "JPEG", quality=88)
    return buffer.getvalue()


@dataclass
class Row:
    """One path's images/s over the rounds; the ratio is the median of per-round ratios to the
    same round's raw run (rounds are interleaved, so a noisy neighbour hits both)."""

    path: str
    workers: int
    threads: int
    callers: int | None
    rates: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)

    def line(self) -> str:
        callers = "-" if self.callers is None else str(self.callers)
        ratio = f"{statistics.median(self.ratios):.2f}x" if self.ratios else "-"
        return (
            f"| {self.path:<15} | {self.workers:>7} | {self.threads:>7} | {callers:>7} "
            f"| {statistics.median(self.rates):>8.1f} | {max(self.rates):>8.1f} | {ratio:>8} |"
        )


HEADER = (
    "| path            | workers | threads | callers | images/s | best     | vs raw   |\n"
    "|-----------------|---------|---------|---------|----------|----------|----------|"
)


def threaded(workers: int, duration: float, step: Callable[[int], object]) -> float:
    """Images/s of ``workers`` threads each calling ``step(i)`` with i = 0, 1, 2, ... ."""
    counts = [0] * workers
    stop = threading.Event()

    def loop(slot: int) -> None:
        done = 0
        while not stop.is_set():
            step(slot + done * workers)
            done += 1
        counts[slot] = done

    threads = [threading.Thread(target=loop, args=(slot,)) for slot in range(workers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(duration)
    stop.set()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def raw_rate(images: Sequence[bytes], workers: int, threads: int, duration: float) -> float:
    path, version = resolve_model_file("opennsfw")
    model = OpenNsfwModel("opennsfw", path, version, threads)
    tensors = [model.preprocess(decode_image(data)) for data in images]
    for tensor in tensors[:2]:
        model.run(tensor)
    return threaded(workers, duration, lambda i: model.run(tensors[i % len(tensors)]))


def raw_full_rate(images: Sequence[bytes], workers: int, threads: int, duration: float) -> float:
    path, version = resolve_model_file("opennsfw")
    model = OpenNsfwModel("opennsfw", path, version, threads)
    model.scores(decode_image(images[0]))

    def step(i: int) -> None:
        model.scores(decode_image(images[i % len(images)]))

    return threaded(workers, duration, step)


async def service_rate(
    images: Sequence[bytes], workers: int, threads: int, callers: int, duration: float
) -> float:
    backend = LocalModelBackend(workers=workers, threads_per_worker=threads, max_queue=callers)
    await backend.start()
    done = 0
    deadline = 0.0

    async def caller(offset: int) -> None:
        nonlocal done
        index = offset
        while time.perf_counter() < deadline:
            await backend.moderate(images[index % len(images)], 50.0)
            index += callers
            done += 1

    try:
        for data in images[:callers]:  # warm the pool's threads
            await backend.moderate(data, 50.0)
        started = time.perf_counter()
        deadline = started + duration
        await asyncio.gather(*(caller(offset) for offset in range(callers)))
        elapsed = time.perf_counter() - started
    finally:
        await backend.close()
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cores = len(os.sched_getaffinity(0))
    parser.add_argument("--workers", type=int, nargs="+", default=sorted({1, cores}))
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--callers", type=int, nargs="+", default=[1, 2 * cores, 16])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--images", type=int, default=24, help="distinct pictures")
    parser.add_argument("--size", default="1024x768", help="picture size, WxH")
    args = parser.parse_args()
    width, height = (int(part) for part in args.size.split("x"))
    images = [photo(width, height, seed) for seed in range(args.images)]
    mean_kib = sum(map(len, images)) / len(images) / 1024
    print(
        f"{len(images)} photo-like JPEGs {width}x{height} (mean {mean_kib:.0f} KiB), "
        f"{cores} cores, {args.rounds} rounds of {args.duration:.0f} s, model opennsfw"
    )
    print(HEADER, flush=True)
    for workers in args.workers:
        for threads in args.threads:
            raw = Row("raw run", workers, threads, None)
            full = Row("raw decode+run", workers, threads, None)
            service = [Row("service", workers, threads, callers) for callers in args.callers]
            for _ in range(args.rounds):
                raw.rates.append(raw_rate(images, workers, threads, args.duration))
                full.rates.append(raw_full_rate(images, workers, threads, args.duration))
                full.ratios.append(full.rates[-1] / raw.rates[-1])
                for row in service:
                    assert row.callers is not None
                    rate = asyncio.run(
                        service_rate(images, workers, threads, row.callers, args.duration)
                    )
                    row.rates.append(rate)
                    row.ratios.append(rate / raw.rates[-1])
            for row in (raw, full, *service):
                print(row.line(), flush=True)


if __name__ == "__main__":
    main()
