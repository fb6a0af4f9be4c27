"""Image payload checks shared by every input path (inline base64, URL download).

Pure functions, no I/O. Bytes that are not an image of a supported format (see
:mod:`service.imaging.formats`), or are over the size limit, are refused here as a permanent
:class:`~service.errors.InputError` before anything decodes them; the normalize stage turns the
rest into what the backend takes. Error messages describe what was found (sizes, the first few
bytes as hex) and never echo the payload itself.

The JPEG and PNG structure readers moved to :mod:`service.imaging`; their names are re-exported
here for the callers that still import them from this module.
"""

from __future__ import annotations

import base64
from typing import Final

from service.errors import InputError, Reason
from service.imaging.formats import SourceFormat, sniff_format
from service.imaging.header import not_an_image
from service.imaging.jpeg import JpegHeader, read_jpeg_header
from service.imaging.png import PngHeader, minimal_png, read_png_header

__all__ = [
    "MAX_IMAGE_BYTES",
    "ImageFormat",
    "JpegHeader",
    "PngHeader",
    "check_image",
    "decode_base64_image",
    "minimal_png",
    "read_jpeg_header",
    "read_png_header",
    "sniff_format",
]

ImageFormat = SourceFormat

MAX_IMAGE_BYTES: Final = 5 * 1024 * 1024
"""Rekognition's limit for images passed inline as bytes."""

# Whitespace tolerated inside base64 text: line-wrapped output (the ``base64`` tool wraps at 76
# columns, MIME at 76, PEM at 64) is common and unambiguous. Only ASCII whitespace: anything else
# is not base64 and is refused rather than silently dropped.
_BASE64_WHITESPACE: Final = str.maketrans("", "", " \t\r\n")


def check_image(data: bytes, max_bytes: int = MAX_IMAGE_BYTES) -> ImageFormat:
    """The format of ``data`` by its magic bytes; InputError when it is over ``max_bytes``
    (IMAGE_TOO_LARGE), empty or of no supported format (NOT_AN_IMAGE). Nothing is decoded."""
    size = len(data)
    if size > max_bytes:
        raise InputError(
            Reason.IMAGE_TOO_LARGE, f"image is {size} bytes, more than the limit of {max_bytes}"
        )
    if size == 0:
        raise InputError(Reason.NOT_AN_IMAGE, "image is empty (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise not_an_image(data)
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
