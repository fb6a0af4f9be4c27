"""JPEG structure read before decoding: the frame size and sampling, whether the image comes in
several scans (libjpeg then holds every DCT coefficient), and that the file is not cut short.

Only the marker segments up to the first scan are walked, and the end-of-image marker is looked
for from the end of the file: the entropy-coded data (megabytes for a phone photo) is never read
in Python.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass
from typing import Final, Literal, overload

from service.errors import InputError, Reason

_SOF_MARKERS: Final = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB})
_PROGRESSIVE_SOF: Final = frozenset({0xC2, 0xC6, 0xCA})
_STANDALONE: Final = frozenset({0x01, *range(0xD0, 0xD8)})


@dataclass(frozen=True, slots=True)
class JpegHeader:
    """The frame header (SOF) and what the entropy-coded data looks like."""

    width: int
    height: int
    sampling: tuple[tuple[int, int], ...]  # (horizontal, vertical) factor of each component
    progressive: bool
    multiple_scans: bool  # progressive, or a sequential file whose first scan lacks components

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def coefficient_bytes(self) -> int:
        """What libjpeg holds for a progressive or multi-scan file: every component's DCT
        coefficients at full resolution, 2 bytes each (64 per 8x8 block, padded to the MCU).
        Single-scan baseline files are decoded a row of blocks at a time and need none of it."""
        if not self.multiple_scans:
            return 0
        h_max = max(h for h, _ in self.sampling)
        v_max = max(v for _, v in self.sampling)
        total = 0
        for h, v in self.sampling:
            blocks_wide = _ceil_div(_ceil_div(self.width * h, h_max), 8)
            blocks_high = _ceil_div(_ceil_div(self.height * v, v_max), 8)
            total += _ceil_div(blocks_wide, h) * h * _ceil_div(blocks_high, v) * v * 128
        return total


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _jpeg_frame(segment: bytes | memoryview, marker: int) -> JpegHeader:
    """A SOF segment (from its length field): size, and each component's sampling factors."""
    if len(segment) < 8 or len(segment) < 8 + 3 * segment[7] or segment[7] == 0:
        raise InputError(Reason.INVALID_IMAGE_FORMAT, "JPEG frame header is malformed")
    height, width, count = struct.unpack_from(">HHB", segment, 3)
    sampling = tuple((segment[9 + 3 * i] >> 4, segment[9 + 3 * i] & 0x0F) for i in range(count))
    if any(not 1 <= h <= 4 or not 1 <= v <= 4 for h, v in sampling):
        raise InputError(Reason.INVALID_IMAGE_FORMAT, "JPEG sampling factors are invalid")
    if width == 0 or height == 0:
        # A zero height means "defined by a DNL marker later": no decoder we use supports it.
        raise InputError(Reason.INVALID_IMAGE_FORMAT, f"JPEG frame is {width}x{height} px")
    progressive = marker in _PROGRESSIVE_SOF
    return JpegHeader(width, height, sampling, progressive, multiple_scans=progressive)


@overload
def read_jpeg_header(data: bytes | memoryview, *, complete: Literal[True] = True) -> JpegHeader: ...
@overload
def read_jpeg_header(data: bytes | memoryview, *, complete: bool) -> JpegHeader | None: ...
def read_jpeg_header(  # noqa: PLR0912  # one walk over the marker segments
    data: bytes | memoryview, *, complete: bool = True
) -> JpegHeader | None:
    """Walk the JPEG's marker segments to the first scan: the frame size and sampling, whether it
    is progressive, and whether there are several scans (libjpeg's rule: progressive, or a first
    scan with fewer components than the frame). A file that ends before a scan starts, or has no
    end-of-image marker after it, is TRUNCATED_IMAGE (an ``FF D9`` pair cannot occur inside
    entropy-coded data, which stuffs every ``FF`` byte). ``complete=False``: ``data`` is a
    prefix; None when the frame header lies beyond it, and the frame header alone decides
    ``multiple_scans`` (its size is what a prefix is read for)."""
    position = 2
    frame: JpegHeader | None = None
    while True:
        while position < len(data) and data[position] == 0xFF:
            position += 1  # fill bytes before a marker
        if position + 1 > len(data):
            if not complete:
                return None
            raise InputError(
                Reason.TRUNCATED_IMAGE, f"JPEG ends before its first scan ({len(data)} bytes)"
            )
        marker = data[position]
        if data[position - 1] != 0xFF or marker == 0xD9:
            raise InputError(Reason.INVALID_IMAGE_FORMAT, f"JPEG marker expected at {position}")
        position += 1
        if marker in _STANDALONE:
            continue
        if position + 2 > len(data):
            if not complete:
                return None
            raise InputError(
                Reason.TRUNCATED_IMAGE, f"JPEG ends inside a header segment ({len(data)} bytes)"
            )
        (length,) = struct.unpack_from(">H", data, position)
        if length < 2:
            raise InputError(
                Reason.INVALID_IMAGE_FORMAT, f"JPEG segment length {length} is invalid"
            )
        if position + length > len(data):
            if not complete:
                return None
            raise InputError(
                Reason.TRUNCATED_IMAGE, f"JPEG ends inside a header segment ({len(data)} bytes)"
            )
        if marker in _SOF_MARKERS and frame is None:
            frame = _jpeg_frame(data[position : position + length], marker)
            if not complete:
                break
        if marker == 0xDA:
            if frame is not None and length >= 3:
                in_scan = data[position + 2]
                frame = dataclasses.replace(
                    frame, multiple_scans=frame.progressive or in_scan < len(frame.sampling)
                )
            break
        position += length
    if frame is None:
        raise InputError(Reason.INVALID_IMAGE_FORMAT, "JPEG has no frame header before its scan")
    if not complete:
        return frame
    raw = data if isinstance(data, bytes) else bytes(data)
    if raw.rfind(b"\xff\xd9", position) < 0:  # from the end: found at once in a whole file
        raise InputError(
            Reason.TRUNCATED_IMAGE,
            f"JPEG data ends before its end-of-image marker ({len(data)} bytes)",
        )
    return frame
