from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from service.clock import epoch_of, iso_from_epoch, iso_z, parse_iso, utc_now


def test_iso_z_writes_utc_with_milliseconds_and_z() -> None:
    moment = datetime(2026, 12, 1, 7, 30, 1, 123456, tzinfo=timezone(timedelta(hours=1)))
    assert iso_z(moment) == "2026-12-01T06:30:01.123Z"


def test_utc_now_parses_back() -> None:
    assert parse_iso(utc_now()) is not None


@given(st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False))
def test_epoch_round_trips_to_the_millisecond(epoch: float) -> None:
    back = epoch_of(iso_from_epoch(epoch))
    assert back is not None
    assert abs(back - epoch) < 0.001


def test_times_without_a_zone_or_garbage_are_refused() -> None:
    assert parse_iso("2026-12-01T06:00:00") is None
    assert parse_iso("yesterday") is None
    assert epoch_of("") is None
    assert epoch_of(None) is None
    assert parse_iso("9999-12-31T23:59:59-23:59") is None  # overflows when made UTC
    assert parse_iso("0001-01-01T00:00:00+01:00") is None


def test_offsets_are_honoured() -> None:
    moment = parse_iso("2026-12-01T08:00:00+02:00")
    assert moment is not None
    assert moment.astimezone(UTC).hour == 6
