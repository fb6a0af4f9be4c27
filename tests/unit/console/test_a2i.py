"""The console's output.json writer: S3 (moto's server) or the output directory, and nowhere else;
what it writes, the sink's output store reads back."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aioboto3
import pytest

from service.console.a2i import DeliveryError, OutputWriter
from service.console.settings import FlowDefinition, OutputLocation
from service.kafka.embedded import free_port
from service.review.outputs import OutputStore

FLOW = FlowDefinition(
    arn="arn:aws:sagemaker:us-east-1:000000000000:flow-definition/fd",
    name="fd",
    region="us-east-1",
    account="000000000000",
)
ITEM: Any = SimpleNamespace(loop_name="loop-1", created_at=1_767_225_600.0)
BUCKET = "console-outputs"


@pytest.fixture(autouse=True)
def one_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    """The console keeps the SDK's retry defaults; one attempt keeps the failure tests quick."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")


async def write_then_read(
    location: OutputLocation, endpoint: str | None, local_root: Path | None
) -> tuple[str, bytes]:
    writer = OutputWriter(location, region="us-east-1", s3_endpoint_url=endpoint)
    reader = OutputStore(region="us-east-1", s3_endpoint_url=endpoint, local_root=local_root)
    await writer.start()
    await reader.start()
    try:
        uri = writer.uri_for(ITEM, FLOW)
        await writer.write(uri, b'{"humanAnswers": []}')
        await writer.write(uri, b'{"humanAnswers": []}')  # idempotent: same bytes, same place
        return uri, await reader.read(uri)
    finally:
        await reader.close()
        await writer.close()


async def test_s3_outputs_are_what_the_sink_reads(moto_s3: str) -> None:
    async with aioboto3.Session().client("s3", region_name="us-east-1", endpoint_url=moto_s3) as s3:
        await s3.create_bucket(Bucket=BUCKET)
    location = OutputLocation(kind="s3", bucket=BUCKET, prefix="reviews", directory=None)
    uri, body = await write_then_read(location, moto_s3, None)
    assert uri == f"s3://{BUCKET}/reviews/fd/2026/01/01/00/00/00/loop-1/output.json"
    assert body == b'{"humanAnswers": []}'


async def test_file_outputs_are_what_the_sink_reads(tmp_path: Path) -> None:
    directory = tmp_path / "out dir"
    location = OutputLocation(kind="file", bucket=None, prefix="", directory=directory)
    uri, body = await write_then_read(location, None, tmp_path)
    assert uri.startswith(directory.as_uri()) and body == b'{"humanAnswers": []}'


async def test_nothing_is_written_outside_the_output_directory(tmp_path: Path) -> None:
    directory = tmp_path / "out"
    location = OutputLocation(kind="file", bucket=None, prefix="", directory=directory)
    writer = OutputWriter(location, region="us-east-1", s3_endpoint_url=None)
    await writer.start()
    try:
        for uri in (f"{directory.as_uri()}/../escaped.json", (tmp_path / "x.json").as_uri()):
            with pytest.raises(DeliveryError):
                await writer.write(uri, b"{}")
    finally:
        await writer.close()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


async def test_a_store_that_does_not_answer_leaves_the_decision_in_the_outbox() -> None:
    location = OutputLocation(kind="s3", bucket=BUCKET, prefix="", directory=None)
    writer = OutputWriter(
        location, region="us-east-1", s3_endpoint_url=f"http://127.0.0.1:{free_port()}"
    )
    await writer.start()
    try:
        with pytest.raises(DeliveryError) as caught:
            await writer.write(writer.uri_for(ITEM, FLOW), b"{}")
    finally:
        await writer.close()
    assert caught.value.retriable
