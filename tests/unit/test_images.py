"""Image payload checks: magic-byte sniffing, size limits, strict base64."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.errors import InputError, Reason
from service.images import (
    MAX_IMAGE_BYTES,
    PngHeader,
    check_image,
    decode_base64_image,
    minimal_png,
    read_jpeg_header,
    read_png_header,
    sniff_format,
)
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
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
GIF = b"GIF89a\x01\x00\x01\x00"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_max_image_bytes_is_rekognitions_inline_limit() -> None:
    assert MAX_IMAGE_BYTES == 5 * 1024 * 1024


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (PNG, "png"),
        (b"\x89PNG\r\n\x1a\n", "png"),
        (JPEG, "jpeg"),
        (b"\xff\xd8\xff", "jpeg"),
        (b"", None),
        (b"\x89PNG\r\n\x1a", None),  # truncated magic
        (b"\xff\xd8", None),
        (GIF, None),
        (b"<html>PNG</html>", None),
        (b"x" + PNG, None),  # magic must be at the start
    ],
)
def test_sniff_format(data: bytes, expected: str | None) -> None:
    assert sniff_format(data) == expected


@pytest.mark.parametrize(
    ("data", "max_bytes", "expected"),
    [
        (PNG, MAX_IMAGE_BYTES, "png"),
        (JPEG, MAX_IMAGE_BYTES, "jpeg"),
        (PNG, len(PNG), "png"),  # exactly at the limit is fine
    ],
)
def test_check_image_accepts(data: bytes, max_bytes: int, expected: str) -> None:
    assert check_image(data, max_bytes) == expected


@pytest.mark.parametrize(
    ("data", "max_bytes", "reason", "in_message"),
    [
        (b"", MAX_IMAGE_BYTES, Reason.NOT_AN_IMAGE, "0 bytes"),
        (GIF, MAX_IMAGE_BYTES, Reason.NOT_AN_IMAGE, "47 49 46 38 39 61 01 00"),
        (b"%PDF-1.7 secret", MAX_IMAGE_BYTES, Reason.NOT_AN_IMAGE, "15 bytes"),
        (PNG, len(PNG) - 1, Reason.IMAGE_TOO_LARGE, f"{len(PNG)} bytes"),
        (b"\x00" * 100, 10, Reason.IMAGE_TOO_LARGE, "limit of 10"),  # size checked first
    ],
)
def test_check_image_refuses(data: bytes, max_bytes: int, reason: Reason, in_message: str) -> None:
    with pytest.raises(InputError) as info:
        check_image(data, max_bytes)
    assert info.value.reason is reason
    assert in_message in info.value.message


def test_check_image_message_shows_at_most_eight_bytes_and_never_the_data() -> None:
    data = b"SECRET-PAYLOAD-NOT-TO-BE-LOGGED" * 4
    with pytest.raises(InputError) as info:
        check_image(data)
    message = info.value.message
    assert data[:8].hex(" ") in message
    assert data[:9].hex(" ") not in message
    assert "SECRET" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b64(PNG), PNG),
        (b64(JPEG), JPEG),
        (b64(PNG)[:10] + "\n" + b64(PNG)[10:], PNG),  # line-wrapped
        (base64.encodebytes(PNG * 10).decode(), PNG * 10),  # MIME style, 76 columns
        (f"  {b64(JPEG)}\r\n\t", JPEG),
    ],
)
def test_decode_base64_image_accepts(text: str, expected: bytes) -> None:
    assert decode_base64_image(text) == expected


@pytest.mark.parametrize(
    ("text", "max_bytes", "reason"),
    [
        ("", MAX_IMAGE_BYTES, Reason.NOT_AN_IMAGE),
        ("   \n", MAX_IMAGE_BYTES, Reason.NOT_AN_IMAGE),
        (b64(GIF), MAX_IMAGE_BYTES, Reason.NOT_AN_IMAGE),
        (b64(PNG + b"\0").rstrip("="), MAX_IMAGE_BYTES, Reason.INVALID_BASE64),  # no padding
        (b64(PNG) + "!", MAX_IMAGE_BYTES, Reason.INVALID_BASE64),
        ("iVBO*w0K", MAX_IMAGE_BYTES, Reason.INVALID_BASE64),
        (
            base64.urlsafe_b64encode(b"\xff\xd8\xff\xfb\xff\xfe").decode(),  # "_9j_-__-"
            100,
            Reason.INVALID_BASE64,
        ),
        ("data:image/png;base64," + b64(PNG), MAX_IMAGE_BYTES, Reason.INVALID_BASE64),
        (b64(PNG) + "\u00a0", MAX_IMAGE_BYTES, Reason.INVALID_BASE64),  # non-ASCII whitespace
        ("iVBORw0K\u2028GgoAAAA", MAX_IMAGE_BYTES, Reason.INVALID_BASE64),
        (b64(PNG), len(PNG) - 1, Reason.IMAGE_TOO_LARGE),
        ("A" * 4000, 2999, Reason.IMAGE_TOO_LARGE),  # refused by length, before decoding
    ],
)
def test_decode_base64_image_refuses(text: str, max_bytes: int, reason: Reason) -> None:
    with pytest.raises(InputError) as info:
        decode_base64_image(text, max_bytes)
    assert info.value.reason is reason


def test_decode_base64_image_refuses_oversized_text_without_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_decoding(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("decoded an oversized payload")

    monkeypatch.setattr(base64, "b64decode", no_decoding)
    text = "A" * (4 * (MAX_IMAGE_BYTES // 3 + 1))
    with pytest.raises(InputError) as info:
        decode_base64_image(text)
    assert info.value.reason is Reason.IMAGE_TOO_LARGE


def test_decode_base64_image_size_limit_is_exact() -> None:
    data = PNG + b"\x00" * (1000 - len(PNG))
    assert decode_base64_image(b64(data), max_bytes=1000) == data
    with pytest.raises(InputError) as info:
        decode_base64_image(b64(data + b"\x00"), max_bytes=1000)
    assert info.value.reason is Reason.IMAGE_TOO_LARGE


@given(st.binary(max_size=64))
def test_sniff_format_never_raises(data: bytes) -> None:
    assert sniff_format(data) in {"jpeg", "png", None}


@given(st.text(max_size=200))
def test_decode_base64_image_only_raises_input_error(text: str) -> None:
    reason: Reason | None = None
    try:
        data = decode_base64_image(text, max_bytes=100)
    except InputError as exc:
        reason = exc.reason
    else:
        assert sniff_format(data) is not None
    assert reason in {None, Reason.INVALID_BASE64, Reason.NOT_AN_IMAGE, Reason.IMAGE_TOO_LARGE}


@given(st.sampled_from([PNG, JPEG]), st.binary(max_size=300))
def test_decode_base64_image_round_trips(magic: bytes, tail: bytes) -> None:
    data = magic + tail
    assert decode_base64_image(b64(data)) == data


# -- headers and structure (read by the local backend before it decodes) ---------------------------


def test_the_rekognition_path_never_looks_at_pixels() -> None:
    """Inline images are only sniffed: Rekognition refuses bad pixels itself, so a pixel flood
    passes through untouched (only the local backend decodes, and it refuses it)."""
    flood = pixel_flood_png()
    assert decode_base64_image(b64(flood)) == flood


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


def jpeg_segments(*segments: bytes, scans: int = 1, end: bool = True) -> bytes:
    """SOI, the given marker segments, ``scans`` SOS segments with a little data, maybe EOI."""
    sos = b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" + b"\x12\x34\xff\x00"
    return b"\xff\xd8" + b"".join(segments) + sos * scans + (b"\xff\xd9" if end else b"")


SOF_420 = b"\xff\xc0\x00\x11\x08\x03\x00\x04\x00\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
SOF2_444 = b"\xff\xc2\x00\x11\x08\x03\x00\x04\x00\x03\x01\x11\x00\x02\x11\x01\x03\x11\x01"


def test_jpeg_header_and_coefficients() -> None:
    baseline = read_jpeg_header(jpeg_segments(b"\xff\xe0\x00\x04ab", SOF_420))
    assert (baseline.width, baseline.height, baseline.sampling) == (
        1024,
        768,
        ((2, 2), (1, 1), (1, 1)),
    )
    assert baseline.coefficient_bytes() == 0  # one baseline scan: decoded a block row at a time
    progressive = read_jpeg_header(jpeg_segments(SOF2_444, scans=6))
    assert progressive.progressive
    assert progressive.scans == 6
    assert progressive.coefficient_bytes() == 3 * 1024 * 768 * 2
    multi_scan = read_jpeg_header(jpeg_segments(SOF_420, scans=3))
    assert multi_scan.coefficient_bytes() == 1024 * 768 * 2 * 3 // 2


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (jpeg_segments(SOF_420, end=False), Reason.TRUNCATED_IMAGE),
        (jpeg_segments(SOF_420)[:12], Reason.TRUNCATED_IMAGE),
        (b"\xff\xd8\xff\xe0\x00\x00" + b"\x00" * 20, Reason.INVALID_IMAGE_FORMAT),
        (jpeg_segments(), Reason.INVALID_IMAGE_FORMAT),  # a scan without a frame
        (b"\xff\xd8\xff\xd9", Reason.INVALID_IMAGE_FORMAT),
    ],
    ids=["no-eoi", "cut-in-frame", "zero-length", "no-frame", "empty"],
)
def test_bad_jpeg_structure(data: bytes, reason: Reason) -> None:
    with pytest.raises(InputError) as caught:
        read_jpeg_header(data)
    assert caught.value.reason is reason
