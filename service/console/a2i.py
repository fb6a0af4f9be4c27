"""A reviewer's answer in Amazon A2I's formats: ``output.json`` and the completion event.

The layout and keys are A2I's own (Rekognition task type, see
``../shared/reference/a2i-rekognition.md``), so :mod:`service.review.sink` reads console answers
exactly like managed ones:

* the object lives at
  ``<output path>/<flow-definition-name>/YYYY/MM/DD/hh/mm/ss/<loop>/output.json`` (the loop's
  creation time, UTC), ``<output path>`` being A2I's ``S3OutputPath`` (``s3://bucket[/prefix]``)
  or, in the embedded setup, a directory the sink may read;
* ``humanAnswers[0]`` carries the labels chosen (none: nothing objectionable) and who chose them:
  ``workerId`` and ``workerMetadata.identityData`` (``identityProviderType: moderation-console``,
  the console's issuer, the reviewer's name as ``sub``).

Writing is idempotent: the same decision always produces the same bytes at the same place.
"""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from service.clock import iso_from_epoch
from service.console.settings import FlowDefinition, OutputLocation, parse_flow_definition
from service.console.storage import Item
from service.errors import ConfigError, ServiceError
from service.messages import S3Image, UrlImage
from service.objectstore import ObjectStore, S3Options, parse_location
from service.review.answers import TASK_KEY
from service.review.events import completion_event
from service.review.records import InlineImage
from service.taxonomy import V7_LABELS

IDENTITY_PROVIDER = "moderation-console"


class DeliveryError(ServiceError):
    """The output store or the broker failed: the decision stays in the outbox and is retried."""

    retriable = True


def chosen_labels(names: list[str]) -> list[dict[str, str]]:
    """The chosen v7 labels as A2I writes them (``name``, ``parentName``), in taxonomy order."""
    wanted = set(names)
    unknown = wanted - V7_LABELS.keys()
    if unknown:
        raise ValueError(f"not v7 labels: {', '.join(sorted(unknown))}")
    return [
        {"name": label.name, "parentName": label.parent}
        for label in V7_LABELS.values()
        if label.name in wanted
    ]


def flow_of(item: Item, default: FlowDefinition) -> FlowDefinition:
    """The item's own flow definition (a managed loop reviewed here), else the console's."""
    arn = item.review.flow_definition_arn if item.review is not None else None
    if arn is not None:
        with contextlib.suppress(ConfigError):
            return parse_flow_definition("review.flow_definition_arn", arn)
    return default


def input_content(item: Item, flow: FlowDefinition) -> dict[str, Any]:
    """What the reviewer was shown, in A2I's ``inputContent`` shape (informational).

    An unreadable record (stored before intake validated records) showed nothing: no image, no
    labels, and that is what this says."""
    review = item.review
    image = review.image if review is not None else None
    request_image: dict[str, Any]
    if isinstance(image, S3Image):
        s3_object = {"bucket": image.bucket, "name": image.key}
        if image.version:
            s3_object["version"] = image.version
        request_image = {"s3Object": s3_object}
    elif isinstance(image, UrlImage):
        request_image = {"url": image.url}
    elif isinstance(image, InlineImage):  # sha256 and size only: never the bytes
        request_image = {"bytes": {"sha256": image.sha256, "size": image.size}}
    else:
        request_image = {}
    labels = [
        {"confidence": label.confidence, "name": label.name, "parentName": label.parent}
        for label in (review.labels if review is not None else ())
    ]
    results = review.activation_results if review is not None else None
    return {
        "aiServiceRequest": {
            "humanLoopConfig": {"flowDefinitionArn": flow.arn, "humanLoopName": item.loop_name},
            "image": request_image,
        },
        "aiServiceResponse": {
            "moderationLabels": labels,
            "moderationModelVersion": review.model_version if review is not None else None,
        },
        "humanTaskActivationConditionResults": results if results is not None else {},
        "selectedAiServiceResponse": {"moderationLabels": labels},
    }


def build_output(
    item: Item,
    *,
    reviewer: str,
    labels: list[dict[str, str]],
    accepted_at: float,
    submitted_at: float,
    issuer: str,
    flow: FlowDefinition,
) -> dict[str, Any]:
    return {
        "awsManagedHumanLoopRequestSource": TASK_KEY,
        "flowDefinitionArn": flow.arn,
        "humanLoopName": item.loop_name,
        "humanAnswers": [
            {
                "answerContent": {TASK_KEY: {"moderationLabels": labels}},
                "submissionTime": iso_from_epoch(submitted_at),
                "acceptanceTime": iso_from_epoch(accepted_at),
                "timeSpentInSeconds": round(max(0.0, submitted_at - accepted_at), 3),
                "workerId": reviewer,
                "workerMetadata": {
                    "identityData": {
                        "identityProviderType": IDENTITY_PROVIDER,
                        "issuer": issuer,
                        "sub": reviewer,
                    }
                },
            }
        ],
        "inputContent": input_content(item, flow),
    }


def build_event(item: Item, *, output_uri: str, submitted_at: float, flow: FlowDefinition) -> bytes:
    return orjson.dumps(
        completion_event(
            loop_name=item.loop_name,
            status="Completed",
            output_uri=output_uri,
            flow_definition_arn=flow.arn,
            region=flow.region,
            account=flow.account,
            event_id=str(uuid.uuid4()),
            time=iso_from_epoch(submitted_at),
            created=iso_from_epoch(item.created_at),
        )
    )


class OutputWriter:
    """Writes ``output.json`` files to S3 or, in the embedded setup, the output directory (and
    nowhere outside it)."""

    def __init__(
        self, location: OutputLocation, *, region: str | None, s3_endpoint_url: str | None
    ) -> None:
        self._location = location
        self._objects = ObjectStore(
            S3Options(region=region, endpoint_url=s3_endpoint_url), file_root=location.directory
        )

    async def start(self) -> None:
        if self._location.directory is not None:
            self._location.directory.mkdir(parents=True, exist_ok=True)
        await self._objects.start()

    async def close(self) -> None:
        await self._objects.close()

    def uri_for(self, item: Item, flow: FlowDefinition) -> str:
        created = datetime.fromtimestamp(item.created_at, UTC)
        key = f"{flow.name}/{created:%Y/%m/%d/%H/%M/%S}/{item.loop_name}/output.json"
        location = self._location
        if location.kind == "s3":
            prefix = f"{location.prefix}/" if location.prefix else ""
            return f"s3://{location.bucket}/{prefix}{key}"
        assert location.directory is not None
        return (location.directory / key).as_uri()

    async def write(self, uri: str, body: bytes) -> None:
        """Store one ``output.json``; any failure is a :class:`DeliveryError` (retried)."""
        try:
            await self._objects.put(parse_location(uri), body, content_type="application/json")
        except ServiceError as exc:
            raise DeliveryError(f"writing {uri}: {exc}") from exc
