"""Reviewers' ``output.json`` files, read for the sink from where A2I (or the console) wrote them.

They live in an S3 bucket (A2I's, or any S3-compatible store via ``S3_ENDPOINT_URL``) or, in the
embedded setup, a local directory (``file://`` URIs, only inside ``MODERATION_REVIEW_LOCAL_STORE``).
Reads are bounded in size and time; :mod:`service.objectstore` does them and translates the SDK's
errors. Here they become the sink's: a store that cannot answer right now (connection errors,
timeouts, 5xx, throttling, our credentials) is a :class:`BackendError`, retried by the sink
within a deadline; everything else (a missing, too large or forbidden object, a location that
cannot name one) is the event's problem, an ``unreadable_output`` :class:`InputError` for the DLQ,
never retried.
"""

from __future__ import annotations

from pathlib import Path

from service.errors import InputError, Reason
from service.objectstore import (
    ObjectForbidden,
    ObjectStore,
    ObjectStoreError,
    S3Options,
    parse_location,
)

MAX_OUTPUT_BYTES = 10 * 1024 * 1024
#: One attempt per read, bounded: retries (with backoff and a deadline) belong to the caller, so
#: a read never holds the sink's partition for longer than these timeouts.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 10.0


#: What the sink dead-letters at once. Access denied counts: the object is the one an event
#: names, and events may point anywhere.
EVENT_PROBLEMS = (ObjectStoreError, ObjectForbidden)


class OutputStore:
    def __init__(
        self,
        *,
        region: str | None,
        s3_endpoint_url: str | None,
        local_root: Path | None,
        max_bytes: int = MAX_OUTPUT_BYTES,
    ) -> None:
        options = S3Options(
            region=region,
            endpoint_url=s3_endpoint_url,
            connect_timeout_s=CONNECT_TIMEOUT_S,
            read_timeout_s=READ_TIMEOUT_S,
            max_attempts=1,
        )
        self._objects = ObjectStore(options, file_root=local_root)
        self._max_bytes = max_bytes

    async def start(self) -> None:
        await self._objects.start()

    async def close(self) -> None:
        await self._objects.close()

    async def read(self, uri: str) -> bytes:
        """The object's bytes; ``InputError`` for the event's problems, ``BackendError`` else."""
        try:
            return await self._objects.get(parse_location(uri), max_bytes=self._max_bytes)
        except EVENT_PROBLEMS as exc:
            raise InputError(Reason.UNREADABLE_OUTPUT, str(exc)) from exc
