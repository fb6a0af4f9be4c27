"""What the pipeline needs from a moderation backend, whichever model answers.

Every backend moderates an image and says how many calls it can serve at once. Managed human
review (Rekognition starting an A2I loop in the same call) is an optional capability: a backend
that has it also implements :class:`ManagedReviewBackend`, and the pipeline asks before using it.
Results are typed here, so no caller reads a vendor's response shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, runtime_checkable

from PIL import Image

from service.imaging.spec import BackendInput
from service.messages import Label, S3Image

BackendImage: TypeAlias = S3Image | bytes | Image.Image
"""What a backend is sent, as its :class:`BackendInput` asks: an S3 reference it reads itself,
JPEG/PNG bytes within its limits, or 8-bit RGB pixels (one frame each call)."""


@dataclass(frozen=True, slots=True)
class ManagedReview:
    """A review the backend's managed service started with this call: people will answer."""

    loop_arn: str
    activation_reasons: tuple[str, ...] = ()
    # The service's evaluation of its activation conditions, decoded (the raw text when it is
    # not JSON; None when the service gave none).
    conditions_evaluation: object = None


@dataclass(frozen=True, slots=True)
class ModerationResult:
    labels: list[Label]
    model_version: str | None
    managed_review: ManagedReview | None = None


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
    """Backends raise InputError for problems with the image and BackendError for the rest."""

    @property
    def max_concurrency(self) -> int | None:
        """Calls the backend serves at once; callers keep at most this many in flight and wait
        for a free slot beyond it. None: no limit of its own (a remote API behind the rate
        limiter)."""
        ...

    @property
    def input(self) -> BackendInput:
        """The images it takes: the normalize stage converts everything else to this."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def moderate(self, image: BackendImage, min_confidence: float) -> ModerationResult: ...


@runtime_checkable
class ManagedReviewBackend(ModerationBackend, Protocol):
    """A backend that can also start a managed human review in the moderation call itself."""

    async def moderate_with_review(
        self, image: BackendImage, min_confidence: float, review: HumanLoopRequest
    ) -> ModerationResult:
        """Like ``moderate``; the result carries a :class:`ManagedReview` when one started."""
        ...
