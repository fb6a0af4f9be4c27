"""GIF block structure, walked without decoding: frame count and the canvas Pillow will use.

Pillow grows a GIF's canvas to cover any frame that extends past the logical screen, so the
pixel bound must hold for the largest extent of any frame, not the screen the header declares.
Counting frames here (one pass over block lengths, runs of full sub-blocks skipped a slice at a
time) also spares Pillow's ``n_frames``, which would walk the same blocks through its file
object one sub-block at a time.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from service.errors import InputError, Reason

_RUN: Final = 256  # full sub-blocks checked per slice (64 KiB of image data: a typical frame)


@dataclass(frozen=True, slots=True)
class GifScan:
    width: int  # the canvas: the logical screen grown to every frame's extent
    height: int
    frames: int  # complete image descriptors found
    ended: bool  # the walk reached the trailer (or a byte that is no block: decoders stop)


def scan_gif(  # noqa: PLR0912  # one walk over the blocks
    data: bytes | memoryview, *, complete: bool
) -> GifScan | None:
    """Walk a GIF's blocks. A complete file that ends inside a block is TRUNCATED_IMAGE (one
    that only lacks its trailer is accepted, as browsers do); one without a frame is
    INVALID_IMAGE_FORMAT. On a prefix (``complete=False``) the walk stops where the data does;
    None when even the logical screen descriptor is not in it."""
    if len(data) < 13:
        if not complete:
            return None
        raise InputError(Reason.TRUNCATED_IMAGE, f"GIF ends in its header ({len(data)} bytes)")
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames, ended, cut = 0, False, False
    size = len(data)
    while True:
        if position >= size:
            break
        introducer = data[position]
        if introducer == 0x21:  # extension: label, then data sub-blocks
            end = _skip_sub_blocks(data, position + 2)
        elif introducer == 0x2C:  # image descriptor, local colour table, LZW code size, data
            if position + 10 > size:
                cut = True
                break
            left, top, frame_width, frame_height, frame_flags = struct.unpack_from(
                "<HHHHB", data, position + 1
            )
            start = position + 10
            if frame_flags & 0x80:
                start += 3 << ((frame_flags & 7) + 1)
            end = _skip_sub_blocks(data, start + 1)
            if end >= 0:
                frames += 1
                width = max(width, left + frame_width)
                height = max(height, top + frame_height)
        else:  # the trailer (0x3B), or bytes no decoder reads as a block
            ended = True
            break
        if end < 0:
            cut = True
            break
        position = end
    if not complete:
        return GifScan(width, height, frames, ended)
    if cut:
        raise InputError(
            Reason.TRUNCATED_IMAGE, f"GIF data ends inside a block ({len(data)} bytes)"
        )
    if frames == 0:
        raise InputError(Reason.INVALID_IMAGE_FORMAT, "GIF has no image")
    if width == 0 or height == 0:
        raise InputError(Reason.INVALID_IMAGE_FORMAT, f"GIF is {width}x{height} px")
    return GifScan(width, height, frames, ended)


def _skip_sub_blocks(data: bytes | memoryview, position: int) -> int:
    """The offset after a chain of data sub-blocks (each a length byte, then that many bytes,
    until a zero length); -1 when the data ends first.

    Encoders write image data in full 255-byte sub-blocks, so the length bytes of a run of them
    sit 256 bytes apart: one strided slice reads up to ``_RUN`` of them at C speed, and only the
    sub-blocks that break a run are stepped over one at a time.
    """
    size = len(data)
    while position < size:
        lengths = bytes(data[position : position + 256 * _RUN : 256])
        full = len(lengths) - len(lengths.lstrip(b"\xff"))
        if full:
            position += 256 * full
            continue
        length = data[position]
        position += 1 + length
        if length == 0:
            return position
    return -1
