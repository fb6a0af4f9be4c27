"""Which frames of an animation are analysed: few, spread over it, ends included."""

from __future__ import annotations


def spread(count: int, limit: int) -> tuple[int, ...]:
    """Up to ``limit`` frame positions of ``count``, evenly spread, first and last included,
    increasing and distinct (every frame when there are no more than ``limit``)."""
    if count <= 0 or limit <= 0:
        return ()
    if count <= limit:
        return tuple(range(count))
    if limit == 1:
        return (0,)
    # count > limit, so consecutive positions are more than one apart before rounding and
    # rounding cannot make two of them equal.
    return tuple(round(step * (count - 1) / (limit - 1)) for step in range(limit))
