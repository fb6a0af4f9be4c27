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


@dataclass(frozen=True, slots=True)
class HumanLoopRequest:
    """Rekognition's HumanLoopConfig: managed A2I starts a review when its conditions hold."""

    name: str
    flow_definition_arn: str
    content_classifiers: tuple[str, ...] = ()

    def as_api(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "HumanLoopName": self.name,
            "FlowDefinitionArn": self.flow_definition_arn,
        }
        if self.content_classifiers:
            config["DataAttributes"] = {"ContentClassifiers": list(self.content_classifiers)}
        return config


class ModerationBackend(Protocol):
    """Backends raise InputError for problems with the image and BackendError for the rest.

    ``human_loop`` is honoured only by backends that can start managed reviews (Rekognition);
    others ignore it and never return ``human_loop`` in their result.
    """

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def moderate(
        self,
        image: S3Image | bytes,
        min_confidence: float,
        human_loop: HumanLoopRequest | None = None,
    ) -> ModerationResult: ...
