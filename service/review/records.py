"""The review record (a verdict with a ``review`` object, on the review topic), parsed strictly.

The pipeline writes these (:func:`service.messages.verdict_record` with
:func:`service.review.loops.review_details`); the completion sink and the console read them. Both
parse with :func:`parse_review_record`, at the door: a record that is not one (bad JSON, a label
confidence of ``"abc"``, a list for an S3 bucket, a loop name A2I would refuse) is an
:class:`~service.errors.InputError` with reason ``invalid_review_record``, so it is dead-lettered
once instead of failing a page, a loop or a worker later. The parsed JSON object stays available
as :attr:`ReviewRecord.raw`, untouched, for whoever republishes it.

The sink keeps records in tables as JSON and reads them back with :func:`review_record_of`, the
same rules; a final verdict echoes the request from the typed record, so everything it echoes
(``source`` and ``received_at`` included, which the verdict schema requires) is checked here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeGuard

import orjson

from service.clock import parse_iso
from service.errors import InputError, Reason
from service.messages import (
    MAX_ID_LENGTH,
    SCHEMA_VERSION,
    S3Image,
    Source,
    UrlImage,
    describe_image,
)

#: A2I's rule for ``HumanLoopName``: 1-63 characters, ``^[a-z0-9](-*[a-z0-9])*$``.
LOOP_NAME = re.compile(r"[a-z0-9](-*[a-z0-9])*")
MAX_LOOP_NAME = 63
MAX_URL_LENGTH = 2048  # the pipeline refuses longer URLs
_SHA256 = re.compile(r"[0-9a-f]{64}")

Mode = Literal["managed", "self_hosted"]


def review_record_limit(max_input_bytes: int) -> int:
    """The largest review record the pipeline can write for inputs of ``max_input_bytes``.

    A verdict echoes the request's attributes, so it can be larger than its input; this is the
    pipeline producer's own ``max_request_size``, so nothing the pipeline wrote is refused.
    """
    return 2 * max_input_bytes + 64 * 1024


@dataclass(frozen=True, slots=True)
class ReviewLabel:
    name: str
    parent: str
    confidence: float
    taxonomy_level: int
    frame: int | None = None  # an animation's frame it was seen in


@dataclass(frozen=True, slots=True)
class InlineImage:
    """Inline bytes are never copied into outputs: only their digest and size travel."""

    sha256: str
    size: int


ReviewImage = S3Image | UrlImage | InlineImage


@dataclass(frozen=True, slots=True)
class ReviewRecord:
    raw: dict[str, Any]  # the record as it arrived (parsed JSON), for republishing untouched
    id: str
    loop_name: str
    mode: Mode
    labels: tuple[ReviewLabel, ...]
    image: ReviewImage
    model_version: str | None
    attributes: dict[str, Any] | None
    flow_definition_arn: str | None
    human_loop_arn: str | None
    activation_reasons: tuple[str, ...]
    activation_results: Any
    created_at: datetime  # timezone-aware
    deadline: datetime  # timezone-aware
    requeued: int
    fallback_reason: str | None
    source: Source  # where the request was read: final verdicts point back at it
    received_at: str  # when the pipeline read the request, echoed into final verdicts


def _invalid(message: str) -> InputError:
    return InputError(Reason.INVALID_REVIEW_RECORD, message)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _optional_str(obj: dict[str, Any], name: str, where: str) -> str | None:
    value = obj.get(name)
    if value is not None and not isinstance(value, str):
        raise _invalid(f"'{where}{name}' must be a string or null")
    return value


def _time(review: dict[str, Any], name: str) -> datetime:
    text = review.get(name)
    if not isinstance(text, str):
        raise _invalid(f"'review.{name}' must be a date-time string")
    moment = parse_iso(text)
    if moment is None:
        raise _invalid(f"'review.{name}' {_why_not_a_time(text)}")
    return moment


def _why_not_a_time(text: str) -> str:
    """Why :func:`~service.clock.parse_iso` refused ``text``, for the DLQ message."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return "is not an ISO 8601 date-time"
    if moment.tzinfo is None or moment.utcoffset() is None:
        return "has no timezone (write Z or an offset)"
    return "is out of range"  # an aware time at the edge of the calendar can still overflow


def _labels(value: object) -> tuple[ReviewLabel, ...]:
    if not isinstance(value, list):
        raise _invalid("'labels' must be a list")
    labels: list[ReviewLabel] = []
    for index, label in enumerate(value):
        where = f"labels[{index}]"
        if not isinstance(label, dict):
            raise _invalid(f"'{where}' must be an object")
        name, parent = label.get("name"), label.get("parent")
        if not isinstance(name, str) or not isinstance(parent, str):
            raise _invalid(f"'{where}.name' and '.parent' must be strings")
        confidence = label.get("confidence")
        if not _is_number(confidence) or not 0 <= confidence <= 100:
            raise _invalid(f"'{where}.confidence' must be a number from 0 to 100")
        level = label.get("taxonomy_level")
        if not _is_int(level) or not 0 <= level <= 3:
            raise _invalid(f"'{where}.taxonomy_level' must be an integer from 0 to 3")
        frame = label.get("frame")
        if frame is not None and (not _is_int(frame) or frame < 0):
            raise _invalid(f"'{where}.frame' must be a non-negative integer")
        labels.append(ReviewLabel(name, parent, float(confidence), int(level), frame))
    return tuple(labels)


def _image(value: object) -> ReviewImage:
    if not isinstance(value, dict) or len(value) != 1:
        raise _invalid("'image' must be an object with exactly one of 's3', 'url', 'bytes'")
    ((kind, spec),) = value.items()
    if kind == "s3":
        if not isinstance(spec, dict):
            raise _invalid("'image.s3' must be an object")
        bucket, key = spec.get("bucket"), spec.get("key")
        if not isinstance(bucket, str) or not bucket or not isinstance(key, str) or not key:
            raise _invalid("'image.s3.bucket' and '.key' must be non-empty strings")
        return S3Image(bucket, key, _optional_str(spec, "version", "image.s3."))
    if kind == "url":
        if not isinstance(spec, str) or not 1 <= len(spec) <= MAX_URL_LENGTH:
            raise _invalid(f"'image.url' must be a string of 1-{MAX_URL_LENGTH} characters")
        return UrlImage(spec)
    if kind == "bytes":
        if not isinstance(spec, dict):
            raise _invalid("'image.bytes' must be an object (sha256 and size)")
        digest, size = spec.get("sha256"), spec.get("size")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise _invalid("'image.bytes.sha256' must be 64 lowercase hex digits")
        if not _is_int(size) or size < 0:
            raise _invalid("'image.bytes.size' must be a non-negative integer")
        return InlineImage(digest, int(size))
    raise _invalid("'image' must be an object with exactly one of 's3', 'url', 'bytes'")


def _strings(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _invalid(f"'{where}' must be a list of strings")
    return tuple(value)


def _source(value: object) -> Source:
    if not isinstance(value, dict):
        raise _invalid("'source' must be an object (topic, partition, offset)")
    topic, partition, offset = value.get("topic"), value.get("partition"), value.get("offset")
    if not isinstance(topic, str) or not _is_int(partition) or not _is_int(offset):
        raise _invalid("'source' must have a string 'topic' and integer 'partition' and 'offset'")
    return Source(topic, partition, offset)


def _received_at(record: dict[str, Any]) -> str:
    text = record.get("received_at")
    if not isinstance(text, str) or parse_iso(text) is None:
        raise _invalid("'received_at' must be an ISO 8601 date-time with a timezone")
    return text


def parse_review_record(value: bytes | None, *, max_bytes: int) -> ReviewRecord:
    """Validate one review-topic record; anything unusable is ``InputError(invalid_review_record)``.

    Nothing else escapes, whatever the bytes: callers dead-letter on that one error type.
    """
    if value is None:
        raise _invalid("record has no value (tombstone)")
    if len(value) > max_bytes:
        raise _invalid(f"record value is {len(value)} bytes, over the {max_bytes}-byte limit")
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise _invalid(f"value is not valid JSON: {exc}") from exc
    return review_record_of(record)


def review_record_of(record: object) -> ReviewRecord:
    """:func:`parse_review_record` for JSON already decoded (a record the sink kept in a table).

    The same rules, so a record the sink remembers means what the console stores.
    """
    if not isinstance(record, dict):
        raise _invalid("value must be a JSON object")
    version = record.get("schema_version")
    if not _is_int(version) or version != SCHEMA_VERSION:
        raise _invalid(f"'schema_version' must be {SCHEMA_VERSION}")
    request_id = record.get("id")
    if not isinstance(request_id, str) or not 1 <= len(request_id) <= MAX_ID_LENGTH:
        raise _invalid(f"'id' must be a string of 1-{MAX_ID_LENGTH} characters")
    if record.get("verdict") != "review":
        raise _invalid("'verdict' must be 'review' on the review topic")
    labels = _labels(record.get("labels"))
    image = _image(record.get("image"))
    model_version = _optional_str(record, "model_version", "")
    attributes = record.get("attributes")
    if attributes is not None and not isinstance(attributes, dict):
        raise _invalid("'attributes' must be an object or null")
    source = _source(record.get("source"))
    received_at = _received_at(record)

    review = record.get("review")
    if not isinstance(review, dict):
        raise _invalid("not a review record (no 'review' object)")
    return _with_review(
        record,
        review,
        request_id=request_id,
        labels=labels,
        image=image,
        model_version=model_version,
        attributes=attributes,
        source=source,
        received_at=received_at,
    )


def _with_review(
    record: dict[str, Any],
    review: dict[str, Any],
    *,
    request_id: str,
    labels: tuple[ReviewLabel, ...],
    image: ReviewImage,
    model_version: str | None,
    attributes: dict[str, Any] | None,
    source: Source,
    received_at: str,
) -> ReviewRecord:
    loop = review.get("human_loop_name")
    if not isinstance(loop, str) or len(loop) > MAX_LOOP_NAME or not LOOP_NAME.fullmatch(loop):
        raise _invalid(
            "'review.human_loop_name' must be 1-63 characters of ^[a-z0-9](-*[a-z0-9])*$"
        )
    mode = review.get("mode")
    if mode not in ("managed", "self_hosted"):
        raise _invalid("'review.mode' must be 'managed' or 'self_hosted'")
    requeued = review.get("requeued", 0)
    if not _is_int(requeued) or requeued < 0:
        raise _invalid("'review.requeued' must be a non-negative integer")
    for name in ("fallback_reason", "requeue_reason"):
        if name in review and not isinstance(review[name], str):
            raise _invalid(f"'review.{name}' must be a string")
    return ReviewRecord(
        raw=record,
        id=request_id,
        loop_name=loop,
        mode="managed" if mode == "managed" else "self_hosted",
        labels=labels,
        image=image,
        model_version=model_version,
        attributes=attributes,
        flow_definition_arn=_optional_str(review, "flow_definition_arn", "review."),
        human_loop_arn=_optional_str(review, "human_loop_arn", "review."),
        activation_reasons=_strings(review.get("activation_reasons"), "review.activation_reasons"),
        activation_results=review.get("activation_results"),
        created_at=_time(review, "created_at"),
        deadline=_time(review, "deadline"),
        requeued=requeued,
        fallback_reason=review.get("fallback_reason"),
        source=source,
        received_at=received_at,
    )


def review_deadline(record: object) -> datetime | None:
    """The ``review.deadline`` of a record kept as JSON, by the parser's own rule; None if unusable.

    For sweeps over many stored records, where validating each whole record would cost too much.
    """
    review = record.get("review") if isinstance(record, dict) else None
    if not isinstance(review, dict):
        return None
    try:
        return _time(review, "deadline")
    except InputError:
        return None


def image_json(image: ReviewImage) -> dict[str, Any]:
    """The image reference as outputs show it (the shape :func:`~service.messages.describe_image`
    gives the pipeline's verdicts; inline bytes travel as their digest and size)."""
    if isinstance(image, InlineImage):
        return {"bytes": {"sha256": image.sha256, "size": image.size}}
    return describe_image(image)


__all__ = [
    "LOOP_NAME",
    "InlineImage",
    "ReviewImage",
    "ReviewLabel",
    "ReviewRecord",
    "image_json",
    "parse_review_record",
    "review_deadline",
    "review_record_limit",
    "review_record_of",
]
