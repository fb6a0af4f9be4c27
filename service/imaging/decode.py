"""Opening untrusted bytes with their own format's decoder only, and the one place where the
decoders' many exception types become typed input errors.

Pillow's plugin classes are instantiated directly (the same decoders ``Image.open(...,
formats=[...])`` would pick, without its trial of other plugins and without its process-wide
``MAX_IMAGE_PIXELS`` check, which must not be what protects us): opening reads headers only, so
the sizes the decoder will allocate are checked against our bounds before ``load()``.
"""

from __future__ import annotations

import functools
import io
import struct
import time
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Final

import pi_heif  # type: ignore[import-untyped]  # no type information shipped
from PIL import (
    AvifImagePlugin,
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageFile,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from service.errors import InputError, Reason
from service.imaging.formats import SourceFormat
from service.imaging.spec import DecodeLimits

# What Pillow and the codecs raise on hostile or broken input (PNG chunk errors are
# SyntaxErrors, libheif's RuntimeErrors, bad tables IndexErrors and KeyErrors, and so on), and
# Pillow's UserWarnings about corrupt metadata when a warnings filter turns them into errors.
DECODE_ERRORS: Final = (
    UserWarning,
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    zlib.error,
    LookupError,
    TypeError,
    ArithmeticError,
    RuntimeError,
)
_BOMB_ERRORS: Final = (Image.DecompressionBombError, Image.DecompressionBombWarning)
_TRUNCATION_HINTS: Final = ("truncated", "end of file", "not enough data", "premature end")
_PILLOW_NAMES: Final[Mapping[SourceFormat, str]] = {
    "jpeg": "JPEG",
    "png": "PNG",
    "gif": "GIF",
    "webp": "WebP",
    "heif": "HEIF",
    "avif": "AVIF",
    "bmp": "BMP",
    "tiff": "TIFF",
}

Opener = Callable[[IO[bytes]], ImageFile.ImageFile]


@functools.cache
def _openers() -> Mapping[SourceFormat, Opener]:
    """Each format's decoder, configured once: one decoding thread per image (the worker pool
    is the parallelism), and no HEIF thumbnails, depth maps or auxiliary images.

    Pillow's UserWarnings (a TIFF tag that points past the end of the file, too many entries)
    are about the metadata of untrusted files and are ignored: printed, each distinct message
    would also be remembered in a warnings registry, which hostile files could grow without end.
    """
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
    pi_heif.register_heif_opener(
        decode_threads=1, thumbnails=False, depth_images=False, aux_images=False
    )
    AvifImagePlugin.DEFAULT_MAX_THREADS = 1
    return {
        "jpeg": JpegImagePlugin.JpegImageFile,
        "png": PngImagePlugin.PngImageFile,
        "gif": GifImagePlugin.GifImageFile,
        "webp": WebPImagePlugin.WebPImageFile,
        "heif": pi_heif.HeifImageFile,
        "avif": AvifImagePlugin.AvifImageFile,
        "bmp": BmpImagePlugin.BmpImageFile,
        "tiff": TiffImagePlugin.TiffImageFile,
    }


def open_image(data: bytes, fmt: SourceFormat) -> ImageFile.ImageFile:
    """The format's decoder on ``data``, headers read, no pixel decoded yet."""
    with decoder_errors(fmt, len(data)):
        return _openers()[fmt](io.BytesIO(data))


@contextmanager
def decoder_errors(fmt: SourceFormat, size: int) -> Iterator[None]:
    """Anything a decoder raises, as an InputError raised from it: the pixel bound's errors
    (and running out of memory) as IMAGE_TOO_MANY_PIXELS, data that ends early as
    TRUNCATED_IMAGE, the rest as INVALID_IMAGE_FORMAT."""
    name = _PILLOW_NAMES[fmt]
    try:
        yield
    except InputError:
        raise
    except (*_BOMB_ERRORS, MemoryError) as exc:
        raise InputError(
            Reason.IMAGE_TOO_MANY_PIXELS, f"{name} image is too big to decode: {exc}"
        ) from exc
    except DECODE_ERRORS as exc:
        text = str(exc).lower()
        truncated = any(hint in text for hint in _TRUNCATION_HINTS)
        raise InputError(
            Reason.TRUNCATED_IMAGE if truncated else Reason.INVALID_IMAGE_FORMAT,
            f"{name} data is corrupt or truncated ({size} bytes): {exc}",
        ) from exc


def check_pixels(size: tuple[int, int], limits: DecodeLimits, what: str) -> None:
    """IMAGE_TOO_MANY_PIXELS when ``size`` is over the pixel bound (a pixel flood, a
    decompression bomb, or simply more than this service decodes)."""
    width, height = size
    if width * height > limits.max_pixels:
        raise InputError(
            Reason.IMAGE_TOO_MANY_PIXELS,
            f"{what} is {width}x{height} = {width * height} px; the limit is "
            f"{limits.max_pixels} px (MODERATION_MAX_IMAGE_PIXELS)",
        )


class Deadline:
    """The time limit of one image's normalization, checked between frames and steps."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._end = time.monotonic() + seconds

    def check(self, step: str) -> None:
        if time.monotonic() > self._end:
            raise InputError(
                Reason.DECODE_TIMEOUT,
                f"normalizing the image took more than {self._seconds:g} s "
                f"(MODERATION_DECODE_TIMEOUT_S); stopped before {step}",
            )
