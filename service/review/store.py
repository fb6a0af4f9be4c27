"""Where reviewers' ``output.json`` files live: an S3 bucket (A2I's, or any S3-compatible store
via ``S3_ENDPOINT_URL``), or a local directory for the embedded setup (``file://`` URIs).

Reads are bounded in size and time. This is the one place botocore's errors become ours, decided
by type and code, never by message: a store that cannot answer right now (connection errors,
timeouts, 5xx, throttling, credentials that could not be fetched) is a retriable
:class:`BackendError`, retried by the caller within a deadline; everything else (a missing or
forbidden object, a request the client itself refuses to send, such as a bucket name botocore
rejects) is the event's problem, an :class:`InputError` for the DLQ, never retried.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aioboto3
import aiohttp
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ChecksumError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    IncompleteReadError,
    MetadataRetrievalError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from service.errors import BackendError, InputError, Reason

MAX_OUTPUT_BYTES = 10 * 1024 * 1024
#: One attempt per read, bounded: retries (with backoff and a deadline) belong to the caller, so
#: a read never holds the sink's partition for longer than these timeouts.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 10.0

# botocore errors that mean "the store (or the way to it) is unavailable right now".
_TRANSIENT_BOTOCORE = (
    BotoConnectionError,  # EndpointConnectionError, ConnectTimeoutError, SSLError, proxy errors
    HTTPClientError,  # ReadTimeoutError, ConnectionClosedError, ResponseStreamingError
    IncompleteReadError,
    ChecksumError,  # a body damaged on the way: reading it again may work
    NoCredentialsError,  # credentials are an outage of ours, never the event's fault
    PartialCredentialsError,
    CredentialRetrievalError,
    MetadataRetrievalError,
)
# S3 error codes that are transient whatever their HTTP status.
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
    # Our credentials, not the event: expired or skewed signatures heal when they are refreshed.
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
    "RequestTimeTooSkewed",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
}


def translate_s3_error(exc: Exception, uri: str) -> BackendError | InputError:
    """The one boundary: a botocore (or transport) error as retriable-or-not, by type and code."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "")) or "S3Error"
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if status >= 500 or status == 429 or code in _TRANSIENT_CODES:
            return BackendError(code, f"{uri}: {exc}", retriable=True)
        return InputError(Reason.UNREADABLE_OUTPUT, f"{uri}: {code}")
    if isinstance(exc, (*_TRANSIENT_BOTOCORE, aiohttp.ClientError, TimeoutError)):
        return BackendError(type(exc).__name__, f"{uri}: {exc}", retriable=True)
    # ParamValidationError and the rest: the client refused the request itself. Asking again
    # cannot help, so it is the event's problem.
    return InputError(Reason.UNREADABLE_OUTPUT, f"{uri}: {type(exc).__name__}: {exc}")


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
        config = Config(
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
            retries={"mode": "standard", "total_max_attempts": 1},
        )
        self._s3 = await self._stack.enter_async_context(
            session.client(
                "s3", region_name=self._region, endpoint_url=self._endpoint, config=config
            )
        )

    async def close(self) -> None:
        self._s3 = None
        await self._stack.aclose()

    async def read(self, uri: str) -> bytes:
        """The object's bytes; ``InputError`` for the event's problems, ``BackendError`` else."""
        parts = urlsplit(uri)
        if parts.scheme == "s3":
            return await self._read_s3(parts.netloc, unquote(parts.path.lstrip("/")), uri)
        if parts.scheme == "file":
            return self._read_local(Path(unquote(parts.path)), uri)
        raise InputError(Reason.UNREADABLE_OUTPUT, f"unsupported output URI scheme: {uri}")

    async def _read_s3(self, bucket: str, key: str, uri: str) -> bytes:
        if self._s3 is None:
            raise RuntimeError("OutputStore.start() was not awaited")
        if not bucket or not key:
            raise InputError(Reason.UNREADABLE_OUTPUT, f"{uri} names no bucket or no key")
        try:
            response = await self._s3.get_object(Bucket=bucket, Key=key)
            async with response["Body"] as body:
                if int(response.get("ContentLength", 0)) > self._max_bytes:
                    raise InputError(
                        Reason.UNREADABLE_OUTPUT, f"{uri} is larger than {self._max_bytes} bytes"
                    )
                data: bytes = await body.read()
        except (BotoCoreError, ClientError, aiohttp.ClientError, TimeoutError) as exc:
            raise translate_s3_error(exc, uri) from exc
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
