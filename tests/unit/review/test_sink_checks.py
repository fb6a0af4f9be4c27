"""The sink's checks that need no I/O: output URIs, forged answers, store errors, its settings."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    ParamValidationError,
    ReadTimeoutError,
)

from service.console.a2i import OutputWriter
from service.console.settings import FlowDefinition, OutputLocation
from service.errors import BackendError, ConfigError, InputError, Reason
from service.objectstore import translate_error
from service.review.answers import TASK_KEY, check_origin, decide_from_output
from service.review.events import completion_event, parse_event
from service.review.outputs import EVENT_PROBLEMS
from service.settings import Settings

FLOW = "arn:aws:sagemaker:us-east-1:000000000000:flow-definition/fd"
OTHER_FLOW = "arn:aws:sagemaker:us-east-1:000000000000:flow-definition/other"
LAYOUT = "fd/2026/01/01/00/00/00"


def event(uri: str, loop: str = "loop-1", **detail: Any) -> bytes:
    body = completion_event(
        loop_name=loop,
        status="Completed",
        output_uri=uri,
        flow_definition_arn=FLOW,
        event_id="e1",
        time="2026-01-01T00:00:00Z",
        created="2026-01-01T00:00:00.000Z",
    )
    body["detail"].update(detail)
    return orjson.dumps(body)


def reason_of(value: bytes) -> Reason:
    with pytest.raises(InputError) as caught:
        parse_event(value)
    return caught.value.reason


@pytest.mark.parametrize(
    "uri",
    [
        "s3:///etc/passwd",  # no bucket: botocore refuses it client-side, forever
        f"s3://Not_A_Bucket/{LAYOUT}/loop-1/output.json",
        f"s3://ab/{LAYOUT}/loop-1/output.json",  # too short for a bucket
        f"s3://192.168.0.1/{LAYOUT}/loop-1/output.json",
        f"s3://user@bucket/{LAYOUT}/loop-1/output.json",
        f"s3://bucket:99/{LAYOUT}/loop-1/output.json",
        "s3://bucket",
        "s3://bucket/",
        f"s3://bucket/{LAYOUT}/loop-1/output.json?versionId=1",
        f"https://bucket.s3.amazonaws.com/{LAYOUT}/loop-1/output.json",
        f"ftp://bucket/{LAYOUT}/loop-1/output.json",
        f"file://host/srv/{LAYOUT}/loop-1/output.json",
        f"file:relative/{LAYOUT}/loop-1/output.json",
        f"s3://bucket/x/../{LAYOUT}/loop-1/output.json",
        "s3://[bucket/output.json",
        "s3://bucket/" + "k" * 3000,
    ],
)
def test_malformed_output_uris_are_rejected_when_the_event_is_parsed(uri: str) -> None:
    assert reason_of(event(uri)) == Reason.MALFORMED_EVENT


@pytest.mark.parametrize(
    "value",
    [
        event(f"s3://bucket/{LAYOUT}/loop-2/output.json"),  # another loop's answers
        event(f"s3://bucket/{LAYOUT}/loop-1/other.json"),
        event("s3://bucket/loop-1/output.json"),  # not A2I's layout
        event("s3://bucket/fd/2026/01/01/00/00/xx/loop-1/output.json"),
        event(f"s3://bucket/{LAYOUT.replace('fd', 'other')}/loop-1/output.json"),  # other flow
        event(
            f"s3://bucket/{LAYOUT}/loop-1/output.json",
            humanLoopArn="arn:aws:sagemaker:us-east-1:000000000000:human-loop/loop-2",
        ),
    ],
)
def test_outputs_outside_the_loops_own_prefix_are_forged(value: bytes) -> None:
    assert reason_of(value) == Reason.FORGED_EVENT


def test_a2i_and_console_layouts_are_accepted(tmp_path: Path) -> None:
    for uri in (
        f"s3://bucket/{LAYOUT}/loop-1/output.json",
        f"s3://my.bucket-1/a/deep/prefix/{LAYOUT}/loop-1/output.json",
        f"file:///srv/reviews/{LAYOUT}/loop-1/output.json",
    ):
        parsed = parse_event(event(uri))
        assert (parsed.output_flow_name, parsed.flow_definition_arn) == ("fd", FLOW)
    flow = FlowDefinition(arn=FLOW, name="fd", region="us-east-1", account="000000000000")
    item: Any = SimpleNamespace(loop_name="loop-1", created_at=1_767_225_600.0)
    for location in (
        OutputLocation(kind="s3", bucket="bucket", prefix="reviews/out", directory=None),
        OutputLocation(kind="file", bucket=None, prefix="", directory=tmp_path / "out dir"),
    ):
        uri = OutputWriter(location, region=None, s3_endpoint_url=None).uri_for(item, flow)
        assert parse_event(event(uri)).output_uri == uri


def output(loop: str, flow: str | None) -> bytes:
    answer = {"answerContent": {TASK_KEY: {"moderationLabels": []}}, "workerId": "w"}
    body: dict[str, Any] = {"humanLoopName": loop, "humanAnswers": [answer]}
    if flow is not None:
        body["flowDefinitionArn"] = flow
    return orjson.dumps(body)


def origin_reason(raw: bytes, *, event_flow: str | None, record_flow: str | None) -> Reason | None:
    human = decide_from_output(raw, "any")
    try:
        check_origin(
            human,
            loop="loop-1",
            path_flow_name="fd",
            event_flow_arn=event_flow,
            record_flow_arn=record_flow,
        )
    except InputError as exc:
        return exc.reason
    return None


def test_answers_count_only_for_the_loop_and_flow_they_were_given_in() -> None:
    assert origin_reason(output("loop-1", FLOW), event_flow=FLOW, record_flow=FLOW) is None
    assert origin_reason(output("loop-1", FLOW), event_flow=None, record_flow=None) is None
    forged = [
        origin_reason(output("loop-2", FLOW), event_flow=FLOW, record_flow=FLOW),
        origin_reason(output("loop-1", OTHER_FLOW), event_flow=FLOW, record_flow=None),
        origin_reason(output("loop-1", OTHER_FLOW), event_flow=OTHER_FLOW, record_flow=FLOW),
        origin_reason(output("loop-1", OTHER_FLOW), event_flow=None, record_flow=None),  # path
        origin_reason(output("loop-1", None), event_flow=FLOW, record_flow=FLOW),
    ]
    assert forged == [Reason.FORGED_EVENT] * len(forged)


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )


@pytest.mark.parametrize(
    ("error", "retriable"),
    [
        (ParamValidationError(report="Invalid bucket name"), False),
        (client_error("NoSuchKey", 404), False),
        (client_error("AccessDenied", 403), False),
        (client_error("InvalidBucketName", 400), False),
        (client_error("SlowDown", 503), True),
        (client_error("InternalError", 500), True),
        (client_error("Throttling", 400), True),
        (client_error("ExpiredToken", 400), True),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), True),
        (TimeoutError(), True),
    ],
)
def test_store_errors_are_transient_only_when_asking_again_can_help(
    error: Exception, retriable: bool
) -> None:
    translated = translate_error(error, "s3://bucket/key")
    if retriable:  # the sink retries every BackendError but these, within its deadline
        assert isinstance(translated, BackendError)
        assert not isinstance(translated, EVENT_PROBLEMS)
    else:  # dead-lettered at once as unreadable_output
        assert isinstance(translated, EVENT_PROBLEMS)


def test_sink_bounds_are_settings_with_safe_defaults() -> None:
    review = Settings.from_env({}).review
    assert (review.orphan_ttl_s, review.max_early, review.max_event_bytes) == (
        3600.0,
        100_000,
        262_144,
    )
    assert (review.output_retry_s, review.liveness_s) == (300.0, 60.0)
    for name, bad in (
        ("MODERATION_SINK_ORPHAN_TTL_S", "0"),
        ("MODERATION_SINK_MAX_EARLY", "0"),
        ("MODERATION_SINK_MAX_EVENT_BYTES", "10"),
        ("MODERATION_SINK_OUTPUT_RETRY_S", "nope"),
        ("MODERATION_SINK_LIVENESS_S", "1"),
    ):
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({name: bad})
        assert caught.value.variable == name
