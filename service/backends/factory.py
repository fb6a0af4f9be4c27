"""The backend the settings ask for, built at start-up (the local one only when installed)."""

from __future__ import annotations

from service.backends.base import ModerationBackend
from service.backends.rekognition import RekognitionBackend
from service.errors import ConfigError
from service.imaging.spec import DecodeLimits
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
    # Images reach it decoded by the normalize stage, which also downloads S3 objects
    # (MODERATION_LOCAL_READ_S3): the backend only runs the models.
    local, images = backend.local, settings.images
    return LocalModelBackend(
        workers=local.workers,
        max_queue=local.max_queue,
        models=local.models,
        threads_per_worker=local.threads_per_worker,
        model_paths=dict(local.model_paths) or None,
        limits=DecodeLimits(  # for bytes sent directly, as the stage would decode them
            images.max_pixels, images.max_frames, images.decode_timeout_s, images.jpeg_quality
        ),
    )
