"""One way to write and read times: ISO 8601 in UTC with milliseconds and a ``Z``.

Records, output.json files, completion events and logs all carry times; writing them in one
format, here, keeps them comparable as strings and parseable everywhere.
"""

from __future__ import annotations

from datetime import UTC, datetime


def iso_z(moment: datetime) -> str:
    """``2026-12-01T06:00:00.000Z`` for an aware moment (converted to UTC first)."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_now() -> str:
    """Every record carries two of these: the per-message path calls it (hence no conversion)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_from_epoch(epoch: float) -> str:
    return iso_z(datetime.fromtimestamp(epoch, UTC))


def parse_iso(text: str) -> datetime | None:
    """An aware datetime, or None for text that is not an ISO 8601 time with a zone."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None or moment.utcoffset() is None:
        return None
    try:
        # An aware time at the edge of the calendar can still overflow once moved to UTC.
        moment.astimezone(UTC)
        moment.timestamp()
    except (OverflowError, ValueError, OSError):
        return None
    return moment


def epoch_of(text: str | None) -> float | None:
    """Seconds since the epoch for an ISO time, None for a missing or unreadable one."""
    if not text:
        return None
    moment = parse_iso(text)
    return None if moment is None else moment.timestamp()
