"""The normalize stage: inline bytes and S3 objects into the frames a backend takes.

S3 is an in-memory store answering the stage's two reads (a ranged GET, a capped GET) the way
:class:`service.objectstore.ObjectStore` does against S3 (tests/unit/test_objectstore.py runs the
real one against moto); the decode pool and the imaging core are the real ones.
"""

from __future__ import annotations

import asyncio
import io
import threading

import pytest
from PIL import Image
from prometheus_client import CollectorRegistry

from service.capacity import InFlightBytes
from service.errors import BackendError, GaveUp, InputError, Reason
from service.imaging.spec import REKOGNITION_INPUT, BackendInput
from service.messages import S3Image
from service.metrics import PipelineMetrics
from service.objectstore import (
    ObjectForbidden,
    ObjectMissing,
    ObjectRange,
    ObjectTooLarge,
    S3Location,
)
from service.settings import ImageSettings
from service.stages.load import LoadedImage
from service.stages.normalize import S3_PREFIX_BYTES, Normalizer, PreparedImage
from tests import image_files

MB = 1000 * 1000
LOCAL_INPUT = BackendInput("encoded", s3_max_bytes=None)


class Objects:
    """Objects by key; ``errors`` raise instead, once each."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.errors: dict[str, list[Exception]] = {}
        self.ranges: list[str] = []
        self.gets: list[str] = []
        self.downloading = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()

    def _lookup(self, location: S3Location) -> bytes:
        pending = self.errors.get(location.key)
        if pending:
            raise pending.pop(0)
        if location.key not in self.objects:
            raise ObjectMissing("NoSuchKey", location.uri)
        return self.objects[location.key]

    async def get_range(self, location: S3Location, length: int) -> ObjectRange:
        self.ranges.append(location.key)
        data = self._lookup(location)
        return ObjectRange(data[:length], len(data))

    async def get(self, location: S3Location, *, max_bytes: int) -> bytes:
        self.gets.append(location.key)
        data = self._lookup(location)
        if len(data) > max_bytes:
            raise ObjectTooLarge(location.uri, max_bytes)
        self.downloading.set()
        await self.release.wait()
        return data


def normalizer(
    objects: Objects | None,
    *,
    target: BackendInput = REKOGNITION_INPUT,
    in_flight: InFlightBytes | None = None,
    max_download: int = 50 * MB,
    metrics: PipelineMetrics | None = None,
) -> Normalizer:
    return Normalizer(
        target,
        ImageSettings.model_validate({"MODERATION_DECODE_WORKERS": 1}),
        metrics=metrics or PipelineMetrics(CollectorRegistry()),
        objects=objects,
        max_download_bytes=max_download,
        in_flight=in_flight,
    )


async def from_s3(stage: Normalizer, key: str) -> PreparedImage:
    try:
        return await stage.normalize(LoadedImage(S3Image("bucket", key), 0))
    finally:
        await stage.close()


def decoded(data: object) -> Image.Image:
    assert isinstance(data, bytes)
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


async def test_an_s3_object_the_backend_reads_as_it_is_stays_a_reference() -> None:
    objects = Objects({"photo.jpg": image_files.jpeg_photo(2000, 1500)})
    metrics = PipelineMetrics(CollectorRegistry())
    prepared = await from_s3(normalizer(objects, metrics=metrics), "photo.jpg")
    assert [frame.image for frame in prepared.frames] == [S3Image("bucket", "photo.jpg")]
    assert (prepared.format, prepared.converted) == ("jpeg", False)
    assert objects.ranges == ["photo.jpg"]
    assert objects.gets == []  # a ranged read decided it: nothing downloaded
    sample = metrics.registry.get_sample_value(
        "moderation_images_normalized_total", {"format": "jpeg", "action": "passthrough"}
    )
    assert sample == 1


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (image_files.webp_lossy(), "webp"),  # a format Rekognition does not read
        (image_files.wide(12_000, 300), "jpeg"),  # a side over 10,000
        (image_files.tiny("PNG", 40), "png"),  # a side under 80
        (image_files.png() + bytes(15 * MB + 1 - len(image_files.png())), "png"),  # over 15 MB
    ],
)
async def test_an_s3_object_the_backend_cannot_read_is_downloaded_and_converted(
    data: bytes, fmt: str
) -> None:
    objects = Objects({"k": data})
    prepared = await from_s3(normalizer(objects), "k")
    (frame,) = prepared.frames
    image = decoded(frame.image)
    assert image.format == "JPEG"
    assert min(image.size) >= 80
    assert max(image.size) <= 10_000
    assert (prepared.format, prepared.converted) == (fmt, True)
    assert objects.gets == ["k"]


async def test_a_jpeg_whose_header_lies_beyond_the_prefix_is_downloaded() -> None:
    # Two full APP1 segments ahead of the frame header push it beyond the prefix read.
    segment = b"\xff\xe1" + (65535).to_bytes(2, "big") + b"Exif\x00\x00" + bytes(65527)
    jpeg = image_files.jpeg_baseline()
    data = jpeg[:2] + segment * 2 + jpeg[2:]
    assert len(segment) * 2 > S3_PREFIX_BYTES
    objects = Objects({"k": data})
    prepared = await from_s3(normalizer(objects), "k")
    assert objects.gets == ["k"]
    assert prepared.format == "jpeg"


async def test_a_backend_that_cannot_read_s3_gets_the_object_downloaded() -> None:
    data = image_files.jpeg_baseline()
    objects = Objects({"k": data})
    prepared = await from_s3(normalizer(objects, target=LOCAL_INPUT), "k")
    assert objects.ranges == []  # nothing to decide: it is downloaded anyway
    assert [frame.image for frame in prepared.frames] == [data]


async def test_without_s3_reads_a_backend_that_cannot_read_s3_refuses_references() -> None:
    with pytest.raises(InputError) as caught:
        await from_s3(normalizer(None, target=LOCAL_INPUT), "k")
    assert caught.value.reason is Reason.INVALID_S3_OBJECT


async def test_an_object_over_the_download_limit_is_too_large() -> None:
    data = image_files.webp_lossy()
    objects = Objects({"k": data})
    with pytest.raises(InputError) as caught:
        await from_s3(normalizer(objects, max_download=len(data) - 1), "k")
    assert caught.value.reason is Reason.IMAGE_TOO_LARGE
    assert "MODERATION_FETCH_MAX_BYTES" in caught.value.message


@pytest.mark.parametrize(
    "error",
    [ObjectMissing("NoSuchKey", "s3://bucket/k"), ObjectForbidden("AccessDenied", "s3://b/k")],
)
async def test_an_object_s3_will_not_give_is_an_invalid_s3_object(error: Exception) -> None:
    objects = Objects({"k": image_files.webp_lossy()})
    objects.errors["k"] = [error]
    with pytest.raises(InputError) as caught:
        await from_s3(normalizer(objects), "k")
    assert caught.value.reason is Reason.INVALID_S3_OBJECT


async def test_transient_s3_trouble_is_retried_then_given_up() -> None:
    objects = Objects({"k": image_files.jpeg_baseline(), "j": image_files.jpeg_baseline()})
    objects.errors["k"] = [BackendError("SlowDown", "s3") for _ in range(3)]
    objects.errors["j"] = [BackendError("SlowDown", "s3")]
    with pytest.raises(GaveUp) as caught:
        await from_s3(normalizer(objects), "k")
    assert caught.value.attempts == 3
    prepared = await from_s3(normalizer(objects), "j")  # once is not enough to give up
    assert prepared.converted is False


async def test_a_download_counts_against_the_in_flight_bytes_while_held() -> None:
    data = image_files.webp_lossy()
    objects = Objects({"k": data})
    in_flight = InFlightBytes(limit=10 * MB)
    objects.release.clear()
    task = asyncio.create_task(from_s3(normalizer(objects, in_flight=in_flight), "k"))
    await objects.downloading.wait()
    assert in_flight.total == len(data)
    objects.release.set()
    await task
    assert in_flight.total == 0


async def test_a_download_waits_for_room_in_the_byte_budget() -> None:
    first, second = image_files.webp_lossy(), image_files.webp_animated()
    objects = Objects({"first": first, "second": second})
    in_flight = InFlightBytes(limit=len(first) + len(second) - 1)
    objects.release.clear()
    stage = normalizer(objects, in_flight=in_flight)
    one = asyncio.create_task(stage.normalize(LoadedImage(S3Image("b", "first"), 0)))
    await objects.downloading.wait()
    two = asyncio.create_task(stage.normalize(LoadedImage(S3Image("b", "second"), 0)))
    for _ in range(20):
        await asyncio.sleep(0)
    assert objects.gets == ["first"]  # the second waits: both would exceed the budget
    objects.release.set()
    await asyncio.gather(one, two)
    assert objects.gets == ["first", "second"]
    assert in_flight.total == 0
    await stage.close()


async def test_a_closed_stage_takes_no_more_images() -> None:
    stage = normalizer(None)
    await stage.close()
    await stage.close()  # idempotent
    with pytest.raises(RuntimeError):
        await stage.normalize(LoadedImage(image_files.webp_lossy(), 0))


async def test_the_time_limit_starts_when_a_worker_takes_the_image() -> None:
    """Queueing behind other images never counts: with the only worker busy for longer than
    the limit, an image waiting for it is still normalized."""
    stage = Normalizer(
        REKOGNITION_INPUT,
        ImageSettings.model_validate(
            {"MODERATION_DECODE_WORKERS": 1, "MODERATION_DECODE_TIMEOUT_S": 0.1}
        ),
        metrics=PipelineMetrics(CollectorRegistry()),
        max_download_bytes=MB,
    )
    busy = threading.Event()
    stage._pool.submit(busy.wait, 5)  # the only worker, taken
    waiting = asyncio.create_task(stage.normalize(LoadedImage(image_files.webp_lossy(), 0)))
    await asyncio.sleep(0.3)  # three times the limit, in the queue
    assert not waiting.done()
    busy.set()
    prepared = await waiting
    assert prepared.converted
    await stage.close()
