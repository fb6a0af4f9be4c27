"""Images for tests: tiny valid-looking ones (labels scripted for the fake), real PNGs, and hostile
ones (pixel floods, zlib bombs, truncated files) for the local backend, its bench and fuzzing."""

from __future__ import annotations

import base64
import struct
import zlib

import orjson

PNG_HEADER = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 17
JPEG_HEADER = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"


def label(name: str, confidence: float, parent: str = "", level: int = 1) -> dict[str, object]:
    return {"Name": name, "ParentName": parent, "Confidence": confidence, "TaxonomyLevel": level}


def png(*labels: dict[str, object], salt: str = "") -> bytes:
    """A real 96 x 96 PNG (within Rekognition's limits, so the service passes it on untouched)
    whose labels the fake Rekognition reads from the FAKE-LABELS marker after its IEND chunk
    (decoders stop at IEND); ``salt`` makes its bytes distinct."""
    return _MARKED_BASE + salt.encode() + b"FAKE-LABELS:" + orjson.dumps(list(labels))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


EXPLICIT = label("Explicit", 97.0)
EXPLICIT_NUDITY = label("Explicit Nudity", 96.0, "Explicit", 2)
BORDERLINE = label("Swimwear or Underwear", 65.0)
MILD = label("Alcohol", 20.0)


def solid_png(
    width: int = 128, height: int = 128, rgb: tuple[int, int, int] = (200, 30, 30)
) -> bytes:
    """A real, decodable PNG (Rekognition wants each side >= 80 px), built without Pillow."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


_MARKED_BASE = solid_png(96, 96, (90, 110, 130))


# -- hostile PNGs and JPEGs (image bombs, truncation), built without Pillow ------------------------
#
# Shared by the local backend's unit tests, bench/image_bombs.py and the fuzz suite. Built from
# bytes so a 100-megapixel bomb costs nothing to make: a stream of zero scanlines is assembled
# from one compressed block repeated (each block ends in a full flush, so it stands alone).

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ZERO_BLOCK = 1 << 20


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_scanline_bytes(width: int, height: int, bit_depth: int = 8, colour_type: int = 2) -> int:
    """Bytes of filtered scanlines a non-interlaced PNG of this shape inflates to."""
    return height * (1 + (width * _CHANNELS[colour_type] * bit_depth + 7) // 8)


def zero_stream(length: int) -> bytes:
    """A valid zlib stream of ``length`` zero bytes, without ever holding them (~1 KB per MiB)."""
    if length <= 2 * _ZERO_BLOCK:
        return zlib.compress(bytes(length), 9)
    block = bytes(_ZERO_BLOCK)
    deflate = zlib.compressobj(9)
    first = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    repeated = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    whole, rest = divmod(length, _ZERO_BLOCK)
    tail = deflate.compress(bytes(rest)) + deflate.flush()
    adler = ((length % 65521) << 16) | 1  # adler32 of zeros: a stays 1, b counts the bytes
    return first + repeated * (whole - 1) + tail[:-4] + adler.to_bytes(4, "big")


def png_image(
    width: int,
    height: int,
    *,
    bit_depth: int = 8,
    colour_type: int = 2,
    rows: int | None = None,
    idat: bytes | None = None,
    chunks: tuple[bytes, ...] = (),
) -> bytes:
    """A black PNG whose zlib stream holds ``rows`` scanlines (all of them by default): fewer
    make a complete, valid stream that ends before the image does. ``idat`` replaces the
    stream; ``chunks`` (from :func:`png_chunk`) go between IHDR and IDAT."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    if idat is None:
        scanlines = png_scanline_bytes(
            width, height if rows is None else rows, bit_depth, colour_type
        )
        idat = zero_stream(scanlines)
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + b"".join(chunks)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def pixel_flood_png() -> bytes:
    """The 99-byte PNG from issue 11: 10,000 x 10,000 16-bit grey declared, one row of data.
    Decoders allocate the whole image (200 MB, 1.4 GB peak once converted) and fill it with
    black; no error is raised."""
    return png_image(10_000, 10_000, bit_depth=16, colour_type=0, rows=1)


def zlib_bomb_png(width: int = 10_000, height: int = 10_000, colour_type: int = 6) -> bytes:
    """A complete, valid PNG of black RGBA pixels: 400 MB decoded from ~400 KB."""
    return png_image(width, height, colour_type=colour_type)


def short_stream_png(width: int = 640, height: int = 480) -> bytes:
    """A well-formed PNG file (CRCs, IEND) whose zlib stream ends after the first row."""
    return png_image(width, height, rows=1)


def cut(data: bytes, fraction: float = 0.5) -> bytes:
    """The first ``fraction`` of a file: what a dropped connection or a full disk leaves."""
    return data[: max(1, int(len(data) * fraction))]
