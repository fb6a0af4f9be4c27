"""Image payload checks shared by every input path (inline base64, URL download).

Pure functions, no I/O. Rekognition only accepts JPEG and PNG up to 5 MiB as inline bytes, so
anything else is refused here as a permanent :class:`~service.errors.InputError` instead of
costing a backend call. Error messages describe what was found (sizes, the first few bytes as
hex) and never echo the payload itself.
"""

from __future__ import annotations

import base64
import struct
import zlib
from dataclasses import dataclass
from typing import Final, Literal

from service.errors import InputError, Reason

ImageFormat = Literal["jpeg", "png"]

MAX_IMAGE_BYTES: Final = 5 * 1024 * 1024
"""Rekognition's limit for images passed inline as bytes."""

_PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC: Final = b"\xff\xd8\xff"
_PREVIEW_BYTES: Final = 8

# Whitespace tolerated inside base64 text: line-wrapped output (the ``base64`` tool wraps at 76
# columns, MIME at 76, PEM at 64) is common and unambiguous. Only ASCII whitespace: anything else
# is not base64 and is refused rather than silently dropped.
_BASE64_WHITESPACE: Final = str.maketrans("", "", " \t\r\n")


def sniff_format(data: bytes) -> ImageFormat | None:
    """Return the image format from the magic bytes, or None: the content type is never trusted."""
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    return None


def check_image(data: bytes, max_bytes: int = MAX_IMAGE_BYTES) -> ImageFormat:
    """Return the format of ``data``; raise :class:`InputError` if the backend would refuse it."""
    size = len(data)
    if size > max_bytes:
        raise InputError(
            Reason.IMAGE_TOO_LARGE, f"image is {size} bytes, more than the limit of {max_bytes}"
        )
    if size == 0:
        raise InputError(Reason.NOT_AN_IMAGE, "image is empty (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        preview = data[:_PREVIEW_BYTES].hex(" ")
        raise InputError(
            Reason.NOT_AN_IMAGE,
            f"not a JPEG or PNG image ({size} bytes, starting with {preview})",
        )
    return fmt


def decode_base64_image(text: str, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """Decode standard (RFC 4648 section 4, padded) base64 text into checked image bytes.

    ASCII whitespace (space, tab, CR, LF) anywhere in ``text`` is ignored, so line-wrapped
    base64 is accepted; every other character outside the standard alphabet, the URL-safe
    alphabet (``-``/``_``), missing padding and ``data:`` URL prefixes are refused as
    ``INVALID_BASE64``. The size implied by the encoded length is checked before decoding, so
    an oversized payload costs no decoded copy.
    """
    compact = text.translate(_BASE64_WHITESPACE)
    padding = len(compact) - len(compact.rstrip("="))
    implied = len(compact) * 3 // 4 - min(padding, 2)
    if implied > max_bytes:
        raise InputError(
            Reason.IMAGE_TOO_LARGE,
            f"base64 text of {len(compact)} characters decodes to about {implied} bytes, "
            f"more than the limit of {max_bytes}",
        )
    try:
        data = base64.b64decode(compact, validate=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII characters in a str
        raise InputError(
            Reason.INVALID_BASE64, f"not valid base64 ({len(compact)} characters): {exc}"
        ) from exc
    check_image(data, max_bytes)
    return data


# -- headers and structure, read before any pixel is decoded -----------------------------------
#
# Only the local backend decodes pixels (Rekognition refuses bad images itself, so the Rekognition
# path never calls these). They read dimensions and check that the pixel data is all there, so the
# decoder is only ever given an image whose size is known and whose data is complete.

_PNG_CHANNELS: Final = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
_PNG_BIT_DEPTHS: Final = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
# Adam7 passes: (x offset, y offset, x step, y step).
_ADAM7: Final = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2))
_ADAM7_LAST: Final = (0, 1, 1, 2)
# Chunks that change the pixels (palette, transparency) or their orientation (EXIF). Everything
# else (text, ICC profiles, animation) is dropped before decoding: it cannot cost memory then.
_PNG_KEPT: Final = frozenset({b"PLTE", b"tRNS", b"eXIf"})
_INFLATE_INPUT: Final = 16 * 1024  # input slice per step: the unconsumed tail stays small
_INFLATE_OUTPUT: Final = 256 * 1024  # output per step, discarded at once


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
        bits = _PNG_CHANNELS[self.colour_type] * self.bit_depth
        if not self.interlaced:
            return self.height * (1 + (self.width * bits + 7) // 8)
        total = 0
        for x0, y0, dx, dy in (*_ADAM7, _ADAM7_LAST):
            columns = (self.width - x0 + dx - 1) // dx if self.width > x0 else 0
            rows = (self.height - y0 + dy - 1) // dy if self.height > y0 else 0
            if columns and rows:
                total += rows * (1 + (columns * bits + 7) // 8)
        return total


def read_png_header(data: bytes) -> PngHeader:
    """The IHDR of a PNG (magic already checked): 33 bytes read, nothing allocated."""
    if len(data) < 33:
        raise InputError(Reason.TRUNCATED_IMAGE, f"PNG ends in its header ({len(data)} bytes)")
    length, kind = struct.unpack_from(">I4s", data, 8)
    if kind != b"IHDR" or length != 13:
        raise InputError(Reason.INVALID_IMAGE_FORMAT, "PNG does not start with an IHDR chunk")
    width, height, depth, colour, _, _, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    if depth not in _PNG_BIT_DEPTHS.get(colour, ()) or interlace > 1:
        raise InputError(
            Reason.INVALID_IMAGE_FORMAT,
            f"PNG colour type {colour}, bit depth {depth}, interlace {interlace} is not valid",
        )
    return PngHeader(width, height, depth, colour, interlace == 1)


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
            if kind in _PNG_KEPT:
                kept.append(view[position:end])
        position = end
    if not ended:
        raise InputError(
            Reason.TRUNCATED_IMAGE, f"PNG file ends before its IEND chunk ({len(data)} bytes)"
        )
    needed = header.scanline_bytes()
    produced = _inflated_size(idat, needed)
    if produced < needed:
        raise InputError(
            Reason.TRUNCATED_IMAGE,
            f"PNG pixel data ends early: {produced} of {needed} bytes of scanlines "
            f"({header.width}x{header.height})",
        )
    iend = b"\x00\x00\x00\x00IEND\xae\x42\x60\x82"
    return b"".join([view[:33], *kept, *idat, iend])


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


@dataclass(frozen=True, slots=True)
class JpegHeader:
    """The frame header (SOF) and what the entropy-coded data looks like."""

    width: int
    height: int
    sampling: tuple[tuple[int, int], ...]  # (horizontal, vertical) factor of each component
    progressive: bool
    scans: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def coefficient_bytes(self) -> int:
        """What libjpeg holds for a progressive or multi-scan file: every component's DCT
        coefficients at full resolution, 2 bytes each (64 per 8x8 block, padded to the MCU).
        Single-scan baseline files are decoded a row of blocks at a time and need none of it."""
        if not self.progressive and self.scans <= 1:
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


_SOF_MARKERS: Final = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB})
_PROGRESSIVE_SOF: Final = frozenset({0xC2, 0xC6, 0xCA})
_STANDALONE: Final = frozenset({0x01, *range(0xD0, 0xD8)})


def _jpeg_frame(segment: bytes, marker: int) -> JpegHeader:
    """A SOF segment (from its length field): size, and each component's sampling factors."""
    if len(segment) < 8 or len(segment) < 8 + 3 * segment[7] or segment[7] == 0:
        raise InputError(Reason.INVALID_IMAGE_FORMAT, "JPEG frame header is malformed")
    height, width, count = struct.unpack_from(">HHB", segment, 3)
    sampling = tuple((segment[9 + 3 * i] >> 4, segment[9 + 3 * i] & 0x0F) for i in range(count))
    if any(not 1 <= h <= 4 or not 1 <= v <= 4 for h, v in sampling):
        raise InputError(Reason.INVALID_IMAGE_FORMAT, "JPEG sampling factors are invalid")
    return JpegHeader(width, height, sampling, marker in _PROGRESSIVE_SOF, 0)


def read_jpeg_header(data: bytes) -> JpegHeader:
    """Walk the JPEG's marker segments to the first scan: the frame size and sampling, whether it
    is progressive, and how many scans follow. A file that ends before a scan starts, or has no
    end-of-image marker after it, is TRUNCATED_IMAGE (an ``FF D9`` pair cannot occur inside
    entropy-coded data, which stuffs every ``FF`` byte)."""
    position = 2
    frame: JpegHeader | None = None
    while True:
        while position < len(data) and data[position] == 0xFF:
            position += 1  # fill bytes before a marker
        if position + 1 > len(data):
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
            raise InputError(
                Reason.TRUNCATED_IMAGE, f"JPEG ends inside a header segment ({len(data)} bytes)"
            )
        (length,) = struct.unpack_from(">H", data, position)
        if length < 2:
            raise InputError(
                Reason.INVALID_IMAGE_FORMAT, f"JPEG segment length {length} is invalid"
            )
        if position + length > len(data):
            raise InputError(
                Reason.TRUNCATED_IMAGE, f"JPEG ends inside a header segment ({len(data)} bytes)"
            )
        if marker in _SOF_MARKERS and frame is None:
            frame = _jpeg_frame(data[position : position + length], marker)
        if marker == 0xDA:
            break
        position += length
    if frame is None:
        raise InputError(Reason.INVALID_IMAGE_FORMAT, "JPEG has no frame header before its scan")
    if data.find(b"\xff\xd9", position) < 0:
        raise InputError(
            Reason.TRUNCATED_IMAGE,
            f"JPEG data ends before its end-of-image marker ({len(data)} bytes)",
        )
    scans = data.count(b"\xff\xda", position - 2)
    return JpegHeader(frame.width, frame.height, frame.sampling, frame.progressive, scans)
