"""RGB pixels to the JPEG a backend takes: sides within its limits, bytes under its cap.

The size is planned once from the source's size: down so the longest side fits ``max_side`` and
the picture holds at most ``ENCODE_MAX_PIXELS`` (a 12 MP phone photo keeps its detail, a 48 MP
one is brought to about 12 MP, which is also what a JPEG decoder's DCT scaling gives cheaply),
up so the shortest side reaches ``min_side``; when an extreme aspect ratio cannot satisfy both,
the longest side fits and the short side is padded with white. Encoding retries smaller only
when the first JPEG is over ``max_bytes``. No metadata is written: the orientation is already
applied, and EXIF/XMP (locations, device ids) must not travel to the backend.
"""

from __future__ import annotations

import io
import math
from typing import Final

from PIL import Image

from service.errors import InputError, Reason
from service.imaging.pixels import WHITE
from service.imaging.spec import BackendInput

ENCODE_MAX_PIXELS: Final = 4096 * 3072
"""Most pixels re-encoded per frame (about 12.6 MP: detail kept, bytes kept under 5 MiB)."""
DRAFT_SLACK: Final = 0.9
"""A JPEG decoded by DCT scaling at up to 10% less per side than planned is used as it is."""
_SHRINK_ATTEMPTS: Final = 8
_SHRINK_MARGIN: Final = 0.95
_RESAMPLE: Final = Image.Resampling.BICUBIC
_REDUCING_GAP: Final = 2.0  # box-reduce first to within 2x, then bicubic: fast and clean


def plan_size(size: tuple[int, int], target: BackendInput) -> tuple[int, int]:
    """The size to resample to (before any padding)."""
    width, height = size
    longest, shortest = max(width, height), min(width, height)
    scale = min(1.0, target.max_side / longest, math.sqrt(ENCODE_MAX_PIXELS / (width * height)))
    if shortest * scale < target.min_side:
        scale = min(target.min_side / shortest, target.max_side / longest)
    return _scaled(size, scale, target)


def _scaled(size: tuple[int, int], scale: float, target: BackendInput) -> tuple[int, int]:
    width, height = size
    return (
        min(target.max_side, max(1, round(width * scale))),
        min(target.max_side, max(1, round(height * scale))),
    )


def acceptable_draft(decoded: tuple[int, int], planned: tuple[int, int], min_side: int) -> bool:
    """Whether a DCT-scaled decode may stand in for the planned size without resampling."""
    return (
        min(decoded) >= min_side
        and all(have <= want for have, want in zip(decoded, planned, strict=True))
        and all(have >= want * DRAFT_SLACK for have, want in zip(decoded, planned, strict=True))
    )


def draft_request(planned: tuple[int, int], source: tuple[int, int]) -> tuple[int, int] | None:
    """The size to ask a JPEG decoder's DCT scaling for, or None when no reduction is planned."""
    if all(want >= have for want, have in zip(planned, source, strict=True)):
        return None
    return (math.ceil(planned[0] * DRAFT_SLACK), math.ceil(planned[1] * DRAFT_SLACK))


def resample(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return (
        image if image.size == size else image.resize(size, _RESAMPLE, reducing_gap=_REDUCING_GAP)
    )


def pad(image: Image.Image, min_side: int) -> Image.Image:
    """Centred on white so each side is at least ``min_side``."""
    width, height = image.size
    if width >= min_side and height >= min_side:
        return image
    canvas = Image.new("RGB", (max(width, min_side), max(height, min_side)), WHITE)
    canvas.paste(image, ((canvas.width - width) // 2, (canvas.height - height) // 2))
    return canvas


def encode_jpeg(image: Image.Image, target: BackendInput, quality: int) -> tuple[bytes, int, int]:
    """JPEG bytes of the RGB ``image`` (already planned: sides within limits) under
    ``target.max_bytes``, with the encoded size. Over the cap, the picture is made smaller by
    the square root of the excess (bytes follow the pixel count) and encoded again; the
    quality drops only when it cannot get smaller."""
    size = image.size
    for _ in range(_SHRINK_ATTEMPTS):
        framed = pad(resample(image, size), target.min_side)
        data = _jpeg(framed, quality)
        if len(data) <= target.max_bytes:
            return data, framed.width, framed.height
        smaller = _scaled(size, math.sqrt(target.max_bytes / len(data)) * _SHRINK_MARGIN, target)
        if smaller == size:
            quality = max(10, quality - 20)
        size = smaller
    raise InputError(
        Reason.IMAGE_TOO_LARGE,
        f"could not encode {image.width}x{image.height} px under {target.max_bytes} bytes",
    )


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
