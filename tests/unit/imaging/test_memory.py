"""Peak memory: the costliest images that pass every check, decoded at the pixel bound, stay
within decode_memory_bound().

Pillow and the codecs allocate in C, so tracemalloc sees nothing: each case runs in a child
process that has imported the codecs and normalized a tiny image of the same format, resets its
RSS high-water mark (Linux: /proc/self/clear_refs) and reports how far one normalization raised
it. One case per child: memory a previous case freed would be reused and hide the cost.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

from service.imaging.normalize import decode_memory_bound
from service.imaging.spec import REKOGNITION_INPUT, BackendInput, DecodeLimits
from tests import image_files as files
from tests.images import png_image

if not Path("/proc/self/clear_refs").exists():  # pragma: no cover - Linux only
    pytest.skip("needs /proc/self/clear_refs (Linux)", allow_module_level=True)

PIXELS = BackendInput("pixels", s3_max_bytes=None, pixel_side=224)
TARGETS = {"encoded": REKOGNITION_INPUT, "pixels": PIXELS}
# 16 MP, wider than Rekognition's 10,000 px so that no JPEG or PNG passes through untouched;
# at 16 MP the bound's per-pixel terms outweigh its fixed ones.
WIDE = (12_000, 1_333)
SQUARE = (2_000, 2_000)  # for the codecs whose encoders (test fixtures only) are slow


class Case(NamedTuple):
    make: Callable[[], bytes]  # the image at the bound
    warm: Callable[[], bytes]  # a tiny one of its format, to load the codec first
    size: tuple[int, int]  # its pixels are the bound
    floor: int  # bytes a pixel it must cost at least (the decoded form): the measurement works


CHILD = """
import json, sys
from pathlib import Path
from typing import NamedTuple
from service.imaging.normalize import normalize
from service.imaging.spec import BackendInput, DecodeLimits

def hwm_kib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")

data_path, warm_path, target_json, max_pixels = sys.argv[1:5]
target = BackendInput(**json.loads(target_json))
limits = DecodeLimits(max_pixels=int(max_pixels))
normalize(Path(warm_path).read_bytes(), target, limits)  # codecs loaded, caches filled
data = Path(data_path).read_bytes()
Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the current RSS
before = hwm_kib()
result = normalize(data, target, limits)
print(json.dumps({"increase": (hwm_kib() - before) * 1024, "frames": len(result.frames)}))
"""


def cases() -> dict[str, Case]:
    width, height = WIDE
    return {
        # 16-bit RGBA, every scanline present: a zlib bomb honest about its size (8 bytes a
        # pixel inflated, 4 decoded).
        "png-rgba16": Case(
            lambda: png_image(width, height, bit_depth=16, colour_type=6), files.png_rgb, WIDE, 4
        ),
        # 16-bit grey: the pixel flood with all its rows.
        "png-grey16": Case(
            lambda: png_image(width, height, bit_depth=16, colour_type=0), files.png_rgb, WIDE, 2
        ),
        # Frames spread over a canvas the header does not declare: full canvases decoded.
        "gif-canvas": Case(lambda: files.gif_spread_canvas(6, WIDE), files.gif_still, WIDE, 4),
        # Progressive 4:2:0: 3 bytes of DCT coefficients a pixel, held before any row.
        "jpeg-progressive": Case(
            lambda: files.encode(files.solid(*WIDE), "JPEG", progressive=True),
            files.jpeg_baseline,
            WIDE,
            3,
        ),
        "tiff-cmyk": Case(
            lambda: files.encode(
                files.solid(*WIDE, mode="CMYK"), "TIFF", compression="tiff_deflate"
            ),
            files.tiff_rgb,
            WIDE,
            4,
        ),
        "heic": Case(lambda: files.heic(*SQUARE), files.heic, SQUARE, 4),
        "avif": Case(lambda: files.avif(*SQUARE), files.avif, SQUARE, 4),
        "webp-animated": Case(lambda: files.webp_animated(3, SQUARE), files.webp_lossy, SQUARE, 4),
    }


CASES = cases()


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("bombs")
    paths = {}
    for name, case in CASES.items():
        data, warm = folder / f"{name}.bin", folder / f"{name}-warm.bin"
        data.write_bytes(case.make())
        warm.write_bytes(case.warm())
        paths[name] = (data, warm)
    return paths


def peak(data: Path, warm: Path, target: BackendInput, max_pixels: int) -> dict[str, int]:
    fields = {
        "mode": target.mode,
        "min_side": target.min_side,
        "max_side": target.max_side,
        "max_bytes": target.max_bytes,
        "s3_max_bytes": target.s3_max_bytes,
        "pixel_side": target.pixel_side,
    }
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(data), str(warm), json.dumps(fields), str(max_pixels)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    result: dict[str, int] = json.loads(child.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("mode", list(TARGETS))
@pytest.mark.parametrize("name", list(CASES))
def test_peak_memory_stays_within_the_bound(
    name: str, mode: str, written: dict[str, tuple[Path, Path]]
) -> None:
    data, warm = written[name]
    case, target = CASES[name], TARGETS[mode]
    max_pixels = case.size[0] * case.size[1]
    measured = peak(data, warm, target, max_pixels)
    bound = decode_memory_bound(
        DecodeLimits(max_pixels=max_pixels), target, input_bytes=data.stat().st_size
    )
    assert measured["increase"] <= bound, (name, mode, measured["increase"], bound)
    # The measurement sees the decode: at least the decoded image (or JPEG coefficients).
    assert measured["increase"] >= 0.9 * case.floor * max_pixels, (name, mode, measured)
