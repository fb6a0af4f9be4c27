"""The console's image source for S3 references: real aioboto3 against moto's S3 server and the
scripted S3 endpoint; what a reviewer's page is told when the image cannot be shown."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aioboto3
import pytest

from service.console.image_source import ImageSource, ImageUnavailable
from service.fetch import FetchPolicy
from service.kafka.embedded import free_port
from service.messages import S3Image
from tests.fakes.s3_answers import S3Answers, serve_s3_answers
from tests.images import solid_png

BUCKET = "console-images"


@pytest.fixture(autouse=True)
def one_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    """The console keeps the SDK's retry defaults; one attempt keeps the failure tests quick."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")


async def started(endpoint: str) -> ImageSource:
    source = ImageSource(FetchPolicy(), region="us-east-1", s3_endpoint_url=endpoint)
    await source.start()
    return source


@pytest.fixture
async def moto_source(moto_s3: str) -> AsyncIterator[ImageSource]:
    async with aioboto3.Session().client("s3", region_name="us-east-1", endpoint_url=moto_s3) as s3:
        await s3.create_bucket(Bucket=BUCKET)
        await s3.put_object(Bucket=BUCKET, Key="dog.png", Body=solid_png(100, 100))
        await s3.put_object(Bucket=BUCKET, Key="notes.txt", Body=b"no image here")
    source = await started(moto_s3)
    try:
        yield source
    finally:
        await source.close()


async def test_an_s3_image_is_shown(moto_source: ImageSource) -> None:
    data, content_type = await moto_source.load(S3Image(BUCKET, "dog.png"))
    assert content_type == "image/png" and data == solid_png(100, 100)


@pytest.mark.parametrize(
    ("image", "status", "says"),
    [
        (S3Image(BUCKET, "missing.png"), 502, "could not be read (NoSuchKey)"),
        (S3Image("no-such-bucket-here", "k.png"), 502, "could not be read (NoSuchBucket)"),
        (S3Image(BUCKET, "notes.txt"), 502, "not a displayable image"),
        (S3Image("no/such bucket", "k"), 422, "not a valid bucket and key"),
    ],
)
async def test_what_the_page_is_told(
    moto_source: ImageSource, image: S3Image, status: int, says: str
) -> None:
    with pytest.raises(ImageUnavailable) as caught:
        await moto_source.load(image)
    assert caught.value.status == status and says in caught.value.reason


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("denied", "could not be read (AccessDenied)"),
        (S3Answers.ENDLESS, "larger than 15 MB"),
        ("slow-down", "S3 is unreachable (SlowDown)"),
    ],
)
async def test_store_trouble_is_a_502_that_names_no_location(key: str, says: str) -> None:
    async with serve_s3_answers() as answers:
        source = await started(answers.endpoint)
        try:
            with pytest.raises(ImageUnavailable) as caught:
                await source.load(S3Image(BUCKET, key))
        finally:
            await source.close()
    assert caught.value.status == 502 and says in caught.value.reason
    assert BUCKET not in caught.value.reason and answers.endpoint not in caught.value.reason


async def test_an_unreachable_store_is_a_502() -> None:
    source = await started(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(ImageUnavailable) as caught:
            await source.load(S3Image(BUCKET, "dog.png"))
    finally:
        await source.close()
    assert caught.value.status == 502 and "S3 is unreachable" in caught.value.reason
