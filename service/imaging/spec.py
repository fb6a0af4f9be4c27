"""What a backend takes, and the bounds every decode stays within."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

MIB: Final = 1024 * 1024
REKOGNITION_MIN_SIDE: Final = 80
REKOGNITION_MAX_SIDE: Final = 10_000
REKOGNITION_MAX_BYTES: Final = 5 * MIB  # inline Bytes
REKOGNITION_MAX_S3_BYTES: Final = 15 * 1000 * 1000  # S3Object (Rekognition says 15 MB)


@dataclass(frozen=True, slots=True)
class BackendInput:
    """The images a backend takes.

    ``encoded``: JPEG or PNG bytes, each side within ``min_side``..``max_side``, at most
    ``max_bytes`` (Rekognition). ``pixels``: RGB pixels whose shorter side is at least
    ``pixel_side`` (reduced from the original, never enlarged beyond it): a local model that
    resizes anyway is spared an encode and a second decode. ``s3_max_bytes``: the largest S3
    object the backend reads by reference (None: it cannot read S3 at all, the service
    downloads).
    """

    mode: Literal["encoded", "pixels"]
    min_side: int = REKOGNITION_MIN_SIDE
    max_side: int = REKOGNITION_MAX_SIDE
    max_bytes: int = REKOGNITION_MAX_BYTES
    s3_max_bytes: int | None = REKOGNITION_MAX_S3_BYTES
    pixel_side: int = 0


REKOGNITION_INPUT: Final = BackendInput("encoded")


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Bounds checked before and while decoding one image (settings in brackets).

    ``max_pixels``: width x height of a frame or canvas (MODERATION_MAX_IMAGE_PIXELS);
    ``max_frames``: frames analyzed of an animation (MODERATION_MAX_FRAMES);
    ``timeout_s``: wall time for one image's normalization (MODERATION_DECODE_TIMEOUT_S),
    checked between frames and steps (one frame's decode is bounded by ``max_pixels``).
    """

    max_pixels: int = 100_000_000
    max_frames: int = 5
    timeout_s: float = 20.0
    jpeg_quality: int = 90
