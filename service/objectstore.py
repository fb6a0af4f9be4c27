"""One store for objects named ``s3://bucket/key`` or ``file:///path``.

Reviewers' ``output.json`` files, images read by the local model and the console's images all
live in S3 (or an S3-compatible store) or, in the embedded setup, a local directory. This module
is the one place that talks to either, and the one place botocore's and aiohttp's errors become
ours, decided by type and code, never by message:

* the location names no object we may touch (a bad URI, a bucket name S3 cannot have, a file
  outside the allowed root): :class:`InvalidLocation`;
* no such bucket, key, version or file: :class:`ObjectMissing`;
* over the caller's size limit: :class:`ObjectTooLarge`, found out before more than the limit
  (plus one chunk) is read, whatever the store claims the size is;
* any other request the store refuses for good (an archived object, a wrong region):
  :class:`ObjectRefused`;
* our credentials or permissions: :class:`~service.errors.BackendUnavailable` (an outage), with
  :class:`ObjectForbidden` for access denied to the object itself, since for callers that read
  locations taken from a topic that is the location's problem as much as ours;
* throttling, 5xx, timeouts, connection errors: a transient
  :class:`~service.errors.BackendError`, retried by the caller within its own deadline.

Locations come from topics, so they are untrusted: ``file://`` paths are resolved (``..`` and
symlinks followed) and must stay inside the store's root; reads always carry a size limit.

S3 endpoints: an explicit ``endpoint_url`` (our variables, e.g. ``S3_ENDPOINT_URL``) wins;
without one the SDK's own ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` apply, then AWS.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol
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
    ParamValidationError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from service.errors import BackendError, BackendUnavailable, ServiceError

CHUNK_BYTES: Final = 256 * 1024

# -- locations -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str
    version: str | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class FileLocation:
    path: Path

    @property
    def uri(self) -> str:
        return self.path.as_uri() if self.path.is_absolute() else str(self.path)


Location = S3Location | FileLocation


@dataclass(frozen=True)
class ObjectRange:
    """The first bytes of an object, and the size of all of it."""

    data: bytes
    size: int


def parse_location(uri: str) -> Location:
    """``s3://bucket/key`` or an absolute ``file:///path`` (percent-decoded), else
    :class:`InvalidLocation`."""
    try:
        parts = urlsplit(uri)
        port = parts.port  # raises on a non-numeric port
    except ValueError as exc:
        raise InvalidLocation("InvalidURI", f"not a URI: {uri!r}") from exc
    if parts.query or parts.fragment or port is not None:
        raise InvalidLocation("InvalidURI", f"not a plain object URI: {uri!r}")
    if parts.scheme == "s3":
        key = unquote(parts.path.removeprefix("/"))
        if not parts.netloc or not key:
            raise InvalidLocation("InvalidURI", f"{uri!r} names no bucket or no key")
        return S3Location(parts.netloc, key)
    if parts.scheme == "file":
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not path.startswith("/") or "\x00" in path:
            raise InvalidLocation("InvalidURI", f"{uri!r} is not an absolute file:// URI")
        return FileLocation(Path(path))
    raise InvalidLocation("InvalidURI", f"expected s3:// or file://, got {uri!r}")


# -- errors --------------------------------------------------------------------------------------


class ObjectStoreError(ServiceError):
    """The object cannot be read or written as asked, and asking again will not change that.

    ``code`` is S3's error code (or our own for files and limits), safe to show or log.
    """

    retriable = False

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class InvalidLocation(ObjectStoreError):
    """The location cannot name an object here: a bad URI, a bucket name S3 refuses, a file
    outside the store's root, ``file://`` not enabled."""


class ObjectMissing(ObjectStoreError):
    """No such bucket, key, version or file."""


class ObjectTooLarge(ObjectStoreError):
    """Larger than the caller's limit; reading stopped there."""

    def __init__(self, location: str, limit: int) -> None:
        super().__init__("TooLarge", f"{location} is larger than {limit} bytes")
        self.limit = limit


class ObjectRefused(ObjectStoreError):
    """Any other request the store refuses for good (archived object, wrong region, ...)."""


class ObjectForbidden(BackendUnavailable):
    """Access denied to this object: our permissions (an outage), or a location that points
    where we may not read. Callers that take locations from a topic decide which it is."""


# S3 codes that mean "asking again later can help", whatever the HTTP status.
_TRANSIENT_CODES: Final = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
    }
)
_MISSING_CODES: Final = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchVersion", "NotFound", "404"})
# Our credentials, not the object: expired or skewed signatures heal when they are refreshed.
_CREDENTIAL_CODES: Final = frozenset(
    {
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
        "RequestTimeTooSkewed",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
    }
)
_FORBIDDEN_CODES: Final = frozenset({"AccessDenied", "AllAccessDisabled", "403"})
_TRANSIENT_BOTOCORE: Final = (
    BotoConnectionError,  # EndpointConnectionError, ConnectTimeoutError, SSLError, proxy errors
    HTTPClientError,  # ReadTimeoutError, ConnectionClosedError, ResponseStreamingError
    IncompleteReadError,
    ChecksumError,  # a body damaged on the way: reading it again may work
    aiohttp.ClientError,
    TimeoutError,
)
_CREDENTIAL_BOTOCORE: Final = (
    NoCredentialsError,
    PartialCredentialsError,
    CredentialRetrievalError,
    MetadataRetrievalError,
)


def translate_error(exc: Exception, uri: str) -> ServiceError:
    """The one boundary: an SDK or transport error as one of ours, by type and code."""
    if isinstance(exc, ClientError):
        return _translate_client_error(exc, uri)
    if isinstance(exc, ParamValidationError):  # the SDK refuses to send it (a bad bucket name)
        return InvalidLocation("InvalidParameter", f"{uri}: {exc}")
    if isinstance(exc, _CREDENTIAL_BOTOCORE):
        return BackendUnavailable(type(exc).__name__, f"{uri}: {exc}")
    # Transport trouble, and any other SDK error: asking again may help; callers bound retries.
    return BackendError(type(exc).__name__, f"{uri}: {exc}")


def _translate_client_error(exc: ClientError, uri: str) -> ServiceError:
    code = str(exc.response.get("Error", {}).get("Code", "")) or "S3Error"
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if status >= 500 or status == 429 or code in _TRANSIENT_CODES:
        return BackendError(code, f"{uri}: {exc}")
    if code in _MISSING_CODES:
        return ObjectMissing(code, uri)
    if code in _CREDENTIAL_CODES:
        return BackendUnavailable(code, f"{uri}: {exc}")
    if code in _FORBIDDEN_CODES:
        return ObjectForbidden(code, uri)
    return ObjectRefused(code, f"{uri}: {exc}")


def _file_error(exc: OSError, uri: str) -> ServiceError:
    code = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return ObjectMissing(code, uri)
    if isinstance(exc, PermissionError):
        return ObjectForbidden(code, uri)
    return BackendError(code, f"{uri}: {exc.strerror}")  # the disk, not the path


# -- capped reads --------------------------------------------------------------------------------


class ByteStream(Protocol):
    async def read(self, amount: int) -> bytes: ...


async def read_capped(stream: ByteStream, max_bytes: int, uri: str) -> bytes:
    """Read to the end, giving up as soon as more than ``max_bytes`` arrived (a declared
    Content-Length may lie, or be absent)."""
    chunks: list[bytes] = []
    total = 0
    while chunk := await stream.read(CHUNK_BYTES):
        total += len(chunk)
        if total > max_bytes:
            raise ObjectTooLarge(uri, max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


# -- the store -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Options:
    """How patient one S3 call is; ``None`` leaves the SDK's default."""

    region: str | None = None
    endpoint_url: str | None = None
    connect_timeout_s: float | None = None
    read_timeout_s: float | None = None
    max_attempts: int | None = None  # 1: no SDK retries, the caller retries with its deadline


class ObjectStore:
    """Reads and writes objects in S3 and, when ``file_root`` is given, files under it."""

    def __init__(self, s3: S3Options, *, file_root: Path | None = None) -> None:
        self._options = s3
        self._file_root = file_root.resolve() if file_root is not None else None
        self._stack = contextlib.AsyncExitStack()
        self._s3: Any = None

    async def start(self) -> None:
        options = self._options
        # Only what was asked for: an explicit None would mean "no timeout" to botocore.
        settings: dict[str, Any] = {}
        if options.connect_timeout_s is not None:
            settings["connect_timeout"] = options.connect_timeout_s
        if options.read_timeout_s is not None:
            settings["read_timeout"] = options.read_timeout_s
        if options.max_attempts is not None:
            settings["retries"] = {"mode": "standard", "total_max_attempts": options.max_attempts}
        config = Config(**settings)
        self._s3 = await self._stack.enter_async_context(
            aioboto3.Session().client(
                "s3", region_name=options.region, endpoint_url=options.endpoint_url, config=config
            )
        )

    async def close(self) -> None:
        self._s3 = None
        await self._stack.aclose()

    async def get(self, location: Location, *, max_bytes: int) -> bytes:
        """The object's bytes, at most ``max_bytes`` of them (else :class:`ObjectTooLarge`)."""
        if isinstance(location, S3Location):
            return await self._get_s3(location, max_bytes)
        path = self._inside_root(location)
        return await asyncio.to_thread(_read_file, path, max_bytes, location.uri)

    async def get_range(self, location: Location, length: int) -> ObjectRange:
        """The object's first ``length`` bytes (fewer when it is shorter) and its whole size: one
        ranged GET, so a decision about a large object costs a few kilobytes."""
        if length < 1:
            raise ValueError("length must be at least 1")
        if isinstance(location, S3Location):
            return await self._get_s3_range(location, length)
        path = self._inside_root(location)
        return await asyncio.to_thread(_read_file_range, path, length, location.uri)

    async def put(
        self, location: Location, body: bytes, *, content_type: str = "application/octet-stream"
    ) -> None:
        """Store ``body``; readers see the whole object or none of it (files: write, fsync,
        rename)."""
        if isinstance(location, S3Location):
            await self._put_s3(location, body, content_type)
            return
        path = self._inside_root(location)
        await asyncio.to_thread(_write_file, path, body, location.uri)

    def _client(self) -> Any:
        if self._s3 is None:
            raise RuntimeError("ObjectStore.start() was not awaited")
        return self._s3

    async def _get_s3(self, location: S3Location, max_bytes: int) -> bytes:
        client = self._client()
        request = {"Bucket": location.bucket, "Key": location.key}
        if location.version is not None:
            request["VersionId"] = location.version
        try:
            response = await client.get_object(**request)
            body = response["Body"]
            # Not ``as body``: entering yields aiohttp's response, whose read() takes no size.
            async with body:  # releases the connection, also when we stop reading early
                if int(response.get("ContentLength") or 0) > max_bytes:
                    raise ObjectTooLarge(location.uri, max_bytes)
                return await read_capped(body, max_bytes, location.uri)
        except (BotoCoreError, ClientError, aiohttp.ClientError, TimeoutError) as exc:
            raise translate_error(exc, location.uri) from exc

    async def _get_s3_range(self, location: S3Location, length: int) -> ObjectRange:
        client = self._client()
        request = {"Bucket": location.bucket, "Key": location.key, "Range": f"bytes=0-{length - 1}"}
        if location.version is not None:
            request["VersionId"] = location.version
        try:
            response = await client.get_object(**request)
            body = response["Body"]
            async with body:
                data = await read_capped(body, length, location.uri)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return ObjectRange(b"", 0)  # S3's answer for any range of an empty object
            raise translate_error(exc, location.uri) from exc
        except (BotoCoreError, aiohttp.ClientError, TimeoutError) as exc:
            raise translate_error(exc, location.uri) from exc
        # "bytes 0-65535/1234567"; absent when the store ignored the range (the whole object).
        content_range = str(response.get("ContentRange") or "")
        _, _, total = content_range.rpartition("/")
        size = int(total) if total.isdigit() else len(data)
        return ObjectRange(data, size)

    async def _put_s3(self, location: S3Location, body: bytes, content_type: str) -> None:
        client = self._client()
        try:
            await client.put_object(
                Bucket=location.bucket, Key=location.key, Body=body, ContentType=content_type
            )
        except (BotoCoreError, ClientError, aiohttp.ClientError, TimeoutError) as exc:
            raise translate_error(exc, location.uri) from exc

    def _inside_root(self, location: FileLocation) -> Path:
        """The real path (``..`` and symlinks resolved) if it stays inside the root."""
        if self._file_root is None:
            raise InvalidLocation(
                "FileNotEnabled", f"file:// locations are not enabled here: {location.uri}"
            )
        try:
            resolved = location.path.resolve()
        except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL byte
            raise InvalidLocation("InvalidPath", f"{location.uri}: {exc}") from exc
        if not resolved.is_relative_to(self._file_root):
            raise InvalidLocation("OutsideRoot", f"{location.uri} is outside {self._file_root}")
        return resolved


def _read_file(path: Path, max_bytes: int, uri: str) -> bytes:
    try:
        # No following a symlink swapped in after the check; no blocking on a FIFO.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ObjectMissing("NotAFile", f"{uri} is not a regular file")
            with os.fdopen(fd, "rb", closefd=False) as file:
                data = file.read(max_bytes + 1)  # never more than one byte past the limit
        finally:
            os.close(fd)
    except OSError as exc:
        raise _file_error(exc, uri) from exc
    if len(data) > max_bytes:
        raise ObjectTooLarge(uri, max_bytes)
    return data


def _read_file_range(path: Path, length: int, uri: str) -> ObjectRange:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise ObjectMissing("NotAFile", f"{uri} is not a regular file")
            with os.fdopen(fd, "rb", closefd=False) as file:
                data = file.read(length)
        finally:
            os.close(fd)
    except OSError as exc:
        raise _file_error(exc, uri) from exc
    return ObjectRange(data, status.st_size)


def _write_file(path: Path, body: bytes, uri: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("xb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _file_error(exc, uri) from exc
