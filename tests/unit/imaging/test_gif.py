"""GIF block walk: frame count, canvas, truncation; the fast skip over full sub-blocks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.errors import InputError, Reason
from service.imaging.gif import _skip_sub_blocks, scan_gif
from tests import image_files as files


def slow_skip(data: bytes, position: int) -> int:
    """The reference: one sub-block at a time."""
    while position < len(data):
        length = data[position]
        position += 1 + length
        if length == 0:
            return position
    return -1


def chain(lengths: list[int]) -> bytes:
    return b"".join(bytes([length]) + bytes([0xFF]) * length for length in lengths) + b"\x00"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([255, 255, 254, 1, 100]), st.integers(1, 600)), max_size=4),
    st.integers(0, 3),
    st.data(),
)
def test_the_fast_skip_agrees_with_a_byte_walk(
    runs: list[tuple[int, int]], lead: int, data: st.DataObject
) -> None:
    """Runs of up to 600 sub-blocks of one length (255-byte ones longer than a strided read's
    window; their payload bytes are 0xFF too, the worst case for it), and cuts anywhere."""
    lengths = [length for length, count in runs for _ in range(count)]
    blob = bytes(lead) + chain(lengths) + b"\x3b"
    cut = data.draw(st.integers(lead, len(blob)))
    for candidate in (blob, blob[:cut]):
        assert _skip_sub_blocks(candidate, lead) == slow_skip(candidate, lead)
        assert _skip_sub_blocks(memoryview(candidate), lead) == slow_skip(candidate, lead)


def test_frames_and_canvas() -> None:
    scan = scan_gif(files.gif_animated(9), complete=True)
    assert scan is not None
    assert (scan.width, scan.height, scan.frames, scan.ended) == (120, 100, 9, True)
    spread = scan_gif(files.gif_spread_canvas(4, (3000, 500)), complete=True)
    assert spread is not None
    assert (spread.width, spread.height, spread.frames) == (3000, 500, 4)


def test_a_gif_without_its_trailer_is_accepted() -> None:
    scan = scan_gif(files.gif_animated()[:-1], complete=True)
    assert scan is not None
    assert scan.frames == 6


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.9, 0.999])
def test_a_gif_cut_inside_a_block_is_truncated(fraction: float) -> None:
    data = files.truncated(files.gif_animated(), fraction)
    with pytest.raises(InputError) as caught:
        scan_gif(data, complete=True)
    assert caught.value.reason is Reason.TRUNCATED_IMAGE
    prefix = scan_gif(data, complete=False)
    assert prefix is not None
    assert prefix.frames < 6
