"""Commit points for out-of-order completion, revocation and re-assignment."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from service.kafka.offsets import OffsetTracker

TP0 = TopicPartition("moderation.requests", 0)
TP1 = TopicPartition("moderation.requests", 1)


def test_nothing_to_commit_before_anything_finishes() -> None:
    tracker = OffsetTracker()
    tracker.track(TP0, 5)
    assert tracker.commit_points() == {}
    assert tracker.in_flight() == 1


def test_out_of_order_completion_commits_only_the_finished_prefix() -> None:
    tracker = OffsetTracker()
    tickets = {offset: tracker.track(TP0, offset) for offset in (10, 11, 12, 13)}

    tracker.finish(tickets[12])
    tracker.finish(tickets[11])
    assert tracker.commit_points() == {}  # 10 is still running
    assert tracker.in_flight() == 2

    tracker.finish(tickets[10])
    assert tracker.commit_points() == {TP0: 13}
    assert tracker.in_flight() == 1

    tracker.finish(tickets[13])
    assert tracker.commit_points() == {TP0: 14}
    assert tracker.in_flight() == 0


def test_offsets_with_gaps_commit_after_the_last_finished() -> None:
    # Compacted topics and transaction markers leave gaps between consumed offsets.
    tracker = OffsetTracker()
    first, second = tracker.track(TP0, 3), tracker.track(TP0, 9)
    tracker.finish(first)
    assert tracker.commit_points() == {TP0: 4}
    tracker.finish(second)
    assert tracker.commit_points() == {TP0: 10}


@pytest.mark.parametrize("offset", [7, 6, 0])
def test_tracking_must_move_forward(offset: int) -> None:
    tracker = OffsetTracker()
    tracker.track(TP0, 7)
    with pytest.raises(ValueError, match="not after 7"):
        tracker.track(TP0, offset)


def test_partitions_are_independent() -> None:
    tracker = OffsetTracker()
    a = tracker.track(TP0, 100)
    tracker.track(TP1, 5)  # lower offset on another partition is fine
    b = tracker.track(TP1, 6)
    tracker.finish(b)
    tracker.finish(a)
    assert tracker.commit_points() == {TP0: 101}
    assert tracker.in_flight() == 1
    assert tracker.in_flight({TP0}) == 0
    assert tracker.in_flight({TP1}) == 1


def test_commit_points_report_only_partitions_that_moved_since_mark_committed() -> None:
    tracker = OffsetTracker()
    t0 = [tracker.track(TP0, offset) for offset in range(3)]
    t1 = [tracker.track(TP1, offset) for offset in range(3)]
    tracker.finish(t0[0])
    tracker.finish(t1[0])
    points = tracker.commit_points()
    assert points == {TP0: 1, TP1: 1}

    tracker.mark_committed(points)
    assert tracker.commit_points() == {}
    assert tracker.commit_points() == {}  # reading does not change anything

    tracker.finish(t1[1])
    assert tracker.commit_points() == {TP1: 2}
    tracker.mark_committed({TP1: 2})
    assert tracker.commit_points() == {}

    tracker.finish(t0[2])  # not contiguous: TP0's point does not move
    assert tracker.commit_points() == {}
    tracker.finish(t0[1])
    assert tracker.commit_points() == {TP0: 3}


def test_unacknowledged_commit_is_reported_again() -> None:
    tracker = OffsetTracker()
    tracker.finish(tracker.track(TP0, 0))
    assert tracker.commit_points() == {TP0: 1}
    # The commit failed, so mark_committed was not called: the point is still owed.
    assert tracker.commit_points() == {TP0: 1}


def test_mark_committed_ignores_unknown_partitions() -> None:
    tracker = OffsetTracker()
    tracker.mark_committed({TP0: 10})
    assert tracker.commit_points() == {}
    assert tracker.in_flight() == 0


def test_revoke_makes_late_finish_a_no_op() -> None:
    tracker = OffsetTracker()
    early, late = tracker.track(TP0, 0), tracker.track(TP0, 1)
    other = tracker.track(TP1, 0)
    tracker.finish(early)
    tracker.revoke({TP0})

    assert tracker.commit_points() == {}  # TP0's uncommitted point is dropped with it
    assert tracker.in_flight() == 1  # only TP1's record
    tracker.finish(late)
    assert tracker.commit_points() == {}
    assert tracker.in_flight({TP0}) == 0

    tracker.finish(other)
    assert tracker.commit_points() == {TP1: 1}


def test_revoking_an_unknown_partition_is_harmless() -> None:
    tracker = OffsetTracker()
    tracker.revoke({TP0})
    assert tracker.commit_points() == {}


def test_re_track_after_revoke_starts_fresh() -> None:
    tracker = OffsetTracker()
    old = [tracker.track(TP0, offset) for offset in (50, 51)]
    tracker.finish(old[0])
    tracker.mark_committed(tracker.commit_points())
    tracker.revoke({TP0})

    # Re-assigned: the group's committed offset is 51, so consumption restarts there; an
    # offset that the old generation already tracked must be accepted again.
    new = tracker.track(TP0, 51)
    assert tracker.commit_points() == {}
    tracker.finish(old[1])  # the old generation's ticket must not finish the new record
    assert tracker.commit_points() == {}
    assert tracker.in_flight({TP0}) == 1

    tracker.finish(new)
    assert tracker.commit_points() == {TP0: 52}  # reported: the fresh state has no commit yet


@st.composite
def consumed_and_finish_order(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    start = draw(st.integers(0, 1_000_000))
    gaps = draw(st.lists(st.integers(1, 5), min_size=1, max_size=40))
    offsets = [start]
    for gap in gaps[1:]:
        offsets.append(offsets[-1] + gap)
    return offsets, draw(st.permutations(range(len(offsets))))


@given(consumed_and_finish_order(), st.integers(0, 3))
def test_commit_point_never_passes_unfinished_work(
    case: tuple[list[int], list[int]], commit_every: int
) -> None:
    offsets, order = case
    tracker = OffsetTracker()
    tickets = [tracker.track(TP0, offset) for offset in offsets]
    finished: set[int] = set()
    committed: int | None = None
    last_point: int | None = None
    for step, index in enumerate(order, start=1):
        tracker.finish(tickets[index])
        finished.add(offsets[index])
        unfinished = [offset for offset in offsets if offset not in finished]
        points = tracker.commit_points()
        point = points.get(TP0, committed)
        if point is not None:
            if unfinished:
                assert point <= min(unfinished)
            # it is exactly one past the longest finished prefix
            prefix = [o for o in offsets if unfinished and o < min(unfinished)] or (
                offsets if not unfinished else []
            )
            assert point == prefix[-1] + 1
            assert last_point is None or point >= last_point
            last_point = point
        else:
            assert offsets[0] not in finished
        assert tracker.in_flight() == len(unfinished)
        if commit_every and step % commit_every == 0 and points:
            tracker.mark_committed(points)
            committed = points[TP0]
            assert tracker.commit_points() == {}
    assert last_point == offsets[-1] + 1
    assert tracker.in_flight() == 0
