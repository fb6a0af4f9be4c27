"""Sizes and frame counts read from headers, before any pixel is decoded."""

from __future__ import annotations

from dataclasses import dataclass

from service.imaging.formats import SourceFormat


@dataclass(frozen=True, slots=True)
class ImageHeader:
    format: SourceFormat
    width: int  # as stored (before EXIF orientation)
    height: int
    animated: bool | None  # None: not known from the bytes read


def read_header(data: bytes | memoryview, *, complete: bool = True) -> ImageHeader | None:
    """The header of a supported image; InputError (NOT_AN_IMAGE, INVALID_IMAGE_FORMAT,
    TRUNCATED_IMAGE) when ``data`` is not one. ``complete=False``: ``data`` is only the first
    bytes of a larger object (an S3 range read); returns None when the dimensions lie beyond
    them, and never reports truncation."""
    raise NotImplementedError
