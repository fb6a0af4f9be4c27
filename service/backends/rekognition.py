"""Amazon Rekognition DetectModerationLabels through aioboto3.

This module is the one boundary where botocore's errors become ours: problems with the image are
InputErrors (dead-lettered); throttling is Throttled, A2I's review quota HumanLoopQuotaExceeded;
server errors, connection failures and timeouts are plain (retriable) BackendErrors; everything
else (credentials, permissions, missing resources) is BackendUnavailable, an outage the pipeline
waits out, never a reason to dead-letter good input.
SDK-level retries are off: the pipeline's limiter must see every throttle to adapt.
"""

from __future__ import annotations

import contextlib
from typing import Any

import aioboto3
import orjson
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from service.backends.base import BackendImage, HumanLoopRequest, ManagedReview, ModerationResult
from service.errors import (
    BackendError,
    BackendUnavailable,
    HumanLoopQuotaExceeded,
    InputError,
    Reason,
    Throttled,
)
from service.imaging.spec import REKOGNITION_INPUT, BackendInput
from service.messages import Label, S3Image
from service.settings import BackendSettings

_IMAGE_ERRORS = {
    "InvalidImageFormatException": Reason.INVALID_IMAGE_FORMAT,
    "ImageTooLargeException": Reason.IMAGE_TOO_LARGE,
    "InvalidS3ObjectException": Reason.INVALID_S3_OBJECT,
    "InvalidParameterException": Reason.INVALID_PARAMETER,
}
_THROTTLING = {"ThrottlingException", "ProvisionedThroughputExceededException"}
_RETRIABLE = {"InternalServerError", "ServiceUnavailableException", "ServiceUnavailable"}


def translate_client_error(exc: ClientError) -> InputError | BackendError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "Unknown"))
    message = str(error.get("Message", ""))
    if code in _IMAGE_ERRORS:
        return InputError(_IMAGE_ERRORS[code], f"Rekognition {code}: {message}")
    if code in _THROTTLING:
        return Throttled(code, message)
    if code == "HumanLoopQuotaExceededException":
        return HumanLoopQuotaExceeded(code, message)
    if code in _RETRIABLE:
        return BackendError(code, message)
    return BackendUnavailable(code, message)


def parse_labels(response: dict[str, Any]) -> list[Label]:
    return [
        Label(
            name=item["Name"],
            parent=item.get("ParentName", ""),
            confidence=float(item["Confidence"]),
            taxonomy_level=int(item.get("TaxonomyLevel", 0)),
        )
        for item in response.get("ModerationLabels", [])
    ]


def parse_managed_review(response: dict[str, Any]) -> ManagedReview | None:
    """The review A2I started with this call (HumanLoopActivationOutput), if any."""
    output = response.get("HumanLoopActivationOutput") or {}
    arn = output.get("HumanLoopArn")
    if not arn:
        return None
    return ManagedReview(
        loop_arn=str(arn),
        activation_reasons=tuple(str(r) for r in output.get("HumanLoopActivationReasons", [])),
        conditions_evaluation=_json_or_text(
            output.get("HumanLoopActivationConditionsEvaluationResults")
        ),
    )


def _json_or_text(value: object) -> object:
    """Rekognition returns the evaluation results as a JSON string; keep them structured."""
    if isinstance(value, str):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


class RekognitionBackend:
    """Moderation by Rekognition; can start managed A2I reviews in the same call."""

    max_concurrency: int | None = None  # the rate limiter, not a pool, bounds a remote API
    input: BackendInput = REKOGNITION_INPUT

    def __init__(self, settings: BackendSettings) -> None:
        self._settings = settings
        self._exit_stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def start(self) -> None:
        config = Config(
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=self._settings.max_in_flight,
            connect_timeout=min(10.0, self._settings.call_timeout_s),
            read_timeout=self._settings.call_timeout_s,
        )
        session = aioboto3.Session()
        self._client = await self._exit_stack.enter_async_context(
            session.client(
                "rekognition",
                region_name=self._settings.region,
                endpoint_url=self._settings.endpoint_url,
                config=config,
            )
        )

    async def close(self) -> None:
        self._client = None
        await self._exit_stack.aclose()

    async def moderate(self, image: BackendImage, min_confidence: float) -> ModerationResult:
        return await self._detect(image, min_confidence, None)

    async def moderate_with_review(
        self, image: BackendImage, min_confidence: float, review: HumanLoopRequest
    ) -> ModerationResult:
        return await self._detect(image, min_confidence, review)

    async def _detect(
        self, image: BackendImage, min_confidence: float, review: HumanLoopRequest | None
    ) -> ModerationResult:
        if self._client is None:
            raise RuntimeError("RekognitionBackend.start() was not awaited")
        if isinstance(image, S3Image):
            s3_object = {"Bucket": image.bucket, "Name": image.key}
            if image.version is not None:
                s3_object["Version"] = image.version
            request_image: dict[str, Any] = {"S3Object": s3_object}
        elif isinstance(image, bytes):
            request_image = {"Bytes": image}
        else:  # its BackendInput asks for encoded images: the normalize stage never sends pixels
            raise TypeError("Rekognition takes JPEG/PNG bytes or an S3 reference, not pixels")
        params: dict[str, Any] = {"Image": request_image, "MinConfidence": min_confidence}
        if review is not None:
            params["HumanLoopConfig"] = review.as_api()
        try:
            response = await self._client.detect_moderation_labels(**params)
        except ClientError as exc:
            raise translate_client_error(exc) from exc
        except ParamValidationError as exc:
            # The SDK refused the request before sending it (e.g. a bucket name too short).
            raise InputError(
                Reason.INVALID_PARAMETER, f"request refused by the SDK: {exc}"
            ) from exc
        except BotoCoreError as exc:
            # Connection failures, timeouts, credential problems: the backend, not the image.
            raise BackendError(type(exc).__name__, str(exc)) from exc
        return ModerationResult(
            labels=parse_labels(response),
            model_version=response.get("ModerationModelVersion"),
            managed_review=parse_managed_review(response),
        )
