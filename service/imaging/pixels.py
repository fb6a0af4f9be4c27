"""Decoded pixels to 8-bit RGB, oriented and reduced, without full-size copies of big images.

Every mode Pillow decodes to ends up RGB: transparency (alpha bands, palette or colour-key
transparency) flattened onto white, as a viewer on a white page shows it; 16- and 32-bit grey
scaled to 8 bits rather than clipped; float grey stretched from 0..1; CMYK, YCbCr, LAB, HSV,
bilevel and palette images converted. Images over ``STRIP_PIXELS`` are converted a strip of rows
at a time, so the conversions' temporary copies stay that small.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping
from typing import Final, cast

from PIL import Image

log = logging.getLogger(__name__)

STRIP_PIXELS: Final = 1 << 18
"""Pixels converted at a time when a big image is not RGB already."""
STRIP_BYTES_PER_PIXEL: Final = 24  # crop, RGBA, white canvas, composite, RGB: each <= 4 B/px
WHITE: Final = (255, 255, 255)
_ALPHA_MODES: Final = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})
_TRANSPOSE: Final[Mapping[int, Image.Transpose]] = {  # EXIF orientation -> the fix-up
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIDEWAYS: Final = frozenset({5, 6, 7, 8})  # orientations that swap width and height
_ORIENTATION: Final = 0x0112  # the EXIF (TIFF) tag of the orientation
_HIGH_BYTE: Final = [value >> 8 for value in range(65536)]


def orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8; 1 when absent). A broken EXIF block is ignored rather than
    failing the image: the pixels are fine, only the rotation hint is lost."""
    try:
        value = image.getexif().get(_ORIENTATION)
    except Exception:
        log.debug("ignoring unreadable EXIF orientation", exc_info=True)
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def exif_orientation(raw: bytes | None) -> int:
    """The orientation in a raw EXIF block (a PNG ``eXIf`` chunk), read without an image:
    Pillow's PNG ``getexif()`` decodes every pixel to look for a chunk after the image data."""
    if not raw:
        return 1
    exif = Image.Exif()
    try:
        exif.load(raw)
        value = exif.get(_ORIENTATION)
    except Exception:
        log.debug("ignoring unreadable EXIF orientation", exc_info=True)
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def oriented_size(size: tuple[int, int], exif_orientation: int) -> tuple[int, int]:
    width, height = size
    return (height, width) if exif_orientation in _SIDEWAYS else (width, height)


def apply_orientation(image: Image.Image, exif_orientation: int) -> Image.Image:
    transpose = _TRANSPOSE.get(exif_orientation)
    return image if transpose is None else image.transpose(transpose)


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB (the same object when it already is); one pass, full size."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("LA").convert("RGBA") if mode == "La" else image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, WHITE)
        canvas.paste(rgba, (0, 0), rgba)
        return canvas
    if mode.startswith("I;16"):
        return image.convert("I").point(_HIGH_BYTE, "L").convert("RGB")
    if mode == "I":
        return image.point(_HIGH_BYTE, "L").convert("RGB")
    if mode == "F":
        low, high = cast("tuple[float, float]", image.getextrema())
        scaled = image.point(lambda value: value * 255) if low >= 0 and high <= 1 else image
        return scaled.convert("L").convert("RGB")
    return image.convert("RGB")


def reduced_rgb(image: Image.Image, factor: int) -> Image.Image:
    """RGB, box-reduced by the integer ``factor``; big images are converted and reduced a strip
    of rows at a time, so the only full-size buffer is the decoded image itself."""
    width, height = image.size
    if image.mode == "RGB" or width * height <= STRIP_PIXELS:
        rgb = to_rgb(image)
        return rgb if factor == 1 else rgb.reduce(factor)
    reduced = Image.new("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
    rows = max(1, STRIP_PIXELS // width // factor) * factor
    for top in range(0, height, rows):
        strip = to_rgb(image.crop((0, top, width, min(height, top + rows))))
        reduced.paste(strip if factor == 1 else strip.reduce(factor), (0, top // factor))
    return reduced


def reduction_factor(size: tuple[int, int], side: int) -> int:
    """The largest integer factor that keeps the shorter side ``>= side`` (1 for side <= 0)."""
    return max(1, min(size) // side) if side > 0 else 1


def pixel_digest(image: Image.Image) -> bytes:
    """A digest of the pixels (and size), hashed a strip at a time: equal digests, equal frames.
    A cryptographic hash, so no crafted frame can pass for another and go unanalysed; SHA-256
    because CPUs hash it in hardware (3x faster than BLAKE2b where they do)."""
    width, height = image.size
    digest = hashlib.sha256(f"{image.mode} {width}x{height}".encode())
    rows = max(1, STRIP_PIXELS // max(1, width))
    for top in range(0, height, rows):
        digest.update(image.crop((0, top, width, min(height, top + rows))).tobytes())
    return digest.digest()
