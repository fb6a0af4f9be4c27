"""The shared review-record parser: what the pipeline writes parses; nothing else gets through,
and whatever the bytes, the only error is InputError(invalid_review_record)."""

from __future__ import annotations

import copy
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.errors import InputError, Reason
from service.messages import (
    BytesImage,
    Label,
    ModerationRequest,
    S3Image,
    Source,
    UrlImage,
    verdict_record,
)
from service.review.loops import loop_name, review_details
from service.review.records import (
    InlineImage,
    ReviewRecord,
    image_json,
    parse_review_record,
    review_deadline,
    review_record_limit,
    review_record_of,
)

LIMIT = 1024 * 1024


def parse(value: bytes | None) -> ReviewRecord:
    return parse_review_record(value, max_bytes=LIMIT)


def pipeline_record(
    request: ModerationRequest,
    labels: list[Label],
    *,
    mode: str = "self_hosted",
    fallback_reason: str | None = None,
) -> bytes:
    """A review record exactly as the pipeline builds one."""
    review = review_details(
        loop=loop_name(request),
        mode=mode,
        flow_definition_arn="arn:aws:sagemaker:eu-west-1:123456789012:flow-definition/f"
        if mode == "managed"
        else None,
        human_loop_arn="arn:aws:sagemaker:eu-west-1:1:human-loop/x" if mode == "managed" else None,
        activation_reasons=["Explicit Nudity 72.0 >= 50"],
        activation_results={"Conditions": [{"And": []}]},
        sla_s=3600,
        fallback_reason=fallback_reason,
    )
    return verdict_record(
        request,
        verdict="review",
        decided_by="model",
        labels=labels,
        model_version="7.0",
        reasons=[{"rule": "review_threshold", "policy": "default"}],
        source=Source("moderation.requests", 0, 7),
        received_at="2026-11-21T23:10:04.120Z",
        review=review,
    )


def good() -> dict[str, Any]:
    request = ModerationRequest("r-1", S3Image("uploads", "a/b.jpg"), {"u": 1}, None)
    labels = [Label("Explicit Nudity", "Explicit", 72.5, 2)]
    result: dict[str, Any] = orjson.loads(pipeline_record(request, labels))
    return result


images = st.one_of(
    st.builds(
        S3Image,
        st.text(min_size=1, max_size=64),
        st.text(min_size=1, max_size=256),
        st.none() | st.text(min_size=1, max_size=64),
    ),
    st.builds(UrlImage, st.text(min_size=1, max_size=2048)),
    st.builds(BytesImage, st.binary(max_size=64)),
)
labels = st.lists(
    st.builds(
        Label,
        st.text(max_size=40),
        st.text(max_size=40),
        st.floats(min_value=0, max_value=100),
        st.integers(min_value=0, max_value=3),
        st.none() | st.integers(min_value=0, max_value=10_000),  # an animation's frame
    ),
    max_size=8,
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
request_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    request_id=st.text(min_size=1, max_size=128),
    image=images,
    found=labels,
    # orjson (the pipeline's parser) reads only 64-bit integers: no request has larger ones.
    attributes=st.none() | st.dictionaries(st.text(max_size=8), request_scalars, max_size=3),
    mode=st.sampled_from(["self_hosted", "managed"]),
    fallback=st.none() | st.just("human_loop_quota_exceeded"),
)
@settings(max_examples=300)
def test_every_record_the_pipeline_builds_parses(
    request_id: str,
    image: S3Image | UrlImage | BytesImage,
    found: list[Label],
    attributes: dict[str, Any] | None,
    mode: str,
    fallback: str | None,
) -> None:
    request = ModerationRequest(request_id, image, attributes, None)
    value = pipeline_record(request, found, mode=mode, fallback_reason=fallback)
    parsed = parse(value)
    assert parsed.raw == orjson.loads(value)
    assert (parsed.id, parsed.loop_name, parsed.mode) == (request_id, loop_name(request), mode)
    assert [(label.name, label.confidence, label.frame) for label in parsed.labels] == [
        (label.name, label.confidence, label.frame) for label in found
    ]
    assert parsed.attributes == attributes
    assert parsed.fallback_reason == fallback
    assert parsed.deadline > parsed.created_at
    if isinstance(image, BytesImage):
        assert isinstance(parsed.image, InlineImage) and parsed.image.size == len(image.data)
    else:
        assert parsed.image == image


def test_the_request_a_final_verdict_echoes_is_typed() -> None:
    parsed = parse(orjson.dumps(good()))
    assert parsed.source == Source("moderation.requests", 0, 7)
    assert parsed.received_at == "2026-11-21T23:10:04.120Z"
    assert image_json(parsed.image) == {"s3": {"bucket": "uploads", "key": "a/b.jpg"}}
    inline = InlineImage("ab" * 32, 5)
    assert image_json(inline) == {"bytes": {"sha256": "ab" * 32, "size": 5}}


def test_a_record_kept_as_json_is_read_by_the_same_rules() -> None:
    record = good()
    assert review_record_of(record) == parse(orjson.dumps(record))
    record["review"]["deadline"] = "2026-11-21T23:10:04"  # no timezone
    with pytest.raises(InputError) as caught:
        review_record_of(record)
    assert caught.value.reason is Reason.INVALID_REVIEW_RECORD
    with pytest.raises(InputError):
        review_record_of(["not", "a", "record"])


def test_a_stored_records_deadline_follows_the_parsers_rule() -> None:
    record = good()
    assert review_deadline(record) == parse(orjson.dumps(record)).deadline
    record["review"]["deadline"] = "2026-11-21T23:10:04"  # no timezone: no deadline
    assert review_deadline(record) is None
    assert review_deadline({"review": "x"}) is None
    assert review_deadline(None) is None


def test_a_requeued_record_from_the_sink_parses() -> None:
    record = good()
    record["review"] |= {"requeued": 2, "requeue_reason": "review SLA exceeded"}
    assert parse(orjson.dumps(record)).requeued == 2


@given(st.binary(max_size=512))
@settings(max_examples=500)
def test_arbitrary_bytes_raise_only_input_error(value: bytes) -> None:
    try:
        parse(value)
    except InputError as exc:
        assert exc.reason is Reason.INVALID_REVIEW_RECORD  # noqa: PT017  (most inputs raise)


@given(json_values)
@settings(max_examples=500)
def test_arbitrary_json_raises_only_input_error(value: Any) -> None:
    with pytest.raises(InputError) as caught:
        parse(json.dumps(value).encode())  # stdlib: integers of any size
    assert caught.value.reason is Reason.INVALID_REVIEW_RECORD


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


RECORD_PATHS = _paths(good())


@given(st.sampled_from(RECORD_PATHS), json_values | st.just(...))
@settings(max_examples=1000)
def test_any_field_of_a_good_record_replaced_or_removed_parses_or_is_an_input_error(
    path: tuple[Any, ...], replacement: Any
) -> None:
    record = copy.deepcopy(good())
    parent = record
    for step in path[:-1]:
        parent = parent[step]
    if replacement is ...:
        del parent[path[-1]]
    else:
        parent[path[-1]] = replacement
    try:
        parsed = parse(json.dumps(record).encode())
    except InputError as exc:
        assert exc.reason is Reason.INVALID_REVIEW_RECORD  # noqa: PT017  (either outcome is fine)
    else:  # whatever got through is usable: the typed fields hold what they promise
        assert all(0 <= label.confidence <= 100 for label in parsed.labels)
        assert isinstance(parsed.image, S3Image | UrlImage | InlineImage)
        parsed.created_at.timestamp()
        parsed.deadline.timestamp()


def _with(path: tuple[Any, ...], value: Any) -> bytes:
    record = good()
    parent = record
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return orjson.dumps(record)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("labels", 0, "confidence"), "abc"),
        (("labels", 0, "confidence"), True),
        (("labels", 0, "confidence"), 100.5),
        (("labels", 0, "taxonomy_level"), 2.0),
        (("labels", 0, "frame"), -1),
        (("labels", 0, "frame"), "3"),
        (("labels", 0, "name"), 7),
        (("labels", 0), "Explicit"),
        (("labels",), {"name": "x"}),
        (("image", "s3", "bucket"), ["a", "b"]),
        (("image", "s3", "key"), ""),
        (("image",), {"url": "https://x", "s3": {"bucket": "b", "key": "k"}}),
        (("image",), {"bytes": {"sha256": "zz", "size": 1}}),
        (("id",), ""),
        (("id",), "x" * 129),
        (("id",), 12),
        (("review", "human_loop_name"), "Upper-Case"),
        (("review", "human_loop_name"), "-starts-with-dash"),
        (("review", "human_loop_name"), "a" * 64),
        (("review", "human_loop_name"), ""),
        (("review", "created_at"), "yesterday"),
        (("review", "deadline"), "2026-11-21T23:10:04"),  # no timezone
        (("review", "deadline"), 1_800_000_000),
        (("review", "mode"), "other"),
        (("review", "requeued"), "1"),
        (("review", "activation_reasons"), "not a list"),
        (("review",), None),
        (("schema_version",), 2),
        (("verdict",), "approved"),
        (("attributes",), ["x"]),
        # What a final verdict echoes must be what the verdict schema requires.
        (("source",), None),
        (("source",), "moderation.requests"),
        (("source", "partition"), "0"),
        (("source", "offset"), True),
        (("source", "topic"), 7),
        (("received_at",), None),
        (("received_at",), "2026-11-21T23:10:04"),  # no timezone
        (("received_at",), "soon"),
    ],
)
def test_what_is_refused(path: tuple[Any, ...], value: Any) -> None:
    with pytest.raises(InputError) as caught:
        parse(_with(path, value))
    assert caught.value.reason is Reason.INVALID_REVIEW_RECORD


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("yesterday", "'review.deadline' is not an ISO 8601 date-time"),
        ("2026-11-21T23:10:04", "'review.deadline' has no timezone (write Z or an offset)"),
        ("9999-12-31T23:59:59-01:00", "'review.deadline' is out of range"),
        (1_800_000_000, "'review.deadline' must be a date-time string"),
    ],
)
def test_refused_times_say_why(value: Any, says: str) -> None:
    with pytest.raises(InputError) as caught:
        parse(_with(("review", "deadline"), value))
    assert says in caught.value.message


def test_tombstones_and_oversize_records_are_refused() -> None:
    with pytest.raises(InputError, match="tombstone"):
        parse(None)
    value = orjson.dumps(good())
    assert parse_review_record(value, max_bytes=len(value)).id == "r-1"
    with pytest.raises(InputError, match="over the"):
        parse_review_record(value, max_bytes=len(value) - 1)


def test_the_limit_fits_what_the_pipeline_may_write() -> None:
    assert review_record_limit(1024 * 1024) > 2 * 1024 * 1024
