"""Peak memory of normalization under image bombs, against decode_memory_bound().

What issue 11 sent and what a pixel bound still admits, each normalized by
:func:`service.imaging.normalize.normalize` exactly as the normalize stage calls it (one image per
worker), for both targets: ``encoded`` (JPEG within Rekognition's limits) and ``pixels`` (RGB for
a local model, shorter side 224). Independent of any backend.

* refused before decoding: the 99-byte 10,000 x 10,000 16-bit PNG (its one row of data is
  missing), 100 MP zlib bombs, a GIF whose frame grows the canvas to 3.6 GP, a TIFF with a
  4 GP tile, a progressive JPEG whose coefficients alone are over the bound, truncated files
  (at ``--max-pixels 100000000`` the 10,000 x 10,000 PNGs are within the bound: the one-row
  PNG is then TRUNCATED_IMAGE, and the zlib bombs are decoded for ``pixels`` and passed to
  Rekognition untouched for ``encoded``, whose documented limits they meet);
* admitted at the bound (``--max-pixels``): RGBA, 16-bit RGBA, 16-bit grey and palette+tRNS
  PNGs, a strip too narrow to reduce, a progressive JPEG, a GIF whose frames are spread over
  a canvas its header does not declare, a CMYK TIFF; all wider than 10,000 px so that none
  passes to Rekognition untouched; and a 12 MP HEIC (its encoder is too slow for the bound).

Each (image, target) runs in a fresh child process that has imported the codecs and normalized
a small image of the same format; it resets its RSS high-water mark (``/proc/self/clear_refs``,
Linux) and reports how far one normalization raised it (VmHWM, what ``ru_maxrss`` reads). The
bound is ``decode_memory_bound(limits, target, input_bytes=len(image))``: what one worker holds
beyond the input; the stage's workers times that, plus the inputs in flight, is the service's.

    .venv/bin/python -m bench.image_bombs                          # 40 MP, ~1 minute
    .venv/bin/python -m bench.image_bombs --max-pixels 100000000   # the default bound, ~3 min
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from service.errors import InputError
from service.imaging.normalize import decode_memory_bound, normalize
from service.imaging.spec import REKOGNITION_INPUT, BackendInput, DecodeLimits
from tests import image_files as files
from tests.images import cut, pixel_flood_png, png_chunk, png_image, zlib_bomb_png

MIB = 1024 * 1024
WIDE = 12_000  # wider than Rekognition's 10,000 px: nothing passes through untouched
TARGETS: dict[str, BackendInput] = {
    "encoded": REKOGNITION_INPUT,
    "pixels": BackendInput("pixels", s3_max_bytes=None, pixel_side=224),
}


def bombs(max_pixels: int) -> dict[str, tuple[Callable[[], bytes], Callable[[], bytes]]]:
    """name: (the image, a small one of its format to load the codec with first)."""
    height = max_pixels // WIDE
    palette = (png_chunk(b"PLTE", bytes(3 * 256)), png_chunk(b"tRNS", b"\x00"))

    def progressive() -> bytes:
        # Smooth noise: a JPEG that is not flat, so its scans carry real coefficients.
        grain = files.noise(WIDE // 64, max(1, height // 64))
        return files.encode(grain.resize((WIDE, height)), "JPEG", quality=70, progressive=True)

    return {
        "png 10000^2 16-bit, 1 row (issue 11)": (pixel_flood_png, files.png_rgb),
        "png zlib bomb 100 MP RGBA": (zlib_bomb_png, files.png_rgb),
        "png zlib bomb 100 MP grey": (lambda: zlib_bomb_png(10_000, 10_000, 0), files.png_rgb),
        "png truncated file": (lambda: cut(zlib_bomb_png(WIDE, height)), files.png_rgb),
        "gif frame at 60000,60000": (files.gif_canvas_bomb, files.gif_still),
        "tiff 65536^2 tile": (files.tiff_tile_bomb, files.tiff_rgb),
        "jpeg coefficients 6 B/px": (
            lambda: files.jpeg_coefficient_bomb(WIDE, height),
            files.jpeg_baseline,
        ),
        "png RGBA at the bound": (lambda: zlib_bomb_png(WIDE, height), files.png_rgb),
        "png RGBA 16-bit at the bound": (
            lambda: png_image(WIDE, height, bit_depth=16, colour_type=6),
            files.png_rgb,
        ),
        "png grey 16-bit at the bound": (
            lambda: png_image(WIDE, height, bit_depth=16, colour_type=0),
            files.png_rgb,
        ),
        "png palette+tRNS at the bound": (
            lambda: png_image(WIDE, height, colour_type=3, chunks=palette),
            files.png_rgb,
        ),
        "png RGBA strip 224 high": (
            lambda: zlib_bomb_png(min(65_535, max_pixels // 224), 224),
            files.png_rgb,
        ),
        "jpeg progressive at the bound": (progressive, files.jpeg_baseline),
        "gif canvas grown by frames": (
            lambda: files.gif_spread_canvas(6, (WIDE, height)),
            files.gif_still,
        ),
        "tiff CMYK at the bound": (
            lambda: files.encode(
                files.solid(WIDE, height, mode="CMYK"), "TIFF", compression="tiff_deflate"
            ),
            files.tiff_rgb,
        ),
        "heic 12 MP (phone)": (lambda: files.heic(4000, 3000), files.heic),
    }


def _hwm() -> int:
    """VmHWM in bytes: the RSS high-water mark (``ru_maxrss``)."""
    lines = Path("/proc/self/status").read_text().splitlines()
    return int(next(line for line in lines if line.startswith("VmHWM")).split()[1]) * 1024


def child(image: Path, warm: Path, mode: str, max_pixels: int) -> None:
    """Normalize ``image`` once and print the high-water increase and the outcome."""
    target, limits = TARGETS[mode], DecodeLimits(max_pixels=max_pixels)
    normalize(warm.read_bytes(), target, limits)  # a valid image: codecs loaded
    data = image.read_bytes()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the current RSS
    before = _hwm()
    try:
        result = normalize(data, target, limits)
        outcome = f"{len(result.frames)} frame(s)" if result.converted else "passed through"
    except InputError as error:
        outcome = str(error.reason)
    print(json.dumps({"increase": _hwm() - before, "outcome": outcome}))


def measure(image: Path, warm: Path, mode: str, max_pixels: int) -> dict[str, object]:
    command = [sys.executable, "-m", "bench.image_bombs", "--child", str(image), str(warm), mode]
    done = subprocess.run(
        [*command, "--max-pixels", str(max_pixels)], check=True, capture_output=True, text=True
    )
    report: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-pixels", type=int, default=40_000_000)
    parser.add_argument("--child", nargs=3, metavar=("IMAGE", "WARM", "MODE"), help="internal")
    args = parser.parse_args()
    if args.child:
        image, warm, mode = args.child
        child(Path(image), Path(warm), mode, args.max_pixels)
        return
    limits = DecodeLimits(max_pixels=args.max_pixels)
    print(f"normalize() per image, MODERATION_MAX_IMAGE_PIXELS={args.max_pixels}; MiB")
    print(
        "| image                                | target  | input KiB | outcome"
        "               | peak increase | bound  | held   |\n"
        "|--------------------------------------|---------|-----------|-----------------------"
        "|---------------|--------|--------|"
    )
    over = 0
    with tempfile.TemporaryDirectory(prefix="image-bombs-") as scratch:
        folder = Path(scratch)
        for index, (name, (make, warm_up)) in enumerate(bombs(args.max_pixels).items()):
            image, warm = folder / f"{index}.img", folder / f"{index}-warm.img"
            data = make()
            image.write_bytes(data)
            warm.write_bytes(warm_up())
            for mode, target in TARGETS.items():
                report = measure(image, warm, mode, args.max_pixels)
                increase = int(str(report["increase"]))
                bound = decode_memory_bound(limits, target, input_bytes=len(data))
                held = increase <= bound
                over += not held
                print(
                    f"| {name:<36} | {mode:<7} | {len(data) // 1024:>9} "
                    f"| {report['outcome']!s:<21} | {increase / MIB:>13.1f} "
                    f"| {bound / MIB:>6.0f} | {'within' if held else 'OVER':<6} |",
                    flush=True,
                )
    if over:
        sys.exit(f"{over} measurement(s) over the bound")


if __name__ == "__main__":
    main()
