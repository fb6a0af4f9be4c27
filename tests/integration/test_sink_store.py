"""The sink's output store with the real aioboto3 client: what is retried and what is not."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import BackendError, InputError, Reason
from service.kafka.embedded import free_port
from service.review.outputs import OutputStore


async def read(endpoint: str, uri: str) -> bytes:
    store = OutputStore(region="us-east-1", s3_endpoint_url=endpoint, local_root=None)
    await store.start()
    try:
        return await store.read(uri)
    finally:
        await store.close()


@pytest.mark.parametrize(
    "uri",
    [
        "s3:///etc/passwd",
        "s3://Not_A_Bucket!/fd/2026/01/01/00/00/00/loop/output.json",  # ParamValidationError
        "s3://missing-bucket/fd/2026/01/01/00/00/00/loop/output.json",  # NoSuchBucket
    ],
)
async def test_requests_that_cannot_succeed_are_the_events_problem(moto_s3: str, uri: str) -> None:
    with pytest.raises(InputError) as caught:
        await read(moto_s3, uri)
    assert caught.value.reason == Reason.UNREADABLE_OUTPUT


async def test_a_store_that_does_not_answer_is_retriable() -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(BackendError) as caught:
        await read(closed, "s3://bucket/fd/2026/01/01/00/00/00/loop/output.json")
    assert caught.value.retriable


async def test_local_outputs_stay_inside_the_store_and_under_the_limit(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / "fd").mkdir(parents=True)
    (tmp_path / "secret.json").write_bytes(b"{}")
    (root / "fd" / "link.json").symlink_to(tmp_path / "secret.json")
    (root / "fd" / "big.json").write_bytes(b" " * 101)
    (root / "fd" / "ok.json").write_bytes(b"{}")
    store = OutputStore(region="us-east-1", s3_endpoint_url=None, local_root=root, max_bytes=100)
    await store.start()
    try:
        assert await store.read((root / "fd" / "ok.json").as_uri()) == b"{}"
        for name in ("link.json", "big.json", "missing.json", "../../secret.json"):
            with pytest.raises(InputError) as caught:
                await store.read(f"{(root / 'fd').as_uri()}/{name}")
            assert caught.value.reason == Reason.UNREADABLE_OUTPUT
    finally:
        await store.close()
