"""Image payload checks: magic-byte sniffing, size limits, strict base64."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.errors import InputError, Reason
from service.images import MAX_IMAGE_BYTES, check_image, decode_base64_image, sniff_format
from service.imaging.formats import SUPPORTED_FORMATS
from tests.images import pixel_flood_png

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 17
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
GIF = b"GIF89a\x01\x00\x01\x00"
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3"


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
        (GIF, "gif"),
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
        (GIF, MAX_IMAGE_BYTES, "gif"),  # every supported format passes; decoding comes later
        (PNG, len(PNG), "png"),  # exactly at the limit is fine
    ],
)
def test_check_image_accepts(data: bytes, max_bytes: int, expected: str) -> None:
    assert check_image(data, max_bytes) == expected


@pytest.mark.parametrize(
    ("data", "max_bytes", "reason", "in_message"),
    [
        (b"", MAX_IMAGE_BYTES, Reason.NOT_AN_IMAGE, "0 bytes"),
        (PDF, MAX_IMAGE_BYTES, Reason.NOT_AN_IMAGE, "25 50 44 46 2d 31 2e 37"),
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
        (b64(PDF), MAX_IMAGE_BYTES, Reason.NOT_AN_IMAGE),
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
    assert sniff_format(data) in {*SUPPORTED_FORMATS, None}


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


def test_the_rekognition_path_never_looks_at_pixels() -> None:
    """Inline images are only sniffed: Rekognition refuses bad pixels itself, so a pixel flood
    passes through untouched (only the local backend decodes, and it refuses it)."""
    flood = pixel_flood_png()
    assert decode_base64_image(b64(flood)) == flood
