"""Decode, orient, flatten, pick frames and produce what the backend takes (synchronous)."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from service.imaging.formats import BackendFormat, SourceFormat
from service.imaging.header import ImageHeader
from service.imaging.spec import BackendInput, DecodeLimits


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """JPEG/PNG bytes within the backend's limits."""

    index: int  # the frame's position in the source (0 for a still image)
    data: bytes
    format: BackendFormat
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class PixelFrame:
    """8-bit RGB pixels, oriented, alpha flattened onto white, reduced for the model."""

    index: int
    image: Image.Image


Frame = EncodedFrame | PixelFrame


@dataclass(frozen=True, slots=True)
class NormalizedImage:
    source_format: SourceFormat
    width: int  # the source's size, after EXIF orientation
    height: int
    frame_count: int  # frames in the source (1 for a still image)
    frames: tuple[Frame, ...]  # those to analyze: 1 .. DecodeLimits.max_frames
    converted: bool  # False: frames[0].data is the input, untouched


def passes_as_is(header: ImageHeader, size: int, target: BackendInput, *, s3: bool) -> bool:
    """Whether the backend reads the image exactly as it is (JPEG or PNG, still, sides within
    limits, ``size`` within ``max_bytes`` or, for an S3 reference, ``s3_max_bytes``)."""
    raise NotImplementedError


def normalize(data: bytes, target: BackendInput, limits: DecodeLimits) -> NormalizedImage:
    """``data`` as the backend takes it; InputError with a typed reason when it cannot be.

    Raises IMAGE_TOO_MANY_PIXELS before decoding when a frame would exceed the pixel bound,
    TRUNCATED_IMAGE / INVALID_IMAGE_FORMAT for broken data, NOT_AN_IMAGE for an unsupported
    format, DECODE_TIMEOUT when the time limit passes.
    """
    raise NotImplementedError
