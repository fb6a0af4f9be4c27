"""PNG structure read before decoding: the IHDR, whether it is an APNG, and proof that the
pixel data is all there (a zlib stream that ends early decodes to black rows without an error)."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Final

from service.errors import InputError, Reason

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_CHANNELS: Final = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
_BIT_DEPTHS: Final = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
# Adam7 passes: (x offset, y offset, x step, y step).
_ADAM7: Final = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2))
_ADAM7_LAST: Final = (0, 1, 1, 2)
# Chunks that change the pixels (palette, transparency) or their orientation (EXIF). Everything
# else (text, ICC profiles, animation) is dropped before decoding a still: it cannot cost memory.
_KEPT: Final = frozenset({b"PLTE", b"tRNS", b"eXIf"})
_INFLATE_INPUT: Final = 16 * 1024  # input slice per step: the unconsumed tail stays small
_INFLATE_OUTPUT: Final = 256 * 1024  # output per step, discarded at once
_IEND: Final = b"\x00\x00\x00\x00IEND\xae\x42\x60\x82"


@dataclass(frozen=True, slots=True)
class PngHeader:
    """IHDR: the size and sample layout the IDAT stream must fill."""

    width: int
    height: int
    bit_depth: int
    colour_type: int
    interlaced: bool

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def scanline_bytes(self) -> int:
        """Bytes the IDAT stream must inflate to: each row is a filter byte and its samples."""
        bits = _CHANNELS[self.colour_type] * self.bit_depth
        if not self.interlaced:
            return self.height * (1 + (self.width * bits + 7) // 8)
        total = 0
        for x0, y0, dx, dy in (*_ADAM7, _ADAM7_LAST):
            columns = (self.width - x0 + dx - 1) // dx if self.width > x0 else 0
            rows = (self.height - y0 + dy - 1) // dy if self.height > y0 else 0
            if columns and rows:
                total += rows * (1 + (columns * bits + 7) // 8)
        return total


def read_png_header(data: bytes | memoryview) -> PngHeader:
    """The IHDR of a PNG (magic already checked): 33 bytes read, nothing allocated."""
    if len(data) < 33:
        raise InputError(Reason.TRUNCATED_IMAGE, f"PNG ends in its header ({len(data)} bytes)")
    length, kind = struct.unpack_from(">I4s", data, 8)
    if kind != b"IHDR" or length != 13:
        raise InputError(Reason.INVALID_IMAGE_FORMAT, "PNG does not start with an IHDR chunk")
    width, height, depth, colour, _, _, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    if depth not in _BIT_DEPTHS.get(colour, ()) or interlace > 1:
        raise InputError(
            Reason.INVALID_IMAGE_FORMAT,
            f"PNG colour type {colour}, bit depth {depth}, interlace {interlace} is not valid",
        )
    if width == 0 or height == 0:
        raise InputError(Reason.INVALID_IMAGE_FORMAT, f"PNG is {width}x{height} px")
    return PngHeader(width, height, depth, colour, interlace == 1)


def png_animated(data: bytes | memoryview, *, complete: bool) -> bool | None:
    """Whether the PNG is an APNG of more than one frame: an ``acTL`` chunk must come before the
    first IDAT. Only chunk headers are read. A complete file must reach IEND (TRUNCATED_IMAGE
    otherwise); on a prefix the answer is None when the first IDAT lies beyond it."""
    position, frames = 33, 0
    seen_idat = False
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        end = position + 12 + length
        if length > 0x7FFFFFFF:
            raise InputError(Reason.INVALID_IMAGE_FORMAT, f"PNG chunk length {length} is invalid")
        if kind == b"acTL" and not seen_idat and length >= 8 and end <= len(data):
            (frames,) = struct.unpack_from(">I", data, position + 8)
        elif kind == b"IDAT":
            seen_idat = True
            if not complete:
                return frames > 1
        elif kind == b"IEND" and end <= len(data):
            if not seen_idat:
                raise InputError(Reason.INVALID_IMAGE_FORMAT, "PNG has no IDAT chunk")
            return frames > 1
        position = end
    if complete:
        raise InputError(
            Reason.TRUNCATED_IMAGE, f"PNG file ends before its IEND chunk ({len(data)} bytes)"
        )
    return None


def png_exif(data: bytes | memoryview) -> bytes | None:
    """The payload of the first ``eXIf`` chunk, before or after the image data; chunk headers
    only are read (None when there is none, or the file ends first)."""
    position = 33
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        end = position + 12 + length
        if length > 0x7FFFFFFF or end > len(data) or kind == b"IEND":
            return None
        if kind == b"eXIf":
            return bytes(data[position + 8 : end - 4])
        position = end
    return None


def minimal_png(data: bytes, header: PngHeader) -> bytes:
    """The PNG reduced to what the decoder needs, after checking its pixel data is complete.

    Kept: IHDR, PLTE, tRNS, eXIf and the first run of IDAT chunks, byte for byte (CRCs and all);
    dropped: text, ICC profiles, APNG frames and everything else, so a decoder sees one frame and
    no compressed metadata. The IDAT stream is inflated once, in small steps whose output is
    thrown away, to prove it yields every scanline: a file cut short, or a zlib stream that ends
    before the last row (decoders fill the rest with zeros and say nothing), is TRUNCATED_IMAGE;
    a broken stream is INVALID_IMAGE_FORMAT. Memory: one copy of the kept chunks.
    """
    kept: list[memoryview] = []
    idat: list[memoryview] = []
    view = memoryview(data)
    position, idat_over, ended = 33, False, False
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        end = position + 12 + length
        if length > 0x7FFFFFFF or end > len(data):
            break  # a chunk cut off: the file is truncated
        if kind == b"IDAT":
            if not idat_over:
                idat.append(view[position:end])
        elif kind == b"IEND":
            ended = True
            break
        else:
            idat_over = idat_over or bool(idat)
            if kind in _KEPT:
                kept.append(view[position:end])
        position = end
    if not ended:
        raise InputError(
            Reason.TRUNCATED_IMAGE, f"PNG file ends before its IEND chunk ({len(data)} bytes)"
        )
    check_scanlines(idat, header)
    return b"".join([view[:33], *kept, *idat, _IEND])


def check_scanlines(idat: list[memoryview], header: PngHeader) -> None:
    """TRUNCATED_IMAGE unless the IDAT chunks' zlib stream yields every scanline."""
    needed = header.scanline_bytes()
    produced = _inflated_size(idat, needed)
    if produced < needed:
        raise InputError(
            Reason.TRUNCATED_IMAGE,
            f"PNG pixel data ends early: {produced} of {needed} bytes of scanlines "
            f"({header.width}x{header.height})",
        )


def _inflated_size(chunks: list[memoryview], needed: int) -> int:
    """How many bytes the IDAT chunks' zlib stream inflates to, counting no further than
    ``needed``; nothing is kept, so a bomb costs CPU time bounded by ``needed``, not memory."""
    inflater = zlib.decompressobj()
    produced = 0
    try:
        for chunk in chunks:
            payload = chunk[8:-4]
            for start in range(0, len(payload), _INFLATE_INPUT):
                pending: bytes | memoryview = payload[start : start + _INFLATE_INPUT]
                while pending and produced < needed and not inflater.eof:
                    limit = min(_INFLATE_OUTPUT, needed - produced)
                    produced += len(inflater.decompress(pending, limit))
                    pending = inflater.unconsumed_tail
                if produced >= needed or inflater.eof:
                    return produced
    except zlib.error as exc:
        raise InputError(
            Reason.INVALID_IMAGE_FORMAT, f"PNG pixel data is not a valid zlib stream: {exc}"
        ) from exc
    return produced
