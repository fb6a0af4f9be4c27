"""PNG structure: the IHDR, the scanline size, APNG detection, the minimal copy and its checks."""

from __future__ import annotations

import pytest

from service.errors import InputError, Reason
from service.imaging.png import PngHeader, minimal_png, read_png_header
from tests.images import (
    PNG_SIGNATURE,
    cut,
    pixel_flood_png,
    png_chunk,
    png_image,
    short_stream_png,
    zero_stream,
    zlib_bomb_png,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 17


def test_png_header_and_scanline_size() -> None:
    header = read_png_header(pixel_flood_png())
    assert header == PngHeader(10_000, 10_000, 16, 0, interlaced=False)
    assert header.scanline_bytes() == 10_000 * 20_001
    interlaced = PngHeader(9, 9, 8, 2, interlaced=True)  # Adam7 passes of a 9x9 RGB image
    assert interlaced.scanline_bytes() == sum(
        rows * (1 + 3 * columns)
        for rows, columns in [(2, 2), (2, 1), (1, 3), (3, 2), (2, 5), (5, 4), (4, 9)]
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (PNG[:20], Reason.TRUNCATED_IMAGE),
        (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IDAT", b"x" * 13), Reason.INVALID_IMAGE_FORMAT),
        (png_image(100, 100, bit_depth=16, colour_type=3), Reason.INVALID_IMAGE_FORMAT),
    ],
    ids=["cut", "no-ihdr", "bad-depth"],
)
def test_bad_png_headers(data: bytes, reason: Reason) -> None:
    with pytest.raises(InputError) as caught:
        read_png_header(data)
    assert caught.value.reason is reason


def test_minimal_png_keeps_pixels_and_drops_the_rest() -> None:
    palette = png_chunk(b"PLTE", bytes(6))
    extras = (png_chunk(b"tEXt", b"a\x00b"), palette, png_chunk(b"zTXt", b"c\x00\x00xyz"))
    data = png_image(100, 100, bit_depth=8, colour_type=3, chunks=extras)
    minimal = minimal_png(data, read_png_header(data))
    assert palette in minimal
    assert b"tEXt" not in minimal
    assert b"zTXt" not in minimal
    assert minimal.endswith(png_chunk(b"IEND", b""))


@pytest.mark.parametrize(
    "data",
    [short_stream_png(), png_image(300, 300, rows=299), cut(zlib_bomb_png(300, 300), 0.9)],
    ids=["short-stream", "one-row-short", "no-iend"],
)
def test_minimal_png_refuses_missing_pixel_data(data: bytes) -> None:
    with pytest.raises(InputError) as caught:
        minimal_png(data, read_png_header(data))
    assert caught.value.reason is Reason.TRUNCATED_IMAGE


def test_a_bomb_is_counted_not_inflated() -> None:
    """A 400 MB stream is checked only as far as the header needs: here one row."""
    data = png_image(10_000, 1, colour_type=6, idat=zero_stream(400_000_000))
    assert minimal_png(data, read_png_header(data)).startswith(PNG_SIGNATURE)
