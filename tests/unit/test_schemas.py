"""The published JSON Schemas agree with the code that writes and reads the records."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import orjson
import pytest

from service.errors import Reason
from service.messages import DeadLetter, Source, dlq_record, parse_request
from tests.images import PNG_HEADER, b64

SCHEMAS = Path(__file__).parents[2] / "schemas"


def load(name: str) -> dict:
    return orjson.loads((SCHEMAS / f"{name}.schema.json").read_bytes())


@pytest.mark.parametrize("name", ["request", "verdict", "dlq"])
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    jsonschema.Draft202012Validator.check_schema(load(name))


def test_dlq_reason_enum_lists_every_reason_code() -> None:
    enum = load("dlq")["properties"]["error"]["properties"]["reason"]["enum"]
    assert sorted(enum) == sorted(reason.value for reason in Reason)


@pytest.mark.parametrize(
    "body",
    [
        {"id": "a", "image": {"s3": {"bucket": "b", "key": "k", "version": "v1"}}},
        {"id": "b", "image": {"url": "https://example.com/a.png"}, "attributes": {"user": 1}},
        {"id": "c", "image": {"bytes": b64(PNG_HEADER)}, "min_confidence": 60},
    ],
)
def test_requests_the_schema_accepts_are_parsed(body: dict) -> None:
    jsonschema.validate(body, load("request"))
    assert (
        parse_request(orjson.dumps(body), max_record_bytes=10**6, max_image_bytes=10**6).id
        == body["id"]
    )


@pytest.mark.parametrize(
    "body",
    [
        {"image": {"url": "https://example.com/a.png"}},
        {"id": "", "image": {"url": "https://example.com/a.png"}},
        {"id": "x", "image": {"url": "https://e/a.png", "bytes": "AAAA"}},
        {"id": "x", "image": {"s3": {"bucket": "b"}}},
        {"id": "x", "image": {"url": "https://e/a.png"}, "min_confidence": 101},
    ],
)
def test_requests_the_schema_refuses_are_refused(body: dict) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, load("request"))


def test_dlq_record_matches_schema_for_binary_payloads() -> None:
    record = dlq_record(
        DeadLetter(
            key=b"\xff\xfe",
            value=b"\x00\x9f binary",
            source=Source("in", 0, 7),
            reason=Reason.MALFORMED_JSON,
            message="value is not valid JSON",
            attempts=1,
            request_id=None,
        ),
    )
    value = orjson.loads(record)
    jsonschema.validate(value, load("dlq"))
    assert value["original"]["value_encoding"] == "base64"
