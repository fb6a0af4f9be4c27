"""JSON log lines: one object per line, times in the service's one format, tracing fields kept."""

from __future__ import annotations

import logging

import orjson

from service.clock import parse_iso
from service.logs import JsonFormatter


def test_a_json_line_carries_a_utc_time_and_the_message_fields() -> None:
    record = logging.LogRecord("service.test", logging.WARNING, __file__, 1, "hi %s", ("x",), None)
    record.created = 1_767_225_600.25
    record.message_id = "upload-1"
    line = orjson.loads(JsonFormatter().format(record))
    assert line["time"] == "2026-01-01T00:00:00.250Z"
    assert parse_iso(line["time"]) is not None
    assert (line["level"], line["message"], line["message_id"]) == ("WARNING", "hi x", "upload-1")
