"""The backend the settings ask for, built at start-up (the local one only when installed)."""

from __future__ import annotations

from service.backends.base import ModerationBackend
from service.backends.rekognition import RekognitionBackend
from service.errors import ConfigError
from service.settings import Settings


def build_backend(settings: Settings) -> ModerationBackend:
    """``MODERATION_BACKEND``'s backend, unstarted; a missing ``local`` extra is a ConfigError."""
    backend = settings.backend
    if backend.kind == "rekognition":
        return RekognitionBackend(backend)
    try:
        from service.backends.local import LocalModelBackend  # noqa: PLC0415  (optional extra)
    except ImportError as exc:
        raise ConfigError(
            "MODERATION_BACKEND", f"'local' needs the local extra: pip install '.[local]' ({exc})"
        ) from exc
    local = backend.local
    return LocalModelBackend(
        workers=local.workers,
        max_queue=local.max_queue,
        models=local.models,
        threads_per_worker=local.threads_per_worker,
        model_paths=dict(local.model_paths) or None,
        read_s3=local.read_s3,
        s3_region=backend.region,
        s3_endpoint_url=local.s3_endpoint_url,
        s3_timeout_s=backend.call_timeout_s,
        max_image_pixels=settings.images.max_pixels,
    )
