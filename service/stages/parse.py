"""Parse: a consumed record's value into a validated request (InputError with its reason else)."""

from __future__ import annotations

from service.messages import ModerationRequest, parse_request


class RequestParser:
    def __init__(self, *, max_record_bytes: int, max_image_bytes: int) -> None:
        self._max_record_bytes = max_record_bytes
        self._max_image_bytes = max_image_bytes

    def parse(self, value: bytes | None) -> ModerationRequest:
        return parse_request(
            value, max_record_bytes=self._max_record_bytes, max_image_bytes=self._max_image_bytes
        )
