"""Image formats by magic bytes: the content type and the file name are never trusted."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Final, Literal

SourceFormat = Literal["jpeg", "png", "webp", "gif", "heif", "avif", "bmp", "tiff"]
SUPPORTED_FORMATS: Final[tuple[SourceFormat, ...]] = (
    "jpeg",
    "png",
    "webp",
    "gif",
    "heif",
    "avif",
    "bmp",
    "tiff",
)
BackendFormat = Literal["jpeg", "png"]  # what Rekognition's image API reads

CONTENT_TYPES: Final[Mapping[SourceFormat, str]] = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "heif": "image/heif",
    "avif": "image/avif",
    "bmp": "image/bmp",
    "tiff": "image/tiff",
}

_TIFF_MAGIC: Final = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic, then BigTIFF
# BITMAPCOREHEADER, BITMAPINFOHEADER, the V2/V3 variants, OS/2 2.x (16 and 64), V4, V5.
_BMP_DIB_SIZES: Final = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
# ISO-BMFF brands (ISO/IEC 23008-12, AV1 image file format): still images and sequences.
_AVIF_BRANDS: Final = frozenset({b"avif", b"avis"})
_HEIF_BRANDS: Final = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis"})
_GENERIC_HEIF_BRANDS: Final = frozenset({b"mif1", b"msf1"})  # any codec: decided by the rest


def sniff_format(  # noqa: PLR0911  # one return per magic number
    data: bytes | memoryview,
) -> SourceFormat | None:
    """The format ``data`` starts like, or None. Needs the first 32 bytes in practice: an
    ISO-BMFF ``ftyp`` box's brands (all of them that ``data`` holds) decide HEIF against AVIF."""
    head = bytes(data[:32])
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(_TIFF_MAGIC):
        return "tiff"
    if head.startswith(b"BM") and len(head) >= 18:
        (dib_size,) = struct.unpack_from("<I", head, 14)
        return "bmp" if dib_size in _BMP_DIB_SIZES else None
    if head[4:8] == b"ftyp":
        return _iso_bmff_format(data)
    return None


def _iso_bmff_format(data: bytes | memoryview) -> SourceFormat | None:
    """AVIF when an AV1 brand is the major or a compatible one; HEIF for the HEVC brands and for
    the codec-neutral ``mif1``/``msf1``; None for other ISO-BMFF files (MP4, QuickTime)."""
    if len(data) < 16:
        return None
    (size,) = struct.unpack_from(">I", data, 0)
    end = min(len(data), size) if size >= 16 else 16
    brands = {bytes(data[8:12])}
    brands.update(bytes(data[offset : offset + 4]) for offset in range(16, end - 3, 4))
    if brands & _AVIF_BRANDS:
        return "avif"
    if brands & (_HEIF_BRANDS | _GENERIC_HEIF_BRANDS):
        return "heif"
    return None
