"""Pure review pieces: loop names, completion events, reviewers' answers, routing with review."""

from __future__ import annotations

import re

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.errors import InputError, Reason
from service.messages import BytesImage, Label, ModerationRequest, S3Image
from service.policy import RoutingPolicy, Thresholds
from service.review.answers import TASK_KEY, decide_from_output
from service.review.events import completion_event, parse_event
from service.review.loops import loop_name
from service.routing import decide

LOOP_NAME = re.compile(r"^[a-z0-9](-*[a-z0-9])*$")


def request(request_id: str, image: S3Image | BytesImage) -> ModerationRequest:
    return ModerationRequest(id=request_id, image=image, attributes=None, min_confidence=None)


@given(st.text(min_size=1, max_size=128), st.text(min_size=1), st.text(min_size=1))
def test_loop_names_fit_a2i_and_are_deterministic(request_id: str, bucket: str, key: str) -> None:
    first = loop_name(request(request_id, S3Image(bucket, key)))
    assert LOOP_NAME.fullmatch(first)
    assert len(first) <= 63
    assert loop_name(request(request_id, S3Image(bucket, key))) == first


def test_loop_name_changes_with_the_image_not_with_attributes() -> None:
    a = loop_name(request("r1", S3Image("b", "k1")))
    assert a != loop_name(request("r1", S3Image("b", "k2")))
    assert a != loop_name(request("r2", S3Image("b", "k1")))
    assert loop_name(request("r1", BytesImage(b"x"))) != loop_name(request("r1", BytesImage(b"y")))


def event(status: str = "Completed", **detail: object) -> bytes:
    body = completion_event(
        loop_name="loop-1",
        status=status,  # type: ignore[arg-type]
        output_uri="s3://bucket/fd/2026/01/01/00/00/00/loop-1/output.json"
        if status == "Completed"
        else None,
        flow_definition_arn="arn:aws:sagemaker:us-east-1:000000000000:flow-definition/fd",
        event_id="e1",
        time="2026-01-01T00:00:00Z",
        created="2026-01-01T00:00:00.000Z",
        failure_code="Expired" if status == "Failed" else None,
    )
    body["detail"].update(detail)
    return orjson.dumps(body)


def test_completion_event_round_trip() -> None:
    parsed = parse_event(event())
    assert (parsed.loop_name, parsed.status, parsed.expired) == ("loop-1", "Completed", False)
    assert parsed.output_uri is not None and parsed.output_uri.endswith("/loop-1/output.json")
    failed = parse_event(event("Failed"))
    assert failed.expired and failed.output_uri is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, Reason.MALFORMED_EVENT),
        (b"nope", Reason.MALFORMED_JSON),
        (b"[]", Reason.MALFORMED_EVENT),
        (b'{"detail-type": "Something Else", "detail": {}}', Reason.MALFORMED_EVENT),
        (event(humanLoopStatus="InProgress"), Reason.MALFORMED_EVENT),
        (event(humanLoopName=""), Reason.MALFORMED_EVENT),
        (event(humanLoopOutput=None), Reason.MALFORMED_EVENT),
    ],
)
def test_bad_completion_events_are_input_errors(value: bytes | None, reason: Reason) -> None:
    with pytest.raises(InputError) as caught:
        parse_event(value)
    assert caught.value.reason is reason


def output(*picks: list[dict[str, str]]) -> bytes:
    return orjson.dumps(
        {
            "humanAnswers": [
                {
                    "answerContent": {TASK_KEY: {"moderationLabels": labels}},
                    "workerId": f"w{i}",
                    "submissionTime": f"2026-01-01T00:0{i}:00.000Z",
                }
                for i, labels in enumerate(picks)
            ]
        }
    )


NUDITY = {"name": "Explicit Nudity", "parentName": "Explicit"}
GUN = {"name": "Weapons", "parentName": "Violence"}


@pytest.mark.parametrize(
    ("picks", "consensus", "verdict", "labels"),
    [
        ([[NUDITY]], "any", "rejected", {"Explicit Nudity"}),
        ([[]], "any", "approved", set()),
        ([[], [GUN]], "any", "rejected", {"Weapons"}),
        ([[], [GUN]], "majority", "rejected", {"Weapons"}),  # a tie rejects
        ([[], [], [GUN]], "majority", "approved", set()),
        ([[NUDITY], [NUDITY, GUN], []], "majority", "rejected", {"Explicit Nudity", "Weapons"}),
    ],
)
def test_consensus_rules(picks: list, consensus: str, verdict: str, labels: set[str]) -> None:
    decision = decide_from_output(output(*picks), consensus)  # type: ignore[arg-type]
    assert decision.verdict == verdict
    assert {label.name for label in decision.labels} == labels
    assert decision.workers == [f"w{i}" for i in range(len(picks))]
    assert decision.submitted_at == f"2026-01-01T00:0{len(picks) - 1}:00.000Z"
    for label in decision.labels:
        assert label.confidence == 100.0
        assert label.taxonomy_level == 2


@pytest.mark.parametrize(
    "raw", [b"{", b"{}", b'{"humanAnswers": []}', b'{"humanAnswers": [{"answerContent": {}}]}']
)
def test_unusable_outputs_are_unreadable(raw: bytes) -> None:
    with pytest.raises(InputError) as caught:
        decide_from_output(raw, "any")
    assert caught.value.reason is Reason.UNREADABLE_OUTPUT


POLICY = RoutingPolicy(default=Thresholds(reject=80, review=50))


def label(name: str, confidence: float) -> Label:
    return Label(name=name, parent="", confidence=confidence, taxonomy_level=1)


def test_a_started_managed_loop_always_means_review() -> None:
    decision = decide([label("Explicit", 99)], POLICY, human_loop_arn="arn:loop")
    assert decision.verdict == "review"
    assert decision.reasons[0]["rule"] == "human_loop_started"
    assert decision.reasons[1]["rule"] == "reject_threshold"


def test_reject_threshold_beats_activation_conditions() -> None:
    decision = decide([label("Explicit", 99)], POLICY, conditions_hold=["sampled"])
    assert decision.verdict == "rejected"
    assert [r["rule"] for r in decision.reasons] == ["reject_threshold", "activation_conditions"]


def test_activation_conditions_send_to_review_below_the_review_band() -> None:
    decision = decide([label("Alcohol", 10)], POLICY, conditions_hold=["sampled at 5%"])
    assert decision.verdict == "review"
    assert decision.reasons == [
        {"rule": "activation_conditions", "policy": "a2i", "conditions": ["sampled at 5%"]}
    ]
    assert decide([label("Alcohol", 10)], POLICY).verdict == "approved"
