"""The sink's output store with the real aioboto3 client: what is retried and what is not."""

from __future__ import annotations

import pytest

from service.errors import BackendError, InputError, Reason
from service.kafka.embedded import free_port
from service.review.store import OutputStore


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
