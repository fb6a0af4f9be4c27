"""Sizes and frame counts read from headers, before any pixel is decoded."""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from service.errors import InputError, Reason
from service.imaging.formats import SourceFormat, sniff_format
from service.imaging.gif import scan_gif
from service.imaging.isobmff import read_primary_size
from service.imaging.jpeg import read_jpeg_header
from service.imaging.png import png_animated, read_png_header
from service.imaging.tiff import read_tiff_size

_PREVIEW_BYTES: Final = 8


@dataclass(frozen=True, slots=True)
class ImageHeader:
    format: SourceFormat
    width: int  # as stored (before EXIF orientation)
    height: int
    animated: bool | None  # None: not known from the bytes read
    # 8-bit grey or YCbCr/RGB samples, which every JPEG/PNG reader takes. False for a CMYK/YCCK
    # JPEG and a 16-bit PNG: legal, but Rekognition documents neither, so they are converted.
    plain_samples: bool = True
    frames: int | None = None  # counted from the headers of a whole GIF (None: not counted)


def read_header(data: bytes | memoryview, *, complete: bool = True) -> ImageHeader | None:
    """The header of a supported image; InputError (NOT_AN_IMAGE, INVALID_IMAGE_FORMAT,
    TRUNCATED_IMAGE) when ``data`` is not one. ``complete=False``: ``data`` is only the first
    bytes of a larger object (an S3 range read); returns None when the dimensions lie beyond
    them, and never reports truncation."""
    fmt = sniff_format(data)
    if fmt is None:
        raise not_an_image(data)
    try:
        return _READERS[fmt](data, complete)
    except struct.error as exc:  # a reader looked past the end: only on a short header
        if not complete:
            return None
        raise InputError(
            Reason.TRUNCATED_IMAGE, f"{fmt.upper()} ends in its header ({len(data)} bytes)"
        ) from exc


def not_an_image(data: bytes | memoryview) -> InputError:
    """NOT_AN_IMAGE, showing the size and the first bytes (never more: it may be anything)."""
    preview = bytes(data[:_PREVIEW_BYTES]).hex(" ")
    return InputError(
        Reason.NOT_AN_IMAGE,
        f"not an image of a supported format ({len(data)} bytes, starting with {preview})",
    )


def _jpeg(data: bytes | memoryview, complete: bool) -> ImageHeader | None:
    jpeg = read_jpeg_header(data, complete=complete)
    if jpeg is None:
        return None
    plain = len(jpeg.sampling) in (1, 3)
    return ImageHeader("jpeg", jpeg.width, jpeg.height, False, plain_samples=plain)


def _png(data: bytes | memoryview, complete: bool) -> ImageHeader | None:
    if len(data) < 33 and not complete:
        return None
    png = read_png_header(data)
    animated = png_animated(data, complete=complete)
    return ImageHeader("png", png.width, png.height, animated, plain_samples=png.bit_depth <= 8)


def _gif(data: bytes | memoryview, complete: bool) -> ImageHeader | None:
    scan = scan_gif(data, complete=complete)
    if scan is None:
        return None
    animated = scan.frames > 1 if scan.ended or complete else (True if scan.frames > 1 else None)
    frames = scan.frames if complete else None
    return ImageHeader("gif", scan.width, scan.height, animated, frames=frames)


def _webp(data: bytes | memoryview, complete: bool) -> ImageHeader | None:
    """The first chunk says it all: VP8 (lossy) and VP8L (lossless) hold one still frame and
    its size; VP8X holds the canvas size and whether the file is animated."""
    (riff_size,) = struct.unpack_from("<I", data, 4)
    if complete and len(data) < riff_size + 8:
        raise InputError(
            Reason.TRUNCATED_IMAGE,
            f"WebP is {len(data)} bytes, its RIFF header says {riff_size + 8}",
        )
    if len(data) < 30:
        if not complete:
            return None
        raise InputError(Reason.TRUNCATED_IMAGE, f"WebP ends in its header ({len(data)} bytes)")
    kind = bytes(data[12:16])
    payload = 20
    if kind == b"VP8 ":
        if bytes(data[payload + 3 : payload + 6]) != b"\x9d\x01\x2a":
            raise InputError(Reason.INVALID_IMAGE_FORMAT, "WebP VP8 frame has no start code")
        width, height = struct.unpack_from("<HH", data, payload + 6)
        return _webp_header(width & 0x3FFF, height & 0x3FFF, False)
    if kind == b"VP8L":
        if data[payload] != 0x2F:
            raise InputError(Reason.INVALID_IMAGE_FORMAT, "WebP VP8L frame has no signature")
        (bits,) = struct.unpack_from("<I", data, payload + 1)
        return _webp_header((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, False)
    if kind == b"VP8X":
        flags = data[payload]
        width = 1 + int.from_bytes(data[payload + 4 : payload + 7], "little")
        height = 1 + int.from_bytes(data[payload + 7 : payload + 10], "little")
        return _webp_header(width, height, bool(flags & 0x02))
    raise InputError(Reason.INVALID_IMAGE_FORMAT, f"WebP starts with an unknown chunk {kind!r}")


def _webp_header(width: int, height: int, animated: bool) -> ImageHeader:
    if width == 0 or height == 0:
        raise InputError(Reason.INVALID_IMAGE_FORMAT, f"WebP is {width}x{height} px")
    return ImageHeader("webp", width, height, animated)


def _bmp(data: bytes | memoryview, complete: bool) -> ImageHeader | None:
    """BITMAPCOREHEADER (16-bit sides) or one of its successors (signed 32-bit sides; a negative
    height means top-down rows). Uncompressed pixel arrays must fit in the file."""
    (offset, dib_size) = struct.unpack_from("<II", data, 10)
    if dib_size == 12:
        width, height, _, bits = struct.unpack_from("<HHHH", data, 18)
        compression = 0
    else:
        width, height, _, bits = struct.unpack_from("<iiHH", data, 18)
        compression = struct.unpack_from("<I", data, 30)[0] if dib_size >= 20 else 0
        height = abs(height)
    if width <= 0 or height == 0 or bits not in (1, 2, 4, 8, 16, 24, 32):
        raise InputError(
            Reason.INVALID_IMAGE_FORMAT, f"BMP of {width}x{height} px at {bits} bits is invalid"
        )
    if complete and compression in (0, 3, 6):  # BI_RGB, BI_BITFIELDS, BI_ALPHABITFIELDS
        row = (width * bits + 31) // 32 * 4
        if offset + row * height > len(data):
            raise InputError(
                Reason.TRUNCATED_IMAGE,
                f"BMP pixel data ends early ({len(data)} bytes for {width}x{height} px)",
            )
    return ImageHeader("bmp", width, height, False)


def _tiff(data: bytes | memoryview, complete: bool) -> ImageHeader | None:
    size = read_tiff_size(data, complete=complete)
    return None if size is None else ImageHeader("tiff", size.width, size.height, False)


def _iso_bmff(fmt: SourceFormat) -> Callable[[bytes | memoryview, bool], ImageHeader | None]:
    def read(data: bytes | memoryview, complete: bool) -> ImageHeader | None:
        size = read_primary_size(data, complete=complete)
        # HEIF sequences are analysed by their primary image only; AVIF sequences are animated.
        animated = fmt == "avif" and b"avis" in bytes(data[8:64])
        return None if size is None else ImageHeader(fmt, *size, animated)

    return read


_READERS: Final[Mapping[SourceFormat, Callable[[bytes | memoryview, bool], ImageHeader | None]]] = {
    "jpeg": _jpeg,
    "png": _png,
    "gif": _gif,
    "webp": _webp,
    "bmp": _bmp,
    "tiff": _tiff,
    "heif": _iso_bmff("heif"),
    "avif": _iso_bmff("avif"),
}
