"""sniff_format: the format from the first bytes, whatever the name or content type says."""

from __future__ import annotations

import struct

import pytest

from service.imaging.formats import CONTENT_TYPES, SUPPORTED_FORMATS, sniff_format
from tests.image_files import SAMPLES


@pytest.mark.parametrize("name", list(SAMPLES))
def test_every_sample_is_recognised_from_32_bytes(name: str) -> None:
    fmt, make = SAMPLES[name]
    data = make()
    assert sniff_format(data) == fmt
    assert sniff_format(data[:32]) == fmt
    assert sniff_format(memoryview(data)) == fmt


def test_every_supported_format_has_a_content_type() -> None:
    assert set(CONTENT_TYPES) == set(SUPPORTED_FORMATS)
    assert all(value.startswith("image/") for value in CONTENT_TYPES.values())


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    body = major + b"\x00\x00\x00\x00" + b"".join(compatible)
    return struct.pack(">I", 8 + len(body)) + b"ftyp" + body


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (ftyp(b"heic", b"mif1", b"heic"), "heif"),
        (ftyp(b"mif1", b"heic"), "heif"),
        (ftyp(b"mif1", b"miaf"), "heif"),  # codec-neutral: the decoder decides
        (ftyp(b"avif", b"mif1", b"miaf"), "avif"),
        (ftyp(b"mif1", b"avif"), "avif"),  # an AV1 brand anywhere makes it AVIF
        (ftyp(b"avis", b"msf1"), "avif"),
        (ftyp(b"isom", b"iso2", b"mp41"), None),  # an MP4 video
        (ftyp(b"qt  "), None),
        (b"\x00\x00\x00\x0cftyp", None),  # too short to hold a brand
    ],
    ids=["heic", "mif1-heic", "mif1", "avif", "mif1-avif", "avis", "mp4", "quicktime", "short"],
)
def test_iso_bmff_brands_decide_heif_or_avif(data: bytes, fmt: str | None) -> None:
    assert sniff_format(data + bytes(32)) == fmt


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b"BM" + bytes(12) + struct.pack("<I", 40) + bytes(16), "bmp"),
        (b"BM" + bytes(12) + struct.pack("<I", 124) + bytes(16), "bmp"),
        (b"BM" + bytes(12) + struct.pack("<I", 12) + bytes(16), "bmp"),
        (b"BM" + bytes(12) + struct.pack("<I", 41) + bytes(16), None),  # no such DIB header
        (b"BMP is a format" + bytes(20), None),
        (b"II*\x00" + bytes(28), "tiff"),
        (b"MM\x00*" + bytes(28), "tiff"),
        (b"II+\x00" + bytes(28), "tiff"),  # BigTIFF
        (b"GIF87a" + bytes(26), "gif"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(16), None),  # RIFF, but audio
        (b"\xff\xd8\xff\xdb" + bytes(28), "jpeg"),
        (b"\xff\xd8" + bytes(30), None),
        (b"%PDF-1.4" + bytes(24), None),
        (b"", None),
    ],
    ids=[
        "bmp-v3",
        "bmp-v5",
        "bmp-core",
        "bmp-bad-dib",
        "bm-text",
        "tiff-ii",
        "tiff-mm",
        "bigtiff",
        "gif87a",
        "riff-wave",
        "jpeg",
        "jpeg-soi-only",
        "pdf",
        "empty",
    ],
)
def test_magic_numbers(data: bytes, fmt: str | None) -> None:
    assert sniff_format(data) == fmt
