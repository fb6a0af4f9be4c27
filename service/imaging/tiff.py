"""The size of a TIFF's first image, from its first IFD (classic and BigTIFF)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from service.errors import InputError, Reason

_WIDTH: Final = 256
_LENGTH: Final = 257
_TILE_WIDTH: Final = 322
_TILE_LENGTH: Final = 323
_SHORT, _LONG, _LONG8 = 3, 4, 16


@dataclass(frozen=True, slots=True)
class TiffSize:
    width: int
    height: int
    tile_pixels: int  # one tile's pixels (0: the image is in strips)


def read_tiff_size(data: bytes | memoryview, *, complete: bool) -> TiffSize | None:
    """Width, height and tile size of the first image. An IFD beyond the data is TRUNCATED_IMAGE
    (None for a prefix); one without width and length is INVALID_IMAGE_FORMAT."""
    order = "<" if bytes(data[:2]) == b"II" else ">"
    if len(data) < 16:
        return _short(data, complete)
    (version,) = struct.unpack_from(order + "H", data, 2)
    if version == 43:  # BigTIFF: 8-byte offsets and counts, 20-byte entries
        (ifd,) = struct.unpack_from(order + "Q", data, 8)
        count_format, entry_size, value_size = "Q", 20, 8
    else:
        (ifd,) = struct.unpack_from(order + "I", data, 4)
        count_format, entry_size, value_size = "H", 12, 4
    count_size = struct.calcsize(count_format)
    if ifd < 8 or ifd + count_size > len(data):
        if ifd < 8:
            raise InputError(Reason.INVALID_IMAGE_FORMAT, f"TIFF IFD offset {ifd} is invalid")
        return _short(data, complete)
    (entries,) = struct.unpack_from(order + count_format, data, ifd)
    tags: dict[int, int] = {}
    position = ifd + count_size
    for _ in range(min(entries, 4096)):
        if position + entry_size > len(data):
            return _short(data, complete)
        tag, kind = struct.unpack_from(order + "HH", data, position)
        value_at = position + entry_size - value_size
        if tag in (_WIDTH, _LENGTH, _TILE_WIDTH, _TILE_LENGTH):
            if kind == _SHORT:
                (tags[tag],) = struct.unpack_from(order + "H", data, value_at)
            elif kind == _LONG:
                (tags[tag],) = struct.unpack_from(order + "I", data, value_at)
            elif kind == _LONG8 and value_size == 8:
                (tags[tag],) = struct.unpack_from(order + "Q", data, value_at)
        position += entry_size
    width, height = tags.get(_WIDTH, 0), tags.get(_LENGTH, 0)
    if width == 0 or height == 0:
        raise InputError(Reason.INVALID_IMAGE_FORMAT, f"TIFF image is {width}x{height} px")
    return TiffSize(width, height, tags.get(_TILE_WIDTH, 0) * tags.get(_TILE_LENGTH, 0))


def _short(data: bytes | memoryview, complete: bool) -> TiffSize | None:
    """None for a prefix (the IFD lies beyond it); TRUNCATED_IMAGE for a whole file."""
    if not complete:
        return None
    raise InputError(Reason.TRUNCATED_IMAGE, f"TIFF ends before its first IFD ({len(data)} bytes)")
