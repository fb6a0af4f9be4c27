"""Image formats by magic bytes: the content type and the file name are never trusted."""

from __future__ import annotations

from typing import Final, Literal

SourceFormat = Literal["jpeg", "png", "webp", "gif", "heif", "avif", "bmp", "tiff"]
SUPPORTED_FORMATS: Final[tuple[SourceFormat, ...]] = (
    "jpeg", "png", "webp", "gif", "heif", "avif", "bmp", "tiff",
)
BackendFormat = Literal["jpeg", "png"]  # what Rekognition's image API reads


def sniff_format(data: bytes | memoryview) -> SourceFormat | None:
    """The format ``data`` starts like, or None. Needs at most the first 32 bytes (ISO-BMFF
    ``ftyp`` brands decide HEIF against AVIF)."""
    raise NotImplementedError
