"""Peak memory of the local backend under image bombs, against its documented bound.

Each mix runs in a fresh child process (``ru_maxrss`` is a high-water mark, so one process per
measurement), through ``LocalModelBackend.moderate`` exactly as the pipeline calls it, with
``callers`` images in flight at once:

* ``normal``: photo-like JPEGs and PNGs (1024x768), the everyday load;
* ``bombs``: what issue 11 sent (the 99-byte 10,000 x 10,000 16-bit PNG, 100-megapixel zlib
  bombs, truncated files), plus the worst images the limit still admits: an RGBA PNG, a 16-bit
  grey PNG, a palette PNG with transparency, a narrow RGBA strip that cannot be reduced, and a
  progressive JPEG, each as large as ``MODERATION_MAX_IMAGE_PIXELS`` allows.

The child reports the peak RSS of loading the models ("load peak", VmHWM then), its RSS
once they are loaded and warmed up with ``workers`` concurrent inferences ("warm RSS": Python,
the libraries and the models), then resets the kernel's high-water mark (``/proc/self/clear_refs``)
and reports the peak over the mix ("peak RSS", VmHWM, what ``ru_maxrss`` reads). The bound on the
increase is ``backend.decode_memory_bound`` (``workers`` x ``decode_memory_bound()``), which
docs/local-model.md adds to the warm RSS and the in-flight bytes cap for the pipeline's peak.

    .venv/bin/python -m bench.image_bombs                       # 2 workers, 40 MP, ~1 minute
    .venv/bin/python -m bench.image_bombs --workers 4 --max-pixels 20000000 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from bench.local_model import photo
from service.backends.local import LocalModelBackend
from service.errors import InputError
from service.imaging.spec import DecodeLimits
from tests.images import (
    cut,
    pixel_flood_png,
    png_chunk,
    png_image,
    short_stream_png,
    zlib_bomb_png,
)

MIB = 1024 * 1024


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def normal_mix(count: int = 16) -> list[bytes]:
    """Photo-like JPEGs, and the same pictures as PNGs."""
    jpegs = [photo(1024, 768, seed) for seed in range(count // 2)]
    pngs = [_encode(Image.open(io.BytesIO(data)), "PNG") for data in jpegs]
    return jpegs + pngs


def bomb_mix(max_pixels: int) -> list[bytes]:
    """Refused bombs and the largest images the limit admits, in every costly layout."""
    side = math.isqrt(max_pixels)
    noise = np.random.default_rng(0).integers(0, 256, (side // 64, side // 64, 3), dtype=np.uint8)
    # Smooth noise: a JPEG that is not flat yet fits the 5 MiB inline limit.
    picture = Image.fromarray(noise).resize((side, side), Image.Resampling.BILINEAR)
    progressive = _encode(picture, "JPEG", quality=70, progressive=True, subsampling=2)
    del picture
    transparent = png_chunk_trns()
    return [
        pixel_flood_png(),  # refused: 100 MP
        zlib_bomb_png(),  # refused: 100 MP
        zlib_bomb_png(10_000, 10_000, 0),  # refused: 100 MP, grey
        short_stream_png(side, side),  # refused: truncated stream
        cut(zlib_bomb_png(side, side)),  # refused: truncated file
        zlib_bomb_png(side, side),  # admitted: RGBA at the limit
        png_image(side, side, bit_depth=16, colour_type=0),  # admitted: 16-bit grey
        png_image(side, side, colour_type=3, chunks=transparent),  # admitted: palette + tRNS
        zlib_bomb_png(min(10_000, max_pixels // 511), 511),  # admitted: too narrow to reduce
        progressive,  # admitted: progressive JPEG, coefficients held whole
    ]


def png_chunk_trns() -> tuple[bytes, ...]:
    """PLTE and tRNS for a palette PNG whose index 0 is transparent black."""
    return (png_chunk(b"PLTE", bytes(3 * 256)), png_chunk(b"tRNS", b"\x00"))


def _status(field: str) -> int:
    """A /proc/self/status size in bytes: VmRSS (now) or VmHWM (the peak, ``ru_maxrss``)."""
    lines = Path("/proc/self/status").read_text().splitlines()
    return int(next(line for line in lines if line.startswith(field)).split()[1]) * 1024


def _reset_peak() -> None:
    """Start the high-water mark again from the current RSS: loading the model peaks higher
    than it settles, which would hide everything measured after it."""
    Path("/proc/self/clear_refs").write_text("5")


async def measure(
    images: list[bytes], *, workers: int, max_pixels: int, callers: int, rounds: int
) -> dict[str, object]:
    """Run in the child: the backend's RSS after warm-up, its peak over ``rounds`` of the mix
    with ``callers`` in flight, the documented bound, and how each image ended."""
    limits = DecodeLimits(max_pixels=max_pixels)
    backend = LocalModelBackend(workers=workers, max_queue=callers, limits=limits)
    await backend.start()
    try:
        warm = normal_mix(2 * workers)
        await asyncio.gather(*(backend.moderate(data, 50.0) for data in warm))
        # Not ru_maxrss: a child starts with its parent's (Linux keeps it across fork and exec).
        loaded_peak = _status("VmHWM")
        _reset_peak()
        baseline = _status("VmRSS")
        outcomes: collections.Counter[str] = collections.Counter()
        slots = asyncio.Semaphore(callers)

        async def one(data: bytes) -> None:
            async with slots:
                try:
                    result = await backend.moderate(data, 50.0)
                    outcomes["approved" if not result.labels else "labelled"] += 1
                except InputError as exc:
                    outcomes[str(exc.reason)] += 1

        for _ in range(rounds):
            await asyncio.gather(*(one(data) for data in images))
        return {
            "loaded_peak": loaded_peak,
            "baseline": baseline,
            "peak": _status("VmHWM"),
            "bound": backend.decode_memory_bound,
            "outcomes": dict(sorted(outcomes.items())),
        }
    finally:
        await backend.close()


def child(args: argparse.Namespace) -> None:
    images = json.loads(Path(args.images).read_text())
    data = [Path(path).read_bytes() for path in images]
    report = asyncio.run(
        measure(
            data,
            workers=args.workers,
            max_pixels=args.max_pixels,
            callers=args.callers,
            rounds=args.rounds,
        )
    )
    print(json.dumps(report))


def run_mix(name: str, images: list[bytes], args: argparse.Namespace, folder: Path) -> None:
    paths = []
    for index, data in enumerate(images):
        path = folder / f"{name}-{index}.img"
        path.write_bytes(data)
        paths.append(str(path))
    listing = folder / f"{name}.json"
    listing.write_text(json.dumps(paths))
    command = [
        sys.executable,
        "-m",
        "bench.image_bombs",
        "--child",
        str(listing),
        "--workers",
        str(args.workers),
        "--max-pixels",
        str(args.max_pixels),
        "--callers",
        str(args.callers),
        "--rounds",
        str(args.rounds),
    ]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    loaded, baseline, peak, bound = (
        int(report[key]) for key in ("loaded_peak", "baseline", "peak", "bound")
    )
    verdict = "within" if peak - baseline <= bound else "OVER"
    print(
        f"| {name:<7} | {len(images):>6} | {loaded / MIB:>9.0f} | {baseline / MIB:>8.0f} "
        f"| {peak / MIB:>8.0f} | {(peak - baseline) / MIB:>8.0f} | {bound / MIB:>8.0f} "
        f"| {verdict:<6} | {report['outcomes']} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-pixels", type=int, default=40_000_000)
    parser.add_argument("--callers", type=int, default=4, help="images in flight at once")
    parser.add_argument("--rounds", type=int, default=2, help="passes over each mix")
    parser.add_argument(
        "--mix", choices=["normal", "bombs"], nargs="+", default=["normal", "bombs"]
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--images", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.images = args.child
        child(args)
        return
    print(
        f"local backend, {args.workers} workers, MODERATION_MAX_IMAGE_PIXELS={args.max_pixels}, "
        f"{args.callers} images in flight, {args.rounds} rounds; MiB"
    )
    print(
        "| mix     | images | load peak | warm RSS | peak RSS | increase | bound    | held   "
        "| outcomes |\n"
        "|---------|--------|-----------|----------|----------|----------|----------|--------"
        "|----------|"
    )
    with tempfile.TemporaryDirectory(prefix="image-bombs-") as folder:
        mixes = {"normal": normal_mix, "bombs": lambda: bomb_mix(args.max_pixels)}
        for name in args.mix:
            run_mix(name, mixes[name](), args, Path(folder))


if __name__ == "__main__":
    main()
