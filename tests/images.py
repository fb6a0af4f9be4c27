"""Tiny valid-looking images for tests: real PNG/JPEG magic, labels scripted for the fake."""

from __future__ import annotations

import base64

import orjson

PNG_HEADER = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 17
JPEG_HEADER = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"


def label(name: str, confidence: float, parent: str = "", level: int = 1) -> dict[str, object]:
    return {"Name": name, "ParentName": parent, "Confidence": confidence, "TaxonomyLevel": level}


def png(*labels: dict[str, object], salt: str = "") -> bytes:
    """A PNG-magic blob whose labels the fake Rekognition reads from the FAKE-LABELS marker."""
    return PNG_HEADER + salt.encode() + b"FAKE-LABELS:" + orjson.dumps(list(labels))


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
    import struct
    import zlib

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
