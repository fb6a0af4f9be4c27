"""The Rekognition backend against real AWS: runs only where an operator opts in."""

from __future__ import annotations

import os

import pytest

from service.backends.rekognition import RekognitionBackend
from service.errors import InputError, Reason
from service.settings import Settings
from tests.images import solid_png

pytestmark = [
    pytest.mark.aws,
    pytest.mark.skipif(
        os.environ.get("MODERATION_AWS_TESTS") != "1",
        reason="real AWS: set MODERATION_AWS_TESTS=1 with credentials and AWS_REGION to run",
    ),
]


@pytest.fixture
async def backend() -> RekognitionBackend:
    settings = Settings.from_env({"AWS_REGION": os.environ.get("AWS_REGION", "us-east-1")})
    backend = RekognitionBackend(settings.backend)
    await backend.start()
    yield backend  # type: ignore[misc]
    await backend.close()


async def test_real_rekognition_moderates_a_plain_image(backend: RekognitionBackend) -> None:
    result = await backend.moderate(solid_png(), 50.0)
    assert result.model_version is not None
    assert result.model_version.startswith("7")
    assert result.labels == []  # a solid colour square is not objectionable


async def test_real_rekognition_refuses_a_tiny_image_as_input_error(
    backend: RekognitionBackend,
) -> None:
    with pytest.raises(InputError) as caught:
        await backend.moderate(solid_png(8, 8), 50.0)
    assert caught.value.reason in {Reason.INVALID_IMAGE_FORMAT, Reason.INVALID_PARAMETER}
