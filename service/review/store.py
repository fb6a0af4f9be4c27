"""Where reviewers' ``output.json`` files live: an S3 bucket (A2I's, or any S3-compatible store
via ``S3_ENDPOINT_URL``), or a local directory for the embedded setup (``file://`` URIs).

Reads are bounded in size; a missing or forbidden object is the event's problem (DLQ), while a
store that cannot be reached is retried by the caller.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aioboto3
from botocore.exceptions import BotoCoreError, ClientError

from service.errors import BackendError, InputError, Reason

MAX_OUTPUT_BYTES = 10 * 1024 * 1024
_MISSING = {"NoSuchKey", "NoSuchBucket", "404", "AccessDenied", "403", "InvalidObjectState"}


class OutputStore:
    def __init__(
        self,
        *,
        region: str | None,
        s3_endpoint_url: str | None,
        local_root: Path | None,
        max_bytes: int = MAX_OUTPUT_BYTES,
    ) -> None:
        self._region = region
        self._endpoint = s3_endpoint_url
        self._local_root = local_root.resolve() if local_root is not None else None
        self._max_bytes = max_bytes
        self._stack = contextlib.AsyncExitStack()
        self._s3: Any = None

    async def start(self) -> None:
        session = aioboto3.Session()
        self._s3 = await self._stack.enter_async_context(
            session.client("s3", region_name=self._region, endpoint_url=self._endpoint)
        )

    async def close(self) -> None:
        self._s3 = None
        await self._stack.aclose()

    async def read(self, uri: str) -> bytes:
        parts = urlsplit(uri)
        if parts.scheme == "s3":
            return await self._read_s3(parts.netloc, unquote(parts.path.lstrip("/")), uri)
        if parts.scheme == "file":
            return self._read_local(Path(unquote(parts.path)), uri)
        raise InputError(Reason.UNREADABLE_OUTPUT, f"unsupported output URI scheme: {uri}")

    async def _read_s3(self, bucket: str, key: str, uri: str) -> bytes:
        if self._s3 is None:
            raise RuntimeError("OutputStore.start() was not awaited")
        try:
            response = await self._s3.get_object(Bucket=bucket, Key=key)
            async with response["Body"] as body:
                if int(response.get("ContentLength", 0)) > self._max_bytes:
                    raise InputError(
                        Reason.UNREADABLE_OUTPUT, f"{uri} is larger than {self._max_bytes} bytes"
                    )
                data: bytes = await body.read()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING:
                raise InputError(Reason.UNREADABLE_OUTPUT, f"{uri}: {code}") from exc
            raise BackendError(code or "S3Error", str(exc), retriable=True) from exc
        except BotoCoreError as exc:
            raise BackendError(type(exc).__name__, str(exc), retriable=True) from exc
        if len(data) > self._max_bytes:
            raise InputError(
                Reason.UNREADABLE_OUTPUT, f"{uri} is larger than {self._max_bytes} bytes"
            )
        return data

    def _read_local(self, path: Path, uri: str) -> bytes:
        if self._local_root is None:
            raise InputError(Reason.UNREADABLE_OUTPUT, f"file:// outputs are not enabled: {uri}")
        resolved = path.resolve()
        if not resolved.is_relative_to(self._local_root):
            raise InputError(Reason.UNREADABLE_OUTPUT, f"{uri} is outside the local review store")
        try:
            if resolved.stat().st_size > self._max_bytes:
                raise InputError(
                    Reason.UNREADABLE_OUTPUT, f"{uri} is larger than {self._max_bytes} bytes"
                )
            return resolved.read_bytes()
        except OSError as exc:
            raise InputError(Reason.UNREADABLE_OUTPUT, f"{uri}: {exc.strerror}") from exc
