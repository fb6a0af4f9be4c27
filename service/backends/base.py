"""What the pipeline needs from a moderation backend, whichever model answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from service.messages import Label, S3Image


@dataclass(frozen=True, slots=True)
class ModerationResult:
    labels: list[Label]
    model_version: str | None
    # Rekognition's HumanLoopActivationOutput when a human loop was requested (managed A2I).
    human_loop: dict[str, Any] | None = None


class ModerationBackend(Protocol):
    """Backends raise InputError for problems with the image and BackendError for the rest."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def moderate(self, image: S3Image | bytes, min_confidence: float) -> ModerationResult: ...
