"""Normalization throughput per core, against Pillow's own decode-resize-encode, and peak memory.

For each workload the service's :func:`service.imaging.normalize.normalize` and a plain Pillow
script doing the same job are timed on one thread, in CPU time (per core, whatever else the
machine runs), in interleaved rounds (so a noisy neighbour hits both), and the median of the
per-round ratios is reported (target >= 0.9x). The Pillow
script produces exactly what the service produced (the same frames, the same output size, the
same JPEG quality), the straightforward way: ``Image.open``, ``draft`` for JPEGs, ``seek`` to
each frame, ``exif_transpose``, ``convert("RGB")``, ``resize``, ``save``.

Workloads: typical phone photos (a 12 MP JPEG too large to pass to Rekognition as it is, and a
4000x3000 HEIC), and an animated GIF, each for Rekognition (``encoded``: JPEG within its limits)
and for the local model (``pixels``: RGB reduced for the model). Peak memory is each workload's
high-water RSS increase in a fresh child process (``ru_maxrss`` is a high-water mark).

    .venv/bin/python -m bench.normalize                     # ~2 minutes on 2 cores
    .venv/bin/python -m bench.normalize --rounds 5 --duration 4
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from bench.local_model import photo
from service.imaging.normalize import EncodedFrame, NormalizedImage, PixelFrame, normalize
from service.imaging.spec import REKOGNITION_INPUT, BackendInput, DecodeLimits

PIXELS_INPUT = BackendInput("pixels", s3_max_bytes=None, pixel_side=256)
LIMITS = DecodeLimits()


def phone_jpeg() -> bytes:
    """A 12 MP (4000x3000) photo-like JPEG with sensor-like grain at quality 95: over 5 MiB, as
    detailed phone photos are, so Rekognition cannot take it as it is (a smaller one passes
    through untouched and costs no decode at all)."""
    image = Image.open(io.BytesIO(photo(4000, 3000, seed=7)))
    rng = np.random.default_rng(7)
    grain = rng.integers(-24, 24, (3000, 4000, 3), dtype=np.int16)
    pixels = np.clip(np.asarray(image, dtype=np.int16) + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def phone_heic() -> bytes:
    """The same picture as an iPhone-style HEIC (encoded with pillow-heif, a dev dependency)."""
    import pillow_heif  # noqa: PLC0415  (GPL x265 encoder: test and bench environments only)

    image = Image.open(io.BytesIO(photo(4000, 3000, seed=7))).convert("RGB")
    heif = pillow_heif.from_pillow(image)
    buffer = io.BytesIO()
    heif.save(buffer, quality=80)
    return buffer.getvalue()


def animated_gif(frames: int = 48, size: tuple[int, int] = (480, 270)) -> bytes:
    """A short clip: a moving ball over a gradient with noise, every frame different."""
    rng = np.random.default_rng(3)
    pictures = []
    for index in range(frames):
        base = np.linspace(0, 255, size[0], dtype=np.float32)[np.newaxis, :, np.newaxis]
        pixels = np.broadcast_to(base, (size[1], size[0], 3)).copy()
        pixels += rng.integers(-20, 20, pixels.shape)
        frame = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(frame)
        x = index * (size[0] - 60) // max(1, frames - 1)
        draw.ellipse([x, 100, x + 60, 160], fill=(220, 40, 40))
        pictures.append(frame.quantize(128))
    buffer = io.BytesIO()
    pictures[0].save(buffer, "GIF", save_all=True, append_images=pictures[1:], duration=40)
    return buffer.getvalue()


def pillow_job(data: bytes, result: NormalizedImage) -> Callable[[], object]:
    """Plain Pillow doing what ``normalize`` did for ``data``: the same frames, size and format."""
    first = result.frames[0]
    pixels = isinstance(first, PixelFrame)
    size = first.image.size if isinstance(first, PixelFrame) else (first.width, first.height)
    indices = [frame.index for frame in result.frames]
    quality = LIMITS.jpeg_quality

    def run() -> object:
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "JPEG":
                image.draft("RGB", size)
            outputs: list[object] = []
            for index in indices:
                if index:
                    image.seek(index)
                frame = ImageOps.exif_transpose(image).convert("RGB")
                if frame.size != size:
                    frame = frame.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
                if pixels:
                    outputs.append(frame)
                else:
                    buffer = io.BytesIO()
                    frame.save(buffer, "JPEG", quality=quality)
                    outputs.append(buffer.getvalue())
            return outputs

    return run


def rate(job: Callable[[], object], duration: float) -> float:
    """Jobs per second of this process's CPU time (all its threads: a codec may run its own),
    run for ``duration`` seconds of wall time: throughput per core, and on a shared machine
    the time other processes take the core away is not counted against either side."""
    job()  # warm-up
    done = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    while time.perf_counter() - started < duration:
        job()
        done += 1
    return done / (time.process_time() - cpu_started)


@dataclass
class Row:
    workload: str
    mode: str
    detail: str
    ours: list[float]
    pillow: list[float]

    def line(self) -> str:
        ratios = [a / b for a, b in zip(self.ours, self.pillow, strict=True)]
        return (
            f"| {self.workload:<11} | {self.mode:<7} | {self.detail:<44} "
            f"| {statistics.median(self.ours):>7.2f} | {statistics.median(self.pillow):>7.2f} "
            f"| {statistics.median(ratios):>5.2f}x |"
        )


HEADER = (
    f"| workload    | mode    | {'output':<44} | ours/s  | Pillow/s| ratio |\n"
    f"|-------------|---------|{'-' * 46}|---------|---------|-------|"
)


def describe(data: bytes, result: NormalizedImage) -> str:
    first = result.frames[0]
    if isinstance(first, EncodedFrame):
        size = f"{first.width}x{first.height} JPEG {len(first.data) // 1024} KiB"
    else:
        size = f"{first.image.size[0]}x{first.image.size[1]} RGB"
    frames = f", {len(result.frames)}/{result.frame_count} frames" if result.frame_count > 1 else ""
    return f"{len(data) // 1024} KiB -> {size}{frames}"


WORKLOADS: dict[str, Callable[[], bytes]] = {
    "12MP JPEG": phone_jpeg,
    "12MP HEIC": phone_heic,
    "GIF anim": animated_gif,
}
TARGETS = {"encoded": REKOGNITION_INPUT, "pixels": PIXELS_INPUT}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} is not in /proc/self/status")


def peak_memory(path: str, mode: str) -> None:
    """Child process: the RSS high-water increase of normalizing the file at ``path`` once, from
    a process that has only imported the codecs (nothing decoded yet, so no allocator reuse
    hides the cost)."""
    data = Path(path).read_bytes()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset VmHWM to the current RSS: the peak below is this call's alone
    before = _status_kib("VmHWM")
    normalize(data, TARGETS[mode], LIMITS)
    after = _status_kib("VmHWM")
    print(json.dumps({"before_kib": before, "after_kib": after, "input_kib": len(data) // 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--peak", nargs=2, metavar=("FILE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak:
        peak_memory(*args.peak)
        return
    rows: list[Row] = []
    jobs: list[tuple[Row, Callable[[], object], Callable[[], object]]] = []
    files: dict[str, str] = {}
    scratch = tempfile.TemporaryDirectory()
    for workload, make in WORKLOADS.items():
        data = make()
        files[workload] = str(Path(scratch.name) / f"{len(files)}.bin")
        Path(files[workload]).write_bytes(data)
        for mode, target in TARGETS.items():
            result = normalize(data, target, LIMITS)
            assert result.converted, f"{workload} passed through: nothing to measure"
            row = Row(workload, mode, describe(data, result), [], [])
            rows.append(row)
            service: Callable[[], object] = functools.partial(normalize, data, target, LIMITS)
            jobs.append((row, service, pillow_job(data, result)))
    print(
        f"one thread (CPU time of the process), {args.rounds} interleaved rounds "
        f"of {args.duration:.0f} s per side"
    )
    for _ in range(args.rounds):
        for row, ours, pillow in jobs:
            row.ours.append(rate(ours, args.duration))
            row.pillow.append(rate(pillow, args.duration))
    print(HEADER)
    for row in rows:
        print(row.line())
    print("\n| workload    | mode    | input KiB | peak RSS increase MiB |")
    print("|-------------|---------|-----------|-----------------------|")
    for row in rows:
        child = subprocess.run(
            [sys.executable, "-m", "bench.normalize", "--peak", files[row.workload], row.mode],
            check=True,
            capture_output=True,
            text=True,
        )
        peak = json.loads(child.stdout.strip().splitlines()[-1])
        increase = (peak["after_kib"] - peak["before_kib"]) / 1024
        kib = peak["input_kib"]
        print(f"| {row.workload:<11} | {row.mode:<7} | {kib:>9} | {increase:>21.1f} |")
    scratch.cleanup()


if __name__ == "__main__":
    main()
