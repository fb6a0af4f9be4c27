"""The records the service reads and writes, and their JSON codec.

The shapes here are the public contract (JSON Schemas under ``schemas/``): the input request,
the verdict record, and the dead-letter record. Parsing turns every way a request can be wrong
into an :class:`InputError` with a stable reason.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from service.errors import InputError, Reason
from service.images import decode_base64_image

SCHEMA_VERSION = 1
MAX_ID_LENGTH = 128

Headers = list[tuple[str, bytes]]
Verdict = Literal["approved", "rejected", "review"]
DecidedBy = Literal["model", "human", "fallback"]


@dataclass(frozen=True, slots=True)
class S3Image:
    bucket: str
    key: str
    version: str | None = None


@dataclass(frozen=True, slots=True)
class UrlImage:
    url: str


@dataclass(frozen=True, slots=True)
class BytesImage:
    data: bytes


ImageRef = S3Image | UrlImage | BytesImage


@dataclass(frozen=True, slots=True)
class Source:
    """Where a record came from; travels with every output so it can be traced back."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


@dataclass(frozen=True, slots=True)
class ModerationRequest:
    id: str
    image: ImageRef
    attributes: dict[str, Any] | None
    min_confidence: float | None


@dataclass(frozen=True, slots=True)
class Label:
    name: str
    parent: str
    confidence: float
    taxonomy_level: int

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "parent": self.parent,
            "confidence": self.confidence,
            "taxonomy_level": self.taxonomy_level,
        }


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_request(
    value: bytes | None, *, max_record_bytes: int, max_image_bytes: int
) -> ModerationRequest:
    """Validate one input record's value; every failure is an InputError with its reason."""
    if value is None:
        raise InputError(Reason.MALFORMED_JSON, "record has no value (tombstone)")
    if len(value) > max_record_bytes:
        raise InputError(
            Reason.RECORD_TOO_LARGE,
            f"record value is {len(value)} bytes, over the {max_record_bytes}-byte limit",
        )
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InputError(Reason.MALFORMED_JSON, f"value is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InputError(Reason.MALFORMED_JSON, "value must be a JSON object")

    request_id = body.get("id")
    if request_id is None:
        raise InputError(Reason.MISSING_FIELD, "missing field 'id'")
    if not isinstance(request_id, str) or not 1 <= len(request_id) <= MAX_ID_LENGTH:
        raise InputError(Reason.INVALID_FIELD, "'id' must be a string of 1-128 characters")

    if "image" not in body:
        raise InputError(Reason.MISSING_FIELD, "missing field 'image'")
    image = _parse_image(body["image"], max_image_bytes)

    attributes = body.get("attributes")
    if attributes is not None and not isinstance(attributes, dict):
        raise InputError(Reason.INVALID_FIELD, "'attributes' must be an object")

    min_confidence = body.get("min_confidence")
    if min_confidence is not None and (
        isinstance(min_confidence, bool)
        or not isinstance(min_confidence, int | float)
        or not 0 <= min_confidence <= 100
    ):
        raise InputError(Reason.INVALID_FIELD, "'min_confidence' must be a number from 0 to 100")

    return ModerationRequest(
        id=request_id,
        image=image,
        attributes=attributes,
        min_confidence=float(min_confidence) if min_confidence is not None else None,
    )


def id_of_invalid(value: bytes | None, max_record_bytes: int) -> str | None:
    """The request id of a record that failed validation, when it has a usable one (for the DLQ)."""
    if value is None or len(value) > max_record_bytes:
        return None
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    request_id = body.get("id") if isinstance(body, dict) else None
    if isinstance(request_id, str) and 1 <= len(request_id) <= MAX_ID_LENGTH:
        return request_id
    return None


def _parse_image(image: object, max_image_bytes: int) -> ImageRef:
    if not isinstance(image, dict):
        raise InputError(Reason.INVALID_FIELD, "'image' must be an object")
    kinds = [kind for kind in ("s3", "url", "bytes") if kind in image]
    if len(kinds) != 1 or len(image) != 1:
        raise InputError(
            Reason.INVALID_FIELD, "'image' must have exactly one of 's3', 'url' or 'bytes'"
        )
    kind = kinds[0]
    spec = image[kind]
    if kind == "s3":
        return _parse_s3(spec)
    if kind == "url":
        if not isinstance(spec, str) or not spec:
            raise InputError(Reason.INVALID_FIELD, "'image.url' must be a non-empty string")
        if len(spec) > 2048:
            raise InputError(Reason.INVALID_URL, "'image.url' is longer than 2048 characters")
        return UrlImage(spec)
    if not isinstance(spec, str):
        raise InputError(Reason.INVALID_FIELD, "'image.bytes' must be a base64 string")
    return BytesImage(decode_base64_image(spec, max_image_bytes))


def _parse_s3(spec: object) -> S3Image:
    if not isinstance(spec, dict):
        raise InputError(Reason.INVALID_FIELD, "'image.s3' must be an object")
    for name in ("bucket", "key"):
        if name not in spec:
            raise InputError(Reason.MISSING_FIELD, f"missing field 'image.s3.{name}'")
        if not isinstance(spec[name], str) or not spec[name]:
            raise InputError(Reason.INVALID_FIELD, f"'image.s3.{name}' must be a non-empty string")
    version = spec.get("version")
    if version is not None and not isinstance(version, str):
        raise InputError(Reason.INVALID_FIELD, "'image.s3.version' must be a string")
    return S3Image(bucket=spec["bucket"], key=spec["key"], version=version)


def describe_image(image: ImageRef) -> dict[str, Any]:
    """The image reference as it appears in outputs; inline bytes are summarised, not copied."""
    if isinstance(image, S3Image):
        s3: dict[str, Any] = {"bucket": image.bucket, "key": image.key}
        if image.version is not None:
            s3["version"] = image.version
        return {"s3": s3}
    if isinstance(image, UrlImage):
        return {"url": image.url}
    return {"bytes": {"sha256": hashlib.sha256(image.data).hexdigest(), "size": len(image.data)}}


def verdict_record(
    request: ModerationRequest,
    *,
    verdict: Verdict,
    decided_by: DecidedBy,
    labels: list[Label],
    model_version: str | None,
    reasons: list[dict[str, Any]],
    source: Source,
    received_at: str,
    review: dict[str, Any] | None = None,
) -> bytes:
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "id": request.id,
        "verdict": verdict,
        "decided_by": decided_by,
        "labels": [label.as_json() for label in labels],
        "model_version": model_version,
        "reasons": reasons,
        "attributes": request.attributes,
        "image": describe_image(request.image),
        "source": source.as_json(),
        "received_at": received_at,
        "decided_at": utc_now(),
    }
    if review is not None:
        record["review"] = review
    return orjson.dumps(record)


def _encode_bytes(data: bytes | None) -> tuple[str | None, str | None]:
    """Original bytes as text when they are UTF-8, else base64; the encoding says which."""
    if data is None:
        return None, None
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def dlq_record(
    *,
    key: bytes | None,
    value: bytes | None,
    source: Source,
    reason: str,
    message: str,
    attempts: int,
    request_id: str | None,
) -> bytes:
    key_text, key_encoding = _encode_bytes(key)
    value_text, value_encoding = _encode_bytes(value)
    return orjson.dumps(
        {
            "schema_version": SCHEMA_VERSION,
            "id": request_id,
            "original": {
                "key": key_text,
                "key_encoding": key_encoding,
                "value": value_text,
                "value_encoding": value_encoding,
            },
            "source": source.as_json(),
            "error": {"reason": reason, "message": message},
            "attempts": attempts,
            "failed_at": utc_now(),
        }
    )


def output_headers(original: Headers, **extra: str) -> Headers:
    """Carry the input's headers over (trace ids survive) and add ours, replacing stale copies."""
    ours = {f"moderation-{name.replace('_', '-')}": text for name, text in extra.items()}
    kept = [(name, data) for name, data in original if name not in ours]
    return kept + [(name, text.encode()) for name, text in ours.items()]
