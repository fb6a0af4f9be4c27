"""The primary image's size in a HEIF or AVIF file (ISO/IEC 23008-12), from its boxes.

The size is the ``ispe`` property associated (``ipma``) with the primary item (``pitm``): for
a grid image that is the whole picture, not one tile. Without associations, the largest
``ispe`` stands in: the bound must never be checked against something smaller than what the
decoder will allocate (the decoders' own sizes are checked again before pixels are decoded).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from service.errors import InputError, Reason


class _Cut(Exception):
    """The data ends inside a box that is needed."""


def _boxes(data: bytes | memoryview, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of each box in ``data[start:end]``; _Cut when a box
    header or body goes beyond ``end``."""
    position = start
    while position + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, position)
        header = 8
        if size == 1:
            if position + 16 > end:
                raise _Cut
            (size,) = struct.unpack_from(">Q", data, position + 8)
            header = 16
        elif size == 0:
            size = end - position
        if size < header:
            raise InputError(Reason.INVALID_IMAGE_FORMAT, f"ISO-BMFF box size {size} is invalid")
        if position + size > end:
            raise _Cut
        yield kind, position + header, position + size
        position += size
    if position != end:
        raise _Cut


def read_primary_size(data: bytes | memoryview, *, complete: bool) -> tuple[int, int] | None:
    """(width, height) of the primary image. A complete file must hold every top-level box
    whole (TRUNCATED_IMAGE otherwise); a prefix returns None when ``meta`` is not all in it
    (a large ``mdat`` may come first)."""
    meta: tuple[int, int] | None = None
    try:
        for kind, start, end in _boxes(data, 0, len(data)):
            if kind == b"meta":
                meta = (start + 4, end)  # a full box: version and flags first
    except _Cut:
        if complete:
            raise InputError(
                Reason.TRUNCATED_IMAGE, f"HEIF/AVIF data ends inside a box ({len(data)} bytes)"
            ) from None
        if meta is None:
            return None
    if meta is None:
        if not complete:  # the prefix ends between boxes, before meta
            return None
        raise InputError(Reason.INVALID_IMAGE_FORMAT, "HEIF/AVIF file has no meta box")
    try:
        return _primary_size(data, *meta)
    except (_Cut, struct.error, IndexError):
        raise InputError(Reason.INVALID_IMAGE_FORMAT, "HEIF/AVIF meta box is malformed") from None


def _primary_size(  # noqa: PLR0912  # one pass over the meta box
    data: bytes | memoryview, start: int, end: int
) -> tuple[int, int]:
    primary: int | None = None
    sizes: list[tuple[int, int]] = []  # each ipco property, in order (non-ispe: (0, 0))
    associations: dict[int, list[int]] = {}
    for kind, child, child_end in _boxes(data, start, end):
        if kind == b"pitm":
            version = data[child]
            fmt = ">H" if version == 0 else ">I"
            (primary,) = struct.unpack_from(fmt, data, child + 4)
        elif kind == b"iprp":
            for sub, sub_start, sub_end in _boxes(data, child, child_end):
                if sub == b"ipco":
                    for prop, prop_start, prop_end in _boxes(data, sub_start, sub_end):
                        if prop == b"ispe" and prop_end - prop_start >= 12:
                            sizes.append(struct.unpack_from(">II", data, prop_start + 4))
                        else:
                            sizes.append((0, 0))
                elif sub == b"ipma":
                    associations.update(_associations(data, sub_start))
    for index in associations.get(primary, []) if primary is not None else []:
        if 0 < index <= len(sizes) and sizes[index - 1] != (0, 0):
            width, height = sizes[index - 1]
            break
    else:
        if not any(sizes):
            raise InputError(Reason.INVALID_IMAGE_FORMAT, "HEIF/AVIF has no image size (ispe)")
        width, height = max(sizes, key=lambda size: size[0] * size[1])
    if width == 0 or height == 0:
        raise InputError(Reason.INVALID_IMAGE_FORMAT, f"HEIF/AVIF image is {width}x{height} px")
    return width, height


def _associations(data: bytes | memoryview, start: int) -> dict[int, list[int]]:
    """ipma: item id -> its property indices (1-based into ipco)."""
    version = data[start]
    wide_index = data[start + 3] & 1
    (entries,) = struct.unpack_from(">I", data, start + 4)
    position = start + 8
    found: dict[int, list[int]] = {}
    for _ in range(min(entries, 65536)):
        if version < 1:
            (item,) = struct.unpack_from(">H", data, position)
            position += 2
        else:
            (item,) = struct.unpack_from(">I", data, position)
            position += 4
        count = data[position]
        position += 1
        indices: list[int] = []
        for _ in range(count):
            if wide_index:
                (value,) = struct.unpack_from(">H", data, position)
                indices.append(value & 0x7FFF)
                position += 2
            else:
                indices.append(data[position] & 0x7F)
                position += 1
        found[item] = indices
    return found
