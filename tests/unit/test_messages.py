"""Request parsing (every error reason), verdict and DLQ record shapes, output headers."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.errors import InputError, Reason
from service.messages import (
    DLQ_MAX_RECORD_BYTES,
    MAX_ID_LENGTH,
    MAX_OUTPUT_KEY_BYTES,
    SCHEMA_VERSION,
    BytesImage,
    DeadLetter,
    Label,
    ModerationRequest,
    S3Image,
    Source,
    UrlImage,
    dead_letter_output,
    describe_image,
    dlq_record,
    id_of_invalid,
    output_headers,
    output_key,
    parse_request,
    verdict_record,
)
from tests.images import JPEG_HEADER, PNG_HEADER, b64

MAX_RECORD = 64 * 1024
MAX_IMAGE = 4096
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
SOURCE = Source("moderation.requests", 3, 1234, timestamp_ms=1_700_000_000_000)


def parse(value: bytes | None, *, max_record: int = MAX_RECORD) -> ModerationRequest:
    return parse_request(value, max_record_bytes=max_record, max_image_bytes=MAX_IMAGE)


def encode(body: Any) -> bytes:
    return orjson.dumps(body)


def with_image(image: Any, **extra: Any) -> bytes:
    return encode({"id": "req-1", "image": image, **extra})


S3 = {"s3": {"bucket": "b", "key": "k"}}


# --- parse_request: valid requests -----------------------------------------------------------


def test_parses_an_s3_request() -> None:
    request = parse(
        encode(
            {
                "id": "req-1",
                "image": {"s3": {"bucket": "photos", "key": "a/b.png", "version": "v3"}},
                "attributes": {"user": "u-1", "n": 2},
                "min_confidence": 60,
            }
        )
    )
    assert request == ModerationRequest(
        id="req-1",
        image=S3Image(bucket="photos", key="a/b.png", version="v3"),
        attributes={"user": "u-1", "n": 2},
        min_confidence=60.0,
    )
    assert isinstance(request.min_confidence, float)


def test_parses_an_s3_request_without_version_or_options() -> None:
    request = parse(with_image(S3))
    assert request.image == S3Image(bucket="b", key="k", version=None)
    assert request.attributes is None
    assert request.min_confidence is None


def test_parses_a_url_request() -> None:
    request = parse(with_image({"url": "https://cdn.example.com/x.jpg"}))
    assert request.image == UrlImage("https://cdn.example.com/x.jpg")


@pytest.mark.parametrize("data", [PNG_HEADER, JPEG_HEADER])
def test_parses_inline_bytes(data: bytes) -> None:
    request = parse(with_image({"bytes": b64(data)}))
    assert request.image == BytesImage(data)


@pytest.mark.parametrize("confidence", [0, 0.0, 55.5, 100])
def test_min_confidence_bounds_are_inclusive(confidence: float) -> None:
    assert parse(with_image(S3, min_confidence=confidence)).min_confidence == float(confidence)


def test_id_at_the_maximum_length_is_accepted() -> None:
    request_id = "x" * MAX_ID_LENGTH
    assert parse(encode({"id": request_id, "image": S3})).id == request_id


def test_record_exactly_at_the_size_limit_is_accepted() -> None:
    value = with_image(S3)
    assert parse(value, max_record=len(value)).id == "req-1"


# --- parse_request: every error reason --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param(None, Reason.MALFORMED_JSON, id="tombstone"),
        pytest.param(b"", Reason.MALFORMED_JSON, id="empty"),
        pytest.param(b'{"id": "a",', Reason.MALFORMED_JSON, id="truncated-json"),
        pytest.param(b"not json", Reason.MALFORMED_JSON, id="not-json"),
        pytest.param(b'{"id": "\xff"}', Reason.MALFORMED_JSON, id="invalid-utf8"),
        pytest.param(b"[1, 2]", Reason.MALFORMED_JSON, id="array"),
        pytest.param(b'"text"', Reason.MALFORMED_JSON, id="string"),
        pytest.param(b"null", Reason.MALFORMED_JSON, id="json-null"),
        pytest.param(b"42", Reason.MALFORMED_JSON, id="number"),
        pytest.param(encode({"image": S3}), Reason.MISSING_FIELD, id="missing-id"),
        pytest.param(encode({"id": None, "image": S3}), Reason.MISSING_FIELD, id="null-id"),
        pytest.param(encode({"id": "", "image": S3}), Reason.INVALID_FIELD, id="empty-id"),
        pytest.param(
            encode({"id": "x" * (MAX_ID_LENGTH + 1), "image": S3}),
            Reason.INVALID_FIELD,
            id="id-too-long",
        ),
        pytest.param(encode({"id": 7, "image": S3}), Reason.INVALID_FIELD, id="numeric-id"),
        pytest.param(encode({"id": ["a"], "image": S3}), Reason.INVALID_FIELD, id="list-id"),
        pytest.param(encode({"id": True, "image": S3}), Reason.INVALID_FIELD, id="bool-id"),
        pytest.param(encode({"id": "a"}), Reason.MISSING_FIELD, id="missing-image"),
        pytest.param(with_image("s3://b/k"), Reason.INVALID_FIELD, id="image-string"),
        pytest.param(with_image(None), Reason.INVALID_FIELD, id="image-null"),
        pytest.param(with_image({}), Reason.INVALID_FIELD, id="image-no-kind"),
        pytest.param(
            with_image({"s3": {"bucket": "b", "key": "k"}, "url": "https://x/y.png"}),
            Reason.INVALID_FIELD,
            id="image-two-kinds",
        ),
        pytest.param(
            with_image({"url": "https://x/y.png", "extra": 1}),
            Reason.INVALID_FIELD,
            id="image-unknown-key",
        ),
        pytest.param(with_image({"s3": "b/k"}), Reason.INVALID_FIELD, id="s3-not-object"),
        pytest.param(with_image({"s3": {"key": "k"}}), Reason.MISSING_FIELD, id="s3-no-bucket"),
        pytest.param(with_image({"s3": {"bucket": "b"}}), Reason.MISSING_FIELD, id="s3-no-key"),
        pytest.param(
            with_image({"s3": {"bucket": "", "key": "k"}}), Reason.INVALID_FIELD, id="s3-empty"
        ),
        pytest.param(
            with_image({"s3": {"bucket": "b", "key": 5}}), Reason.INVALID_FIELD, id="s3-key-int"
        ),
        pytest.param(
            with_image({"s3": {"bucket": "b", "key": "k", "version": 3}}),
            Reason.INVALID_FIELD,
            id="s3-version-int",
        ),
        pytest.param(with_image({"url": ""}), Reason.INVALID_FIELD, id="url-empty"),
        pytest.param(with_image({"url": 5}), Reason.INVALID_FIELD, id="url-not-string"),
        pytest.param(
            with_image({"url": "https://x/" + "a" * 2048}), Reason.INVALID_URL, id="url-too-long"
        ),
        pytest.param(with_image({"bytes": 123}), Reason.INVALID_FIELD, id="bytes-not-string"),
        pytest.param(with_image({"bytes": "%%%not base64%%%"}), Reason.INVALID_BASE64, id="b64"),
        pytest.param(
            with_image({"bytes": b64(PNG_HEADER).rstrip("=") + "!"}),
            Reason.INVALID_BASE64,
            id="b64-bad-char",
        ),
        pytest.param(
            with_image({"bytes": b64(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3")}),
            Reason.NOT_AN_IMAGE,
            id="pdf",
        ),
        pytest.param(
            with_image({"bytes": b64(b"just some text, no image")}),
            Reason.NOT_AN_IMAGE,
            id="text-bytes",
        ),
        pytest.param(with_image({"bytes": ""}), Reason.NOT_AN_IMAGE, id="empty-bytes"),
        pytest.param(
            with_image({"bytes": b64(PNG_HEADER + b"\x00" * MAX_IMAGE)}),
            Reason.IMAGE_TOO_LARGE,
            id="image-too-large",
        ),
        pytest.param(with_image(S3, attributes=["a"]), Reason.INVALID_FIELD, id="attributes-list"),
        pytest.param(with_image(S3, min_confidence=-0.1), Reason.INVALID_FIELD, id="conf-low"),
        pytest.param(with_image(S3, min_confidence=100.5), Reason.INVALID_FIELD, id="conf-high"),
        pytest.param(with_image(S3, min_confidence=True), Reason.INVALID_FIELD, id="conf-true"),
        pytest.param(with_image(S3, min_confidence=False), Reason.INVALID_FIELD, id="conf-false"),
        pytest.param(with_image(S3, min_confidence="50"), Reason.INVALID_FIELD, id="conf-str"),
        pytest.param(
            b'{"id": "a", "image": {"s3": {"bucket": "b", "key": "k"}}, "min_confidence": 1e400}',
            None,  # orjson may refuse the literal (malformed) or read infinity (out of range)
            id="conf-overflow",
        ),
    ],
)
def test_refused_with_reason(value: bytes | None, reason: Reason | None) -> None:
    with pytest.raises(InputError) as info:
        parse(value)
    if reason is None:
        assert info.value.reason in {Reason.MALFORMED_JSON, Reason.INVALID_FIELD}
    else:
        assert info.value.reason is reason
    assert info.value.retriable is False
    assert info.value.message


def test_oversized_record_is_refused_before_parsing() -> None:
    value = b"x" * (MAX_RECORD + 1)  # not JSON either: the size check must come first
    with pytest.raises(InputError) as info:
        parse(value)
    assert info.value.reason is Reason.RECORD_TOO_LARGE
    assert str(MAX_RECORD + 1) in info.value.message


def test_image_limit_is_the_one_passed_in() -> None:
    data = PNG_HEADER + b"\x00" * 100
    value = with_image({"bytes": b64(data)})
    assert parse_request(value, max_record_bytes=MAX_RECORD, max_image_bytes=len(data)).image == (
        BytesImage(data)
    )
    with pytest.raises(InputError) as info:
        parse_request(value, max_record_bytes=MAX_RECORD, max_image_bytes=len(data) - 1)
    assert info.value.reason is Reason.IMAGE_TOO_LARGE


@given(st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_raise_input_error(value: bytes) -> None:
    request: ModerationRequest | None = None
    reason: Reason | None = None
    try:
        request = parse(value)
    except InputError as exc:
        reason = exc.reason
    if request is None:
        assert isinstance(reason, Reason)
    else:
        assert 1 <= len(request.id) <= MAX_ID_LENGTH


# --- id_of_invalid ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (encode({"id": "abc", "image": {"bytes": "!!"}}), "abc"),
        (encode({"id": "abc"}), "abc"),
        (encode({"id": ""}), None),
        (encode({"id": 5}), None),
        (encode({"id": "x" * (MAX_ID_LENGTH + 1)}), None),
        (encode(["abc"]), None),
        (b"{broken", None),
        (None, None),
    ],
)
def test_id_of_invalid(value: bytes | None, expected: str | None) -> None:
    assert id_of_invalid(value, MAX_RECORD) == expected


def test_id_of_invalid_ignores_oversized_records() -> None:
    value = encode({"id": "abc", "pad": "x" * 100})
    assert id_of_invalid(value, len(value)) == "abc"
    assert id_of_invalid(value, len(value) - 1) is None


# --- describe_image and verdict_record --------------------------------------------------------


def test_describe_image_summarises_bytes_and_keeps_references() -> None:
    data = PNG_HEADER + b"payload"
    assert describe_image(BytesImage(data)) == {
        "bytes": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    }
    assert describe_image(S3Image("b", "k")) == {"s3": {"bucket": "b", "key": "k"}}
    assert describe_image(S3Image("b", "k", "v1")) == {
        "s3": {"bucket": "b", "key": "k", "version": "v1"}
    }
    assert describe_image(UrlImage("https://x/y.png")) == {"url": "https://x/y.png"}


def test_verdict_record_shape() -> None:
    request = ModerationRequest(
        id="req-9",
        image=S3Image("photos", "cat.png", "v2"),
        attributes={"user": "u-1"},
        min_confidence=None,
    )
    labels = [
        Label("Weapons", "Violence", 91.5, 2),
        Label("Violence", "", 93.0, 1),
    ]
    reasons = [{"rule": "reject_threshold", "label": "Violence"}]
    record = orjson.loads(
        verdict_record(
            request,
            verdict="rejected",
            decided_by="model",
            labels=labels,
            model_version="7.0",
            reasons=reasons,
            source=SOURCE,
            received_at="2024-01-02T03:04:05.678Z",
        )
    )
    decided_at = record.pop("decided_at")
    assert TIMESTAMP.match(decided_at)
    assert record == {
        "schema_version": SCHEMA_VERSION,
        "id": "req-9",
        "verdict": "rejected",
        "decided_by": "model",
        "labels": [
            {"name": "Weapons", "parent": "Violence", "confidence": 91.5, "taxonomy_level": 2},
            {"name": "Violence", "parent": "", "confidence": 93.0, "taxonomy_level": 1},
        ],
        "model_version": "7.0",
        "reasons": reasons,
        "attributes": {"user": "u-1"},
        "image": {"s3": {"bucket": "photos", "key": "cat.png", "version": "v2"}},
        "source": {"topic": "moderation.requests", "partition": 3, "offset": 1234},
        "received_at": "2024-01-02T03:04:05.678Z",
    }


def test_verdict_record_never_copies_inline_image_bytes() -> None:
    data = PNG_HEADER + b"SECRET-PIXELS"
    request = ModerationRequest("r", BytesImage(data), None, 40.0)
    value = verdict_record(
        request,
        verdict="approved",
        decided_by="fallback",
        labels=[],
        model_version=None,
        reasons=[],
        source=SOURCE,
        received_at="2024-01-02T03:04:05.678Z",
    )
    record = orjson.loads(value)
    assert b"SECRET-PIXELS" not in value
    assert base64.b64encode(data) not in value
    assert record["image"] == {
        "bytes": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    }
    assert record["labels"] == []
    assert record["attributes"] is None
    assert record["model_version"] is None
    assert record["decided_by"] == "fallback"


# --- dlq_record -------------------------------------------------------------------------------


def dlq(key: bytes | None, value: bytes | None, request_id: str | None = None) -> dict[str, Any]:
    record: dict[str, Any] = orjson.loads(
        dlq_record(
            DeadLetter(
                key=key,
                value=value,
                source=SOURCE,
                reason=Reason.NOT_AN_IMAGE.value,
                message="not a JPEG or PNG image",
                attempts=2,
                request_id=request_id,
            ),
        )
    )
    return record


def test_dlq_record_shape_with_utf8_original() -> None:
    record = dlq(b"key-1", b'{"id": "r-1", "image": "\xc3\xa9"}', "r-1")
    failed_at = record.pop("failed_at")
    assert TIMESTAMP.match(failed_at)
    assert record == {
        "schema_version": SCHEMA_VERSION,
        "id": "r-1",
        "original": {
            "key": "key-1",
            "key_encoding": "utf-8",
            "value": '{"id": "r-1", "image": "\u00e9"}',
            "value_encoding": "utf-8",
            "value_size": 28,
            "value_sha256": hashlib.sha256(b'{"id": "r-1", "image": "\xc3\xa9"}').hexdigest(),
            "headers": [],
            "truncated": [],
        },
        "source": {"topic": "moderation.requests", "partition": 3, "offset": 1234},
        "error": {"reason": "not_an_image", "message": "not a JPEG or PNG image"},
        "attempts": 2,
    }


def test_dlq_record_keeps_non_utf8_value_as_base64() -> None:
    value = b"\x89PNG\r\n\x1a\n\xff\xfe binary"
    record = dlq(None, value)
    assert record["id"] is None
    assert record["original"] == {
        "key": None,
        "key_encoding": None,
        "value": base64.b64encode(value).decode(),
        "value_encoding": "base64",
        "value_size": len(value),
        "value_sha256": hashlib.sha256(value).hexdigest(),
        "headers": [],
        "truncated": [],
    }
    assert base64.b64decode(record["original"]["value"]) == value


def test_dlq_record_of_a_tombstone_with_binary_key() -> None:
    record = dlq(b"\xff\x00", None)
    assert record["original"] == {
        "key": base64.b64encode(b"\xff\x00").decode(),
        "key_encoding": "base64",
        "value": None,
        "value_encoding": None,
        "value_size": None,
        "value_sha256": None,
        "headers": [],
        "truncated": [],
    }


@given(st.one_of(st.none(), st.binary(max_size=64)), st.one_of(st.none(), st.binary(max_size=64)))
def test_dlq_original_round_trips(key: bytes | None, value: bytes | None) -> None:
    original = dlq(key, value)["original"]
    for data, text, encoding in (
        (key, original["key"], original["key_encoding"]),
        (value, original["value"], original["value_encoding"]),
    ):
        if data is None:
            assert text is None
            assert encoding is None
        elif encoding == "utf-8":
            assert text.encode("utf-8") == data
        else:
            assert encoding == "base64"
            assert base64.b64decode(text) == data


def test_dlq_record_of_a_huge_control_character_value_fits_the_limit() -> None:
    # 3 MiB of 0x01 escapes to ~19 MB of JSON ("\u0001" per byte): the broker would refuse it.
    value = b"\x01" * (3 * 1024 * 1024)
    raw = dlq_record(
        DeadLetter(
            key=b"k",
            value=value,
            source=SOURCE,
            reason=Reason.RECORD_TOO_LARGE.value,
            message="too large",
            attempts=1,
            request_id=None,
        ),
        max_bytes=DLQ_MAX_RECORD_BYTES,
    )
    assert len(raw) <= DLQ_MAX_RECORD_BYTES
    original = orjson.loads(raw)["original"]
    assert original["truncated"] == ["value"]
    assert original["value_encoding"] == "base64"
    assert original["value_size"] == len(value)
    assert original["value_sha256"] == hashlib.sha256(value).hexdigest()
    prefix = base64.b64decode(original["value"])
    assert value.startswith(prefix)
    assert len(prefix) > DLQ_MAX_RECORD_BYTES // 2  # most of the budget keeps evidence


@given(
    st.binary(max_size=4096),
    st.binary(max_size=20_000),
    st.lists(st.tuples(st.binary(max_size=64), st.binary(max_size=3000)), max_size=8),
    st.integers(min_value=1500, max_value=20_000),
)
def test_dead_letter_output_never_exceeds_its_limit(
    key: bytes, value: bytes, headers: list[tuple[bytes, bytes]], limit: int
) -> None:
    out = dead_letter_output(
        DeadLetter(
            key=key,
            value=value,
            headers=headers,
            source=SOURCE,
            reason=Reason.MALFORMED_JSON.value,
            message="x" * 5000,
            attempts=1,
            request_id=None,
            consumer="pipeline",
        ),
        max_record_bytes=limit,
    )
    size = len(out.key or b"") + len(out.value) + sum(len(n) + len(v) for n, v in out.headers)
    assert size <= limit
    assert orjson.loads(out.value)["original"]["value_sha256"] == hashlib.sha256(value).hexdigest()


def test_dead_letter_output_keeps_undecodable_header_names_in_the_record_only() -> None:
    out = dead_letter_output(
        DeadLetter(
            key=None,
            value=b"{}",
            headers=[(b"\xff\xfebad", b"v"), ("trace-id", b"abc")],
            source=SOURCE,
            reason=Reason.UNDECODABLE_RECORD.value,
            message="header key is not UTF-8",
            attempts=1,
            request_id=None,
        ),
    )
    assert out.headers == [("trace-id", b"abc"), ("moderation-error-reason", b"undecodable_record")]
    recorded = orjson.loads(out.value)["original"]["headers"]
    assert recorded[0] == {
        "key": base64.b64encode(b"\xff\xfebad").decode(),
        "key_encoding": "base64",
        "value": "v",
        "value_encoding": "utf-8",
    }


def test_output_key_is_hashed_when_too_large() -> None:
    assert output_key(b"small") == b"small"
    assert output_key(None) is None
    big = b"k" * (MAX_OUTPUT_KEY_BYTES + 1)
    assert output_key(big) == hashlib.sha256(big).hexdigest().encode()


# --- output_headers ---------------------------------------------------------------------------


def test_output_headers_keep_originals_and_add_ours() -> None:
    original = [("traceparent", b"00-abc-def-01"), ("tenant", b"\xffraw")]
    headers = output_headers(original, verdict="approved", decided_by="model", id="r-1")
    assert headers == [
        ("traceparent", b"00-abc-def-01"),
        ("tenant", b"\xffraw"),
        ("moderation-verdict", b"approved"),
        ("moderation-decided-by", b"model"),
        ("moderation-id", b"r-1"),
    ]


def test_output_headers_replace_stale_copies_of_ours() -> None:
    original = [
        ("moderation-verdict", b"rejected"),
        ("traceparent", b"t"),
        ("moderation-verdict", b"review"),
        ("moderation-decided-by", b"human"),
        ("moderation-note", b"kept"),
    ]
    headers = output_headers(original, verdict="approved", decided_by="model")
    assert headers == [
        ("traceparent", b"t"),
        ("moderation-note", b"kept"),
        ("moderation-verdict", b"approved"),
        ("moderation-decided-by", b"model"),
    ]
    assert original[0] == ("moderation-verdict", b"rejected")  # the input list is not modified


def test_output_headers_error_reason() -> None:
    headers = output_headers([("moderation-error-reason", b"old")], error_reason="not_an_image")
    assert headers == [("moderation-error-reason", b"not_an_image")]


def test_output_headers_without_extras_is_a_copy() -> None:
    original = [("a", b"1"), ("a", b"2")]
    assert output_headers(original) == original


def nested_request(request_id: str, levels: int) -> bytes:
    attributes = b'{"x":' * levels + b"1" + b"}" * levels
    image = b'"image":{"url":"https://example.com/a.png"}'
    return b'{"id":"' + request_id.encode() + b'",' + image + b',"attributes":' + attributes + b"}"


def test_attributes_nested_too_deeply_are_refused_at_parse() -> None:
    # orjson parses 1024 levels but writes only 254: such a request once became internal_error.
    with pytest.raises(InputError) as caught:
        parse_request(nested_request("deep", 300), max_record_bytes=1 << 20, max_image_bytes=1024)
    assert caught.value.reason is Reason.INVALID_FIELD
    parsed = parse_request(nested_request("ok", 64), max_record_bytes=1 << 20, max_image_bytes=1024)
    assert orjson.loads(orjson.dumps(parsed.attributes))
