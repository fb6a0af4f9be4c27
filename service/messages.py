"""The records the service reads and writes, and their JSON codec.

The shapes here are the public contract (JSON Schemas under ``schemas/``): the input request,
the verdict record, and the dead-letter record. Parsing turns every way a request can be wrong
into an :class:`InputError` with a stable reason.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import orjson

from service.clock import utc_now
from service.errors import InputError, Reason
from service.images import decode_base64_image

SCHEMA_VERSION = 1
MAX_ID_LENGTH = 128
MAX_ATTRIBUTE_NESTING = 64

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
    frame: int | None = None  # an animation's frame the label was seen in (None: a still image)

    def as_json(self) -> dict[str, Any]:
        labelled: dict[str, Any] = {
            "name": self.name,
            "parent": self.parent,
            "confidence": self.confidence,
            "taxonomy_level": self.taxonomy_level,
        }
        if self.frame is not None:
            labelled["frame"] = self.frame
        return labelled


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
    if attributes is not None and _nesting(attributes) > MAX_ATTRIBUTE_NESTING:
        # orjson reads 1024 levels but writes only 254: the verdict could not be written.
        raise InputError(
            Reason.INVALID_FIELD, f"'attributes' nest deeper than {MAX_ATTRIBUTE_NESTING} levels"
        )

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


def _nesting(value: object) -> int:
    """How deeply lists and objects nest in a parsed JSON value (iteratively: no recursion)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[object] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_ATTRIBUTE_NESTING:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


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
    analyzed: dict[str, Any] | None = None,
) -> bytes:
    """``analyzed``: what the model saw (source format, converted or not, frames)."""
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
    if analyzed is not None:
        record["analyzed"] = analyzed
    if review is not None:
        record["review"] = review
    return orjson.dumps(record)


def final_verdict_record(
    *,
    request_id: str,
    verdict: Literal["approved", "rejected"],
    decided_by: DecidedBy,
    labels: Sequence[Label],
    model_version: str | None,
    reasons: list[dict[str, Any]],
    attributes: dict[str, Any] | None,
    image: dict[str, Any],
    source: Source,
    received_at: str,
    decided_at: str,
    human_review: dict[str, Any],
) -> bytes:
    """The verdict that ends a review (people's answers or the review fallback).

    The request is echoed from its review record (``image`` as :func:`describe_image` showed
    it there); ``human_review`` says how it was decided. The caller passes ``decided_at``, so
    the sink's decisions read no clock.
    """
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "id": request_id,
        "verdict": verdict,
        "decided_by": decided_by,
        "labels": [label.as_json() for label in labels],
        "model_version": model_version,
        "reasons": reasons,
        "attributes": attributes,
        "image": image,
        "source": source.as_json(),
        "received_at": received_at,
        "decided_at": decided_at,
        "human_review": human_review,
    }
    return orjson.dumps(record)


#: The largest DLQ record value we write. Apache Kafka's default ``max.message.bytes`` is 1 MiB
#: (1,048,588 with overhead); staying under it means a dead letter is never refused for its size.
DLQ_MAX_RECORD_BYTES = 1_000_000
#: Output records carry at most this much of the input's headers (trace ids, not payloads).
MAX_CARRIED_HEADER_BYTES = 16 * 1024
#: Output keys above this size are replaced by their sha256 (hex): a key is for partitioning.
MAX_OUTPUT_KEY_BYTES = 4 * 1024
MAX_DLQ_MESSAGE_CHARS = 2048
_RECORD_OVERHEAD_BYTES = 256  # record framing, header lengths, varints: generous on purpose

RawHeaders = Sequence[tuple[str | bytes, bytes | None]]


@dataclass(frozen=True, slots=True)
class OutputRecord:
    """A record ready for the producer: key, value and headers, within the size limits."""

    key: bytes | None
    value: bytes
    headers: Headers


def _encode_bytes(data: bytes | None) -> tuple[str | None, str | None]:
    """Original bytes as text when they are UTF-8, else base64; the encoding says which."""
    if data is None:
        return None, None
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def _encode_header(name: str | bytes, data: bytes | None) -> dict[str, Any]:
    raw_name = name.encode("utf-8") if isinstance(name, str) else name
    name_text, name_encoding = _encode_bytes(raw_name)
    value_text, value_encoding = _encode_bytes(data)
    return {
        "key": name_text,
        "key_encoding": name_encoding,
        "value": value_text,
        "value_encoding": value_encoding,
    }


def _truncated_base64(data: bytes, budget: int) -> str:
    """The longest prefix of ``data`` whose base64 fits in ``budget`` characters."""
    keep = max(0, budget) // 4 * 3
    return base64.b64encode(data[:keep]).decode("ascii")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record for the DLQ: the original as it was read, where it came from, and why."""

    source: Source
    key: bytes | None
    value: bytes | None
    reason: str
    message: str
    headers: RawHeaders = ()
    attempts: int = 1
    request_id: str | None = None
    consumer: str | None = None  # pipeline, sink or console: two of them read the review topic

    def without_original(self, why: str) -> DeadLetter:
        """The facts alone, for a DLQ that refused even the sized record."""
        note = f"{self.message} [original dropped: {why}]"
        return replace(self, key=None, value=None, headers=(), message=note)


def dlq_record(letter: DeadLetter, *, max_bytes: int = DLQ_MAX_RECORD_BYTES) -> bytes:
    """The dead-letter record's value, never longer than ``max_bytes``.

    The original key and value are kept whole when they fit. When they do not (a 3 MiB value of
    control characters escapes to 19 MB of JSON), the largest ones are cut to a base64 prefix and
    the record says so, with each original's size and sha256 so it can still be matched.
    """
    key, value, message = letter.key, letter.value, letter.message
    if len(message) > MAX_DLQ_MESSAGE_CHARS:
        message = message[:MAX_DLQ_MESSAGE_CHARS] + "…"
    key_text, key_encoding = _encode_bytes(key)
    value_text, value_encoding = _encode_bytes(value)
    original: dict[str, Any] = {
        "key": key_text,
        "key_encoding": key_encoding,
        "value": value_text,
        "value_encoding": value_encoding,
        "value_size": None if value is None else len(value),
        "value_sha256": None if value is None else hashlib.sha256(value).hexdigest(),
        "headers": [_encode_header(name, data) for name, data in letter.headers],
        "truncated": [],
    }
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "id": letter.request_id,
        "original": original,
        "source": letter.source.as_json(),
        "error": {"reason": str(letter.reason), "message": message},
        "attempts": letter.attempts,
        "failed_at": utc_now(),
    }
    if letter.consumer is not None:
        record["consumer"] = letter.consumer
    encoded = orjson.dumps(record)
    if len(encoded) <= max_bytes:
        return encoded
    # Too large: drop the headers first (they are small when sane), then cut value and key.
    if original["headers"]:
        original["headers"] = []
        original["truncated"].append("headers")
    for field_name, data in (("value", value), ("key", key)):
        encoded = orjson.dumps(record)
        if len(encoded) <= max_bytes or data is None:
            continue
        original[field_name] = ""
        original[f"{field_name}_encoding"] = "base64"
        room = max_bytes - len(orjson.dumps(record)) - 160  # the size/sha256 fields added below
        original[field_name] = _truncated_base64(data, room)
        original[f"{field_name}_size"] = len(data)
        original[f"{field_name}_sha256"] = hashlib.sha256(data).hexdigest()
        original["truncated"].append(field_name)
    encoded = orjson.dumps(record)
    excess = len(encoded) - max_bytes
    if excess > 0:  # only a tiny limit gets here: shorten our own message last
        text = record["error"]["message"].encode("utf-8")
        cut = text[: max(0, len(text) - excess - 4)].decode("utf-8", "ignore")
        record["error"]["message"] = cut + "…"
        encoded = orjson.dumps(record)
    return encoded


def carried_headers(original: RawHeaders) -> Headers:
    """The input headers an output may carry: text names only, at most a few KiB in all."""
    kept: Headers = []
    size = 0
    for name, data in original:
        if not isinstance(name, str):
            continue  # not UTF-8: cannot be produced again; the DLQ record keeps it as base64
        size += len(name.encode("utf-8")) + len(data or b"")
        if size > MAX_CARRIED_HEADER_BYTES:
            break
        kept.append((name, data or b""))
    return kept


def output_key(key: bytes | None) -> bytes | None:
    """The input's key, or its sha256 when it is too large to repeat on every output."""
    if key is None or len(key) <= MAX_OUTPUT_KEY_BYTES:
        return key
    return hashlib.sha256(key).hexdigest().encode("ascii")


def dead_letter_output(
    letter: DeadLetter, *, max_record_bytes: int = DLQ_MAX_RECORD_BYTES
) -> OutputRecord:
    """The whole DLQ record (key, value, headers), sized to what the broker accepts."""
    out_key = output_key(letter.key)
    out_headers = output_headers(letter.headers, error_reason=str(letter.reason))
    used = (
        len(out_key or b"")
        + sum(len(name) + len(data) for name, data in out_headers)
        + _RECORD_OVERHEAD_BYTES
    )
    return OutputRecord(out_key, dlq_record(letter, max_bytes=max_record_bytes - used), out_headers)


def output_headers(original: RawHeaders, **extra: str) -> Headers:
    """Carry the input's headers over (trace ids survive) and add ours, replacing stale copies."""
    ours = {f"moderation-{name.replace('_', '-')}": text for name, text in extra.items()}
    kept = [(name, data) for name, data in carried_headers(original) if name not in ours]
    return kept + [(name, text.encode()) for name, text in ours.items()]
