"""Logging set-up: one JSON object per line in production, plain text for people.

Records may carry ``extra={"message_id": ..., "partition": ..., "offset": ...}``; those fields
go into the JSON so a message can be followed through the logs by its id.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import orjson

from service.clock import iso_from_epoch

_FIELDS = ("message_id", "topic", "partition", "offset", "reason")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": iso_from_epoch(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure(level: str, fmt: Literal["json", "text"]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka logs every rebalance step at INFO; keep it to warnings unless debugging.
    # faust and mode narrate every start-up and recovery step at INFO.
    if level != "DEBUG":
        for noisy in ("aiokafka", "faust", "mode"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
