"""Image payload checks shared by every input path (inline base64, URL download).

Pure functions, no I/O. Rekognition only accepts JPEG and PNG up to 5 MiB as inline bytes, so
anything else is refused here as a permanent :class:`~service.errors.InputError` instead of
costing a backend call. Error messages describe what was found (sizes, the first few bytes as
hex) and never echo the payload itself.
"""

from __future__ import annotations

import base64
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
