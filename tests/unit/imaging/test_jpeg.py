"""JPEG structure: the frame header, progressive coefficients, truncation, prefixes."""

from __future__ import annotations

import pytest

from service.errors import InputError, Reason
from service.imaging.jpeg import read_jpeg_header
from tests import image_files as files

SOS_ONE = b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"  # a scan of component 1 alone
SOS_ALL = b"\xff\xda\x00\x0c\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00"  # all three


def jpeg_segments(
    *segments: bytes, scans: int = 1, end: bool = True, sos: bytes = SOS_ONE
) -> bytes:
    """SOI, the given marker segments, ``scans`` SOS segments with a little data, maybe EOI."""
    scan = sos + b"\x12\x34\xff\x00"
    return b"\xff\xd8" + b"".join(segments) + scan * scans + (b"\xff\xd9" if end else b"")


SOF_420 = b"\xff\xc0\x00\x11\x08\x03\x00\x04\x00\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
SOF2_444 = b"\xff\xc2\x00\x11\x08\x03\x00\x04\x00\x03\x01\x11\x00\x02\x11\x01\x03\x11\x01"


def test_jpeg_header_and_coefficients() -> None:
    baseline = read_jpeg_header(jpeg_segments(b"\xff\xe0\x00\x04ab", SOF_420, sos=SOS_ALL))
    assert (baseline.width, baseline.height, baseline.sampling) == (
        1024,
        768,
        ((2, 2), (1, 1), (1, 1)),
    )
    assert not baseline.multiple_scans
    assert baseline.coefficient_bytes() == 0  # one baseline scan: decoded a block row at a time
    progressive = read_jpeg_header(jpeg_segments(SOF2_444, scans=6))
    assert progressive.progressive
    assert progressive.multiple_scans
    assert progressive.coefficient_bytes() == 3 * 1024 * 768 * 2
    # Sequential, but the first scan holds one component of three: libjpeg buffers them all.
    multi_scan = read_jpeg_header(jpeg_segments(SOF_420, scans=3))
    assert multi_scan.multiple_scans
    assert multi_scan.coefficient_bytes() == 1024 * 768 * 2 * 3 // 2


def test_a_prefix_gives_the_frame_without_reading_scans() -> None:
    data = jpeg_segments(SOF2_444, scans=6)
    prefix = read_jpeg_header(data[: len(SOF2_444) + 2], complete=False)
    assert prefix is not None
    assert (prefix.width, prefix.height, prefix.multiple_scans) == (1024, 768, True)
    assert read_jpeg_header(data[:10], complete=False) is None


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


def test_real_files_scans() -> None:
    """Pillow's (libjpeg's) own files: interleaved baseline in one scan, progressive in many."""
    assert not read_jpeg_header(files.jpeg_baseline()).multiple_scans
    assert not read_jpeg_header(files.jpeg_grey()).multiple_scans
    assert not read_jpeg_header(files.jpeg_cmyk()).multiple_scans
    assert read_jpeg_header(files.jpeg_progressive()).multiple_scans
