"""The object store: real aioboto3 against moto's S3 server (and a scripted S3 endpoint for the
answers moto will not give), real files in a temporary directory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aioboto3
import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)

from service.errors import BackendError, BackendUnavailable
from service.kafka.embedded import free_port
from service.objectstore import (
    CHUNK_BYTES,
    FileLocation,
    InvalidLocation,
    ObjectForbidden,
    ObjectMissing,
    ObjectRefused,
    ObjectStore,
    ObjectStoreError,
    ObjectTooLarge,
    S3Location,
    S3Options,
    parse_location,
    read_capped,
    translate_error,
)
from tests.fakes.s3_answers import S3Answers, serve_s3_answers

REGION = "us-east-1"
BUCKET = "objectstore-tests"


@contextlib.asynccontextmanager
async def started(options: S3Options, file_root: Path | None = None) -> AsyncIterator[ObjectStore]:
    store = ObjectStore(options, file_root=file_root)
    await store.start()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(scope="module")
async def bucket(moto_s3: str) -> str:
    async with aioboto3.Session().client("s3", region_name=REGION, endpoint_url=moto_s3) as s3:
        with contextlib.suppress(ClientError):  # another module's run may have made it
            await s3.create_bucket(Bucket=BUCKET)
        await s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return BUCKET


@pytest.fixture
async def s3_store(moto_s3: str, bucket: str) -> AsyncIterator[ObjectStore]:
    async with started(S3Options(region=REGION, endpoint_url=moto_s3, max_attempts=1)) as store:
        yield store


def unique_key() -> str:
    return f"{uuid.uuid4().hex}/output.json"


# -- S3 ------------------------------------------------------------------------------------------


async def test_s3_round_trip(s3_store: ObjectStore) -> None:
    where = S3Location(BUCKET, unique_key())
    await s3_store.put(where, b'{"ok": true}', content_type="application/json")
    assert await s3_store.get(where, max_bytes=12) == b'{"ok": true}'


async def test_s3_reads_refuse_more_than_the_limit(s3_store: ObjectStore) -> None:
    where = S3Location(BUCKET, unique_key())
    await s3_store.put(where, b"x" * 1000)
    assert len(await s3_store.get(where, max_bytes=1000)) == 1000
    with pytest.raises(ObjectTooLarge) as caught:
        await s3_store.get(where, max_bytes=999)
    assert caught.value.limit == 999


@pytest.mark.parametrize(("size", "length"), [(1000, 100), (100, 1000), (1, 1), (0, 64)])
async def test_s3_ranged_reads_give_the_start_and_the_whole_size(
    s3_store: ObjectStore, size: int, length: int
) -> None:
    where = S3Location(BUCKET, unique_key())
    body = bytes(range(256)) * 4
    await s3_store.put(where, body[:size])
    got = await s3_store.get_range(where, length)
    assert got.data == body[: min(size, length)]
    assert got.size == size


async def test_a_ranged_read_of_a_missing_object_is_missing(s3_store: ObjectStore) -> None:
    with pytest.raises(ObjectMissing):
        await s3_store.get_range(S3Location(BUCKET, unique_key()), 10)


@pytest.mark.parametrize(
    ("bucket_name", "key", "version"),
    [(BUCKET, "no/such/key", None), ("no-such-bucket-here", "k", None), (BUCKET, "k", "nope")],
    ids=["key", "bucket", "version"],
)
async def test_s3_missing_objects(
    s3_store: ObjectStore, bucket_name: str, key: str, version: str | None
) -> None:
    if version is not None:
        await s3_store.put(S3Location(BUCKET, key), b"data")
    with pytest.raises(ObjectMissing):
        await s3_store.get(S3Location(bucket_name, key, version), max_bytes=100)


async def test_s3_versions_are_read_as_asked(s3_store: ObjectStore, moto_s3: str) -> None:
    key = unique_key()
    await s3_store.put(S3Location(BUCKET, key), b"first")
    await s3_store.put(S3Location(BUCKET, key), b"second")
    async with aioboto3.Session().client("s3", region_name=REGION, endpoint_url=moto_s3) as s3:
        listed = await s3.list_object_versions(Bucket=BUCKET, Prefix=key)
    (older,) = [version for version in listed["Versions"] if not version["IsLatest"]]
    assert await s3_store.get(S3Location(BUCKET, key, older["VersionId"]), max_bytes=10) == b"first"
    assert await s3_store.get(S3Location(BUCKET, key), max_bytes=10) == b"second"


async def test_a_bucket_name_s3_cannot_have_is_an_invalid_location(s3_store: ObjectStore) -> None:
    with pytest.raises(InvalidLocation):
        await s3_store.get(S3Location("Not_A_Bucket!", "k"), max_bytes=10)


async def test_a_store_that_does_not_answer_is_transient() -> None:
    nowhere = S3Options(
        region=REGION, endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=1
    )
    async with started(nowhere) as store:
        with pytest.raises(BackendError) as caught:
            await store.get(S3Location(BUCKET, "k"), max_bytes=10)
    assert caught.value.retriable
    assert not isinstance(caught.value, BackendUnavailable)


async def test_the_sdks_endpoint_variable_applies_without_ours(
    moto_s3: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        monkeypatch.setenv(variable, moto_s3)
        async with started(S3Options(region=REGION, max_attempts=1, connect_timeout_s=5)) as store:
            where = S3Location(BUCKET, unique_key())
            await store.put(where, variable.encode())
            assert await store.get(where, max_bytes=100) == variable.encode()


async def test_our_endpoint_wins_over_the_sdks(
    moto_s3: str, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")  # dead
    async with started(S3Options(region=REGION, endpoint_url=moto_s3, max_attempts=1)) as store:
        where = S3Location(BUCKET, unique_key())
        await store.put(where, b"here")
        assert await store.get(where, max_bytes=10) == b"here"


# -- answers moto does not give: a scripted S3 endpoint ------------------------------------------


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[S3Answers, ObjectStore]]:
    async with serve_s3_answers() as answers:
        options = S3Options(region=REGION, endpoint_url=answers.endpoint, max_attempts=1)
        async with started(options) as store:
            yield answers, store


async def test_a_capped_read_stops_without_reading_it_all(
    scripted: tuple[S3Answers, ObjectStore],
) -> None:
    script, store = scripted
    with pytest.raises(ObjectTooLarge):
        await store.get(S3Location("b", S3Answers.ENDLESS), max_bytes=1024 * 1024)
    await asyncio.wait_for(script.endless_done.wait(), 30)
    # The server stopped because the reader hung up, long before the body's end.
    assert script.endless_sent < script.ENDLESS_LIMIT // 4


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("denied", ObjectForbidden),
        ("bad-key-id", BackendUnavailable),
        ("expired", BackendUnavailable),
        ("slow-down", BackendError),
        ("archived", ObjectRefused),
    ],
)
async def test_store_answers_become_our_errors(
    scripted: tuple[S3Answers, ObjectStore], key: str, expected: type[Exception]
) -> None:
    _, store = scripted
    with pytest.raises(expected) as caught:
        await store.get(S3Location("b", key), max_bytes=100)
    assert type(caught.value) is expected  # not merely a broader kind


def test_access_denied_is_an_outage_callers_can_tell_apart() -> None:
    assert issubclass(ObjectForbidden, BackendUnavailable)
    assert not ObjectForbidden("AccessDenied", "s3://b/k").retriable


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ParamValidationError(report="Invalid bucket name"), InvalidLocation),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), BackendError),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), BackendError),
        (TimeoutError(), BackendError),
        (NoCredentialsError(), BackendUnavailable),
        (
            ClientError(
                {"Error": {"Code": "InternalError"}, "ResponseMetadata": {"HTTPStatusCode": 500}},
                "GetObject",
            ),
            BackendError,
        ),
        (
            ClientError(
                {"Error": {"Code": "NoSuchKey"}, "ResponseMetadata": {"HTTPStatusCode": 404}},
                "GetObject",
            ),
            ObjectMissing,
        ),
    ],
)
def test_sdk_errors_translate_by_type_and_code(error: Exception, expected: type) -> None:
    assert type(translate_error(error, "s3://b/k")) is expected


async def test_read_capped_stops_at_the_first_chunk_past_the_limit() -> None:
    class Endless:
        def __init__(self) -> None:
            self.read_bytes = 0

        async def read(self, amount: int) -> bytes:
            self.read_bytes += amount
            return b"\0" * amount

    stream = Endless()
    with pytest.raises(ObjectTooLarge):
        await read_capped(stream, 1_000_000, "s3://b/k")
    assert stream.read_bytes <= 1_000_000 + CHUNK_BYTES


# -- files ---------------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root").mkdir()
    (tmp_path / "outside.json").write_bytes(b"secret")
    return tmp_path / "root"


async def test_file_round_trip_is_atomic(root: Path) -> None:
    async with started(S3Options(region=REGION), root) as store:
        where = FileLocation(root / "fd" / "2026" / "loop" / "output.json")
        await store.put(where, b"answers")
        await store.put(where, b"answers, again")
        assert await store.get(where, max_bytes=100) == b"answers, again"
    assert [path.name for path in where.path.parent.iterdir()] == ["output.json"]  # no temps


@pytest.mark.parametrize(
    "escape",
    ["dotdot", "symlink", "symlinked-dir", "absolute", "loop"],
)
async def test_files_outside_the_root_are_refused(root: Path, escape: str) -> None:
    outside = root.parent / "outside.json"
    if escape == "dotdot":
        path = root / ".." / "outside.json"
    elif escape == "symlink":
        path = root / "link.json"
        path.symlink_to(outside)
    elif escape == "symlinked-dir":
        (root / "dir").symlink_to(root.parent)
        path = root / "dir" / "outside.json"
    elif escape == "absolute":
        path = outside
    else:
        (root / "a").symlink_to(root / "b")
        (root / "b").symlink_to(root / "a")
        path = root / "a"
    async with started(S3Options(region=REGION), root) as store:
        with pytest.raises(InvalidLocation):
            await store.get(FileLocation(path), max_bytes=100)
        with pytest.raises(InvalidLocation):
            await store.put(FileLocation(path), b"overwritten")
    assert outside.read_bytes() == b"secret"


async def test_files_need_a_root(root: Path) -> None:
    async with started(S3Options(region=REGION)) as store:
        with pytest.raises(InvalidLocation):
            await store.get(FileLocation(root / "x.json"), max_bytes=100)


async def test_file_reads_are_capped_and_missing_files_are_missing(root: Path) -> None:
    (root / "big.json").write_bytes(b"x" * 101)
    os.mkfifo(root / "fifo")  # a reader must not block on it
    async with started(S3Options(region=REGION), root) as store:
        with pytest.raises(ObjectTooLarge):
            await store.get(FileLocation(root / "big.json"), max_bytes=100)
        assert len(await store.get(FileLocation(root / "big.json"), max_bytes=101)) == 101
        for missing in ("nothing.json", "fifo", "."):
            with pytest.raises(ObjectMissing):
                await store.get(FileLocation(root / missing), max_bytes=100)


# -- locations -----------------------------------------------------------------------------------


def test_locations_parse() -> None:
    assert parse_location("s3://bucket/a/b%20c.json") == S3Location("bucket", "a/b c.json")
    assert parse_location("file:///srv/out/x%20y.json") == FileLocation(Path("/srv/out/x y.json"))
    assert parse_location("file://localhost/srv/x") == FileLocation(Path("/srv/x"))


@pytest.mark.parametrize(
    "uri",
    [
        "s3:///etc/passwd",
        "s3://bucket",
        "s3://bucket/",
        "s3://bucket/key?versionId=1",
        "s3://bucket:99/key",
        "file://host/etc/passwd",
        "file:relative/path",
        "file:///a%00b",
        "http://example.com/x",
        "",
    ],
)
def test_what_is_not_a_location(uri: str) -> None:
    with pytest.raises(InvalidLocation):
        parse_location(uri)


def test_store_errors_are_not_retriable_and_carry_a_code() -> None:
    error = ObjectMissing("NoSuchKey", "s3://b/k")
    assert isinstance(error, ObjectStoreError) and not error.retriable
    assert error.code == "NoSuchKey" and str(error) == "NoSuchKey: s3://b/k"


async def test_file_ranged_reads_give_the_start_and_the_whole_size(root: Path) -> None:
    async with started(S3Options(region=REGION), root) as store:
        where = FileLocation(root / "image.bin")
        await store.put(where, b"0123456789")
        got = await store.get_range(where, 4)
    assert (got.data, got.size) == (b"0123", 10)
