"""Per-partition commit points for work that completes out of order.

Records are tracked in the order they are consumed (offsets rise within a partition) and finish in
any order; the commit point is the offset after the longest finished prefix, so a commit never
skips unfinished work. A revoked partition's state is discarded: late completions for it are
ignored, and a re-assignment starts a fresh state, so nothing from an old generation is committed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from aiokafka import TopicPartition


@dataclass(eq=False)
class PartitionProgress:
    tp: TopicPartition
    pending: deque[int] = field(default_factory=deque)
    finished: set[int] = field(default_factory=set)
    commit_point: int | None = None  # next offset to consume after the finished prefix
    committed: int | None = None  # what was last committed to the broker
    active: bool = True

    @property
    def in_flight(self) -> int:
        return len(self.pending) - len(self.finished)

    def needs_commit(self) -> bool:
        return self.commit_point is not None and self.commit_point != self.committed


@dataclass(frozen=True, slots=True)
class Ticket:
    """Handed out per record; finishing it is a no-op once its partition was revoked."""

    progress: PartitionProgress
    offset: int


class OffsetTracker:
    def __init__(self) -> None:
        self._partitions: dict[TopicPartition, PartitionProgress] = {}

    def track(self, tp: TopicPartition, offset: int) -> Ticket:
        progress = self._partitions.get(tp)
        if progress is None:
            progress = self._partitions[tp] = PartitionProgress(tp)
        if progress.pending and offset <= progress.pending[-1]:
            raise ValueError(f"{tp}: offset {offset} is not after {progress.pending[-1]}")
        progress.pending.append(offset)
        return Ticket(progress, offset)

    def finish(self, ticket: Ticket) -> None:
        progress = ticket.progress
        if not progress.active:
            return
        progress.finished.add(ticket.offset)
        while progress.pending and progress.pending[0] in progress.finished:
            done = progress.pending.popleft()
            progress.finished.discard(done)
            progress.commit_point = done + 1

    def commit_points(self) -> dict[TopicPartition, int]:
        """Partitions whose commit point moved since the last :meth:`mark_committed`."""
        return {
            tp: p.commit_point
            for tp, p in self._partitions.items()
            if p.needs_commit() and p.commit_point is not None
        }

    def mark_committed(self, points: dict[TopicPartition, int]) -> None:
        for tp, offset in points.items():
            progress = self._partitions.get(tp)
            if progress is not None:
                progress.committed = offset

    def in_flight(self, tps: set[TopicPartition] | None = None) -> int:
        return sum(p.in_flight for tp, p in self._partitions.items() if tps is None or tp in tps)

    def revoke(self, tps: set[TopicPartition]) -> None:
        for tp in tps:
            progress = self._partitions.pop(tp, None)
            if progress is not None:
                progress.active = False
