"""read_header: sizes and animation from the first bytes, whole files and prefixes (S3 ranges)."""

from __future__ import annotations

import pytest

from service.errors import InputError, Reason
from service.imaging.header import ImageHeader, read_header
from tests import image_files as files
from tests.image_files import SAMPLES

EXPECTED = {  # name: (width, height, animated[, plain samples, GIF frames]) as stored, before EXIF
    # orientation
    "jpeg-baseline": (320, 240, False),
    "jpeg-exif-6": (120, 160, False),
    "png-rgb": (320, 240, False),
    "png-palette-trns": (120, 100, False),
    "apng": (120, 100, True),
    "webp-lossy": (320, 240, False),
    "webp-lossless-alpha": (120, 100, False),
    "webp-animated": (120, 100, True),
    "gif-still": (120, 100, False, True, 1),
    "gif-animated": (120, 100, True, True, 6),
    "heic": (320, 240, False),
    "avif": (320, 240, False),
    "bmp": (320, 240, False),
    "tiff-rgb": (320, 240, False),
    "tiff-tiled": (192, 128, False),
    "tiff-multipage": (120, 100, False),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_the_header_of_each_format(name: str) -> None:
    fmt, make = SAMPLES[name]
    assert read_header(make()) == ImageHeader(fmt, *EXPECTED[name])  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(SAMPLES))
@pytest.mark.parametrize("length", [32, 64, 100, 200, 400, 1000, 5000])
def test_a_prefix_gives_the_size_or_none_never_an_error(name: str, length: int) -> None:
    """An S3 range read of the first bytes: the same size as the whole file once they hold
    the header, None before; animated is the whole file's answer or None (not known yet)."""
    data = SAMPLES[name][1]()
    whole = read_header(data)
    assert whole is not None
    prefix = read_header(data[:length], complete=False)
    if prefix is None:
        assert length < 2000 or len(data) <= length
        return
    assert (prefix.format, prefix.width, prefix.height) == (whole.format, whole.width, whole.height)
    assert prefix.animated in (whole.animated, None)
    assert prefix.frames is None  # a prefix cannot count them


def test_a_gif_prefix_knows_it_is_animated_once_it_holds_two_frames() -> None:
    data = files.gif_animated()
    early = read_header(data[:200], complete=False)
    assert early is not None
    assert early.animated is None
    later = read_header(data[:1000], complete=False)
    assert later is not None
    assert later.animated is True


def test_the_gif_canvas_covers_every_frame() -> None:
    """A frame beyond the logical screen grows the canvas Pillow allocates."""
    header = read_header(files.gif_canvas_bomb(60_000))
    assert header is not None
    assert (header.width, header.height) == (60_120, 60_100)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not an image at all, just some text", Reason.NOT_AN_IMAGE),
        (files.truncated(files.png_rgb(), 0.5), Reason.TRUNCATED_IMAGE),
        (files.truncated(files.jpeg_baseline(), 0.5), Reason.TRUNCATED_IMAGE),
        (files.truncated(files.webp_lossy(), 0.5), Reason.TRUNCATED_IMAGE),
        (files.truncated(files.heic(), 0.5), Reason.TRUNCATED_IMAGE),
        (files.truncated(files.bmp(), 0.5), Reason.TRUNCATED_IMAGE),
        (files.truncated(files.gif_animated(), 0.5), Reason.TRUNCATED_IMAGE),
        (files.png_rgb()[:20], Reason.TRUNCATED_IMAGE),
    ],
    ids=["text", "png", "jpeg", "webp", "heic", "bmp", "gif", "png-header"],
)
def test_a_whole_file_that_is_cut_or_foreign(data: bytes, reason: Reason) -> None:
    with pytest.raises(InputError) as caught:
        read_header(data)
    assert caught.value.reason is reason


def test_not_an_image_shows_only_the_first_bytes() -> None:
    secret = b"\x00\x01\x02\x03\x04\x05\x06\x07 the rest may be anything"
    with pytest.raises(InputError) as caught:
        read_header(secret)
    assert "00 01 02 03 04 05 06 07" in str(caught.value)
    assert b"the rest".decode() not in str(caught.value)
