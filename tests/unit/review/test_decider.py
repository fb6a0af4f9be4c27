"""The sink's decider, rule by rule: every event in every state of a loop, the timers' helpers,
and a property: whatever the interleaving, each loop is decided at most once and each event
handed in ends in exactly one place."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.errors import Reason
from service.messages import Source
from service.review.answers import TASK_KEY
from service.review.decider import (
    MAX_EVENTS_PER_LOOP,
    SLA_EXCEEDED,
    CompletionArrived,
    Config,
    Duplicate,
    EarlyGrew,
    Event,
    OrphanDue,
    Orphaned,
    Output,
    OutputRead,
    OutputUnavailable,
    OutputUnreadable,
    Publish,
    ReadOutput,
    Requests,
    RetryDue,
    RetryScheduled,
    ReviewArrived,
    ReviewTook,
    SendToDlq,
    SlaDue,
    StaleReview,
    Superseded,
    decide,
    due,
    evictions,
    expired,
    overdue,
)
from service.review.events import completion_event
from service.review.records import ReviewRecord, parse_review_record
from service.review.state import (
    Completion,
    Held,
    LoopState,
    Retry,
    held_json,
    held_of,
    retry_json,
    retry_of,
)

SCHEMAS = Path(__file__).parents[3] / "schemas"
FLOW = "arn:aws:sagemaker:us-east-1:000000000000:flow-definition/moderation"
T0 = 1_800_000_000.0  # "now" in these tests; the decider reads no clock
LOOP = "loop-a"
EXPLICIT = [{"name": "Explicit Nudity", "parentName": "Explicit"}]


def config(**changes: Any) -> Config:
    base = Config(
        fallback="reject",
        consensus="any",
        sla_s=3600.0,
        orphan_ttl_s=600.0,
        max_early=100,
        output_retry_s=300.0,
        backoff=lambda attempts: 2.0 * attempts,
    )
    return replace(base, **changes)


CONFIG = config()


def iso(epoch: float) -> str:
    from service.clock import iso_from_epoch

    return iso_from_epoch(epoch)


def review(
    loop: str = LOOP,
    request_id: str | None = None,
    labels: list[dict[str, Any]] | None = None,
    **details: Any,
) -> ReviewRecord:
    record = {
        "schema_version": 1,
        "id": request_id or f"req-{loop}",
        "verdict": "review",
        "decided_by": "model",
        "labels": labels
        or [{"name": "Swimwear or Underwear", "parent": "", "confidence": 66, "taxonomy_level": 1}],
        "model_version": "7.0",
        "reasons": [{"rule": "review_threshold", "policy": "default"}],
        "attributes": {"uploader": "u-1"},
        "image": {"bytes": {"sha256": "ab" * 32, "size": 1234}},
        "source": {"topic": "moderation.requests", "partition": 2, "offset": 7},
        "received_at": iso(T0 - 100),
        "decided_at": iso(T0 - 99),
        "review": {
            "human_loop_name": loop,
            "mode": "managed",
            "flow_definition_arn": FLOW,
            "human_loop_arn": None,
            "activation_reasons": ["ConditionsEvaluation"],
            "activation_results": None,
            "created_at": iso(T0 - 90),
            "deadline": iso(T0 + 3600),
            **details,
        },
    }
    value = orjson.dumps(record)
    return parse_review_record(value, max_bytes=len(value))


_offsets = iter(range(10**9))


def completion(
    loop: str = LOOP,
    status: str = "Completed",
    *,
    failure_code: str | None = None,
    flow: str = FLOW,
) -> Completion:
    uri = f"s3://a2i-output/moderation/2026/11/21/00/00/00/{loop}/output.json"
    event = completion_event(
        loop_name=loop,
        status=status,  # type: ignore[arg-type]
        output_uri=uri if status == "Completed" else None,
        flow_definition_arn=flow,
        event_id="e",
        time=iso(T0 - 5),
        created=iso(T0 - 95),
        failure_code=failure_code,
        failure_reason="expired" if failure_code else None,
    )
    return Completion(event, Source("completions", 0, next(_offsets)))


def output(
    loop: str = LOOP, picks: list[list[dict[str, str]]] | None = None, **extra: Any
) -> bytes:
    picks = [EXPLICIT] if picks is None else picks
    body = {
        "flowDefinitionArn": FLOW,
        "humanLoopName": loop,
        "humanAnswers": [
            {
                "answerContent": {TASK_KEY: {"moderationLabels": labels}},
                "submissionTime": iso(T0 - 10),
                "workerId": f"worker-{i}",
            }
            for i, labels in enumerate(picks)
        ],
        **extra,
    }
    return orjson.dumps(body)


def run(
    state: LoopState, event: Event, *, now: float = T0, cfg: Config = CONFIG, loop: str = LOOP
) -> tuple[LoopState, list[Output]]:
    return decide(state, event, loop=loop, now=now, config=cfg)


def kinds(outputs: list[Output]) -> list[str]:
    return [type(output).__name__ for output in outputs]


def verdict_of(publish: Output) -> dict[str, Any]:
    assert isinstance(publish, Publish)
    body: dict[str, Any] = orjson.loads(publish.record.value)
    return body


# The states a loop can be in, each reached through the decider itself.

PENDING = LoopState(review=review())
DECIDED = LoopState(decided="rejected")


def held_state(*events: Completion, since: float = T0 - 60) -> LoopState:
    return LoopState(held=Held(tuple(events), since))


def waiting_state(first: Completion, *queued: Completion, attempts: int = 1) -> LoopState:
    retry = Retry(first, T0 - 30, attempts, T0 + 5, tuple(queued))
    return LoopState(review=review(), retry=retry)


def reading_state(first: Completion | None = None) -> LoopState:
    state, outputs = run(PENDING, CompletionArrived(first or completion()))
    assert isinstance(outputs[-1], ReadOutput)
    return state


# -- every event in every state ------------------------------------------------------------

LATER = T0 + 1000  # past the orphan TTL of a hold that began at T0 - 60
BUG = "ValueError"

STATES = {
    "empty": LoopState,
    "held": lambda: held_state(completion()),
    "pending": lambda: PENDING,
    "waiting": lambda: waiting_state(completion()),
    "reading": reading_state,
    "decided": lambda: DECIDED,
}
EVENTS = {
    "review": lambda: ReviewArrived(review()),
    "completed": lambda: CompletionArrived(completion()),
    "failed": lambda: CompletionArrived(completion(status="Failed")),
    "sla": SlaDue,
    "retry": RetryDue,
    "orphan": OrphanDue,
    "evict": lambda: OrphanDue(evict=True, chosen_since=T0 - 60),
    "read": lambda: OutputRead(output()),
    "unreadable": lambda: OutputUnreadable(Reason.UNREADABLE_OUTPUT, "NoSuchKey"),
    "unavailable": lambda: OutputUnavailable("down"),
}
READS = {"read": BUG, "unreadable": BUG, "unavailable": BUG}
NOT_WHILE_READING = dict.fromkeys(["review", "completed", "failed", "sla", "retry"], BUG)
#: state -> event -> the outputs' kinds (or the error a contract violation raises).
EXPECTED: dict[str, dict[str, str | list[str]]] = {
    "empty": {
        "review": [],
        "completed": ["EarlyGrew"],
        "failed": ["EarlyGrew"],
        "sla": [],
        "retry": [],
        "orphan": [],
        "evict": [],
        **READS,
    },
    "held": {
        "review": ["ReadOutput"],
        "completed": ["EarlyGrew"],
        "failed": ["EarlyGrew"],
        "sla": [],
        "retry": [],
        "orphan": ["Orphaned", "SendToDlq"],
        "evict": ["Orphaned", "SendToDlq"],
        **READS,
    },
    "pending": {
        "review": [],
        "completed": ["ReadOutput"],
        "failed": ["Publish"],
        "sla": ["TimedOut", "Publish"],
        "retry": [],
        "orphan": [],
        "evict": [],
        **READS,
    },
    "waiting": {
        "review": [],
        "completed": [],  # queued behind the one waiting for the store
        "failed": [],
        "sla": ["TimedOut", "Superseded", "Publish"],
        "retry": ["ReadOutput"],
        "orphan": [],
        "evict": [],
        **READS,
    },
    "reading": {
        **NOT_WHILE_READING,
        "orphan": BUG,
        "evict": BUG,
        "read": ["ReviewTook", "Publish"],
        "unreadable": ["SendToDlq"],
        "unavailable": ["RetryScheduled"],
    },
    "decided": {
        "review": ["StaleReview"],
        "completed": ["Duplicate"],
        "failed": ["Duplicate"],
        "sla": [],
        "retry": [],
        "orphan": [],
        "evict": [],
        **READS,
    },
}


def test_the_table_covers_every_state_and_event() -> None:
    assert set(EXPECTED) == set(STATES)
    assert all(set(row) == set(EVENTS) for row in EXPECTED.values())


@pytest.mark.parametrize("event_name", list(EVENTS))
@pytest.mark.parametrize("state_name", list(STATES))
def test_every_event_in_every_state(state_name: str, event_name: str) -> None:
    expected = EXPECTED[state_name][event_name]
    state = STATES[state_name]()
    event = EVENTS[event_name]()
    if expected == BUG:
        with pytest.raises(ValueError, match="output read"):
            run(state, event, now=LATER)
        return
    new, outputs = run(state, event, now=LATER)
    assert kinds(outputs) == expected
    assert new.reading is None or isinstance(outputs[-1], ReadOutput)
    if new.decided is not None:
        assert new.review is None and new.held is None and new.retry is None


# -- review records -----------------------------------------------------------------------


def test_a_review_record_makes_an_empty_loop_pending() -> None:
    record = review()
    state, outputs = run(LoopState(), ReviewArrived(record))
    assert state == LoopState(review=record)
    assert outputs == []


def test_a_review_record_replaces_a_pending_one_and_keeps_its_wait_for_the_store() -> None:
    first = completion()
    waiting = waiting_state(first)
    newer = review(requeued=1)
    state, outputs = run(waiting, ReviewArrived(newer))
    assert state.review is newer and state.retry == waiting.retry
    assert outputs == []


def test_a_review_record_for_a_decided_loop_changes_nothing() -> None:
    state, outputs = run(DECIDED, ReviewArrived(review()))
    assert state == DECIDED
    assert outputs == [StaleReview()]


def test_held_events_are_handled_in_arrival_order_when_the_review_record_comes() -> None:
    failed, good = completion(status="Failed"), completion()
    state, outputs = run(held_state(failed, good), ReviewArrived(review()))
    # The first event decides (a Failed loop: the fallback); the second is then a duplicate.
    assert kinds(outputs) == ["Publish", "Duplicate"]
    assert verdict_of(outputs[0])["decided_by"] == "fallback"
    assert outputs[1] == Duplicate(good)
    assert state == LoopState(decided="rejected")


def test_a_held_completed_event_asks_for_its_output_with_the_rest_behind_it() -> None:
    good, later = completion(), completion()
    state, outputs = run(held_state(good, later), ReviewArrived(review()))
    assert outputs == [ReadOutput(str(good.event["detail"]["humanLoopOutput"]["outputS3Uri"]))]
    assert state.held is None and state.reading is not None
    assert state.reading.completion == good and state.reading.behind == (later,)
    state, outputs = run(state, OutputRead(output()))
    assert kinds(outputs) == ["ReviewTook", "Publish", "Duplicate"]
    assert state == LoopState(decided="rejected")


def test_a_review_record_while_a_read_is_asked_for_is_a_bug() -> None:
    with pytest.raises(ValueError, match="waits for its output read"):
        run(reading_state(), ReviewArrived(review()))


# -- completion events ----------------------------------------------------------------------


def test_a_completion_without_its_review_record_is_held_from_now() -> None:
    event = completion()
    state, outputs = run(LoopState(), CompletionArrived(event), now=T0 + 7)
    assert state == LoopState(held=Held((event,), T0 + 7))
    assert outputs == [EarlyGrew()]


def test_more_held_events_keep_the_time_of_the_first() -> None:
    first, second = completion(), completion()
    state, outputs = run(held_state(first, since=T0 - 60), CompletionArrived(second))
    assert state == LoopState(held=Held((first, second), T0 - 60))
    assert outputs == [EarlyGrew()]


def test_held_events_beyond_the_bound_are_orphans_at_once() -> None:
    events = [completion() for _ in range(MAX_EVENTS_PER_LOOP)]
    start = held_state(*events)
    extra = completion()
    state, outputs = run(start, CompletionArrived(extra))
    assert state == start
    assert outputs[0] == Orphaned("overflow")
    assert isinstance(outputs[1], SendToDlq)
    assert (outputs[1].completion, outputs[1].reason) == (extra, Reason.ORPHAN_COMPLETION)


def test_a_completed_event_for_a_pending_loop_asks_for_its_output() -> None:
    event = completion()
    state, outputs = run(PENDING, CompletionArrived(event))
    assert kinds(outputs) == ["ReadOutput"]
    assert state.reading is not None and state.reading.completion == event
    assert state.review == PENDING.review  # still pending while the read is out


@pytest.mark.parametrize(
    ("picks", "verdict"),
    [([EXPLICIT], "rejected"), ([[]], "approved"), ([[], EXPLICIT], "rejected")],
)
def test_the_answers_decide_the_verdict(picks: list[list[dict[str, str]]], verdict: str) -> None:
    state, outputs = run(reading_state(), OutputRead(output(picks=picks)))
    assert state == LoopState(decided=verdict)
    took, publish = outputs
    assert took == ReviewTook(80.0)  # submitted at T0 - 10, created at T0 - 90
    assert isinstance(publish, Publish)
    assert (publish.topic, publish.decided_by, publish.request_id) == (
        verdict,
        "human",
        "req-loop-a",
    )
    body = verdict_of(publish)
    assert body["human_review"]["answers"] == len(picks)
    assert body["human_review"]["duration_s"] == 80.0
    assert body["decided_at"] == iso(T0)


def test_a_final_verdict_echoes_the_request_and_follows_the_verdict_schema() -> None:
    _, outputs = run(reading_state(), OutputRead(output()))
    publish = outputs[-1]
    assert isinstance(publish, Publish)
    body = verdict_of(publish)
    schema = orjson.loads((SCHEMAS / "verdict.schema.json").read_bytes())
    jsonschema.validate(body, schema)
    assert body["attributes"] == {"uploader": "u-1"}
    assert body["image"] == {"bytes": {"sha256": "ab" * 32, "size": 1234}}
    assert body["source"] == {"topic": "moderation.requests", "partition": 2, "offset": 7}
    assert body["received_at"] == iso(T0 - 100)
    assert body["labels"] == [
        {"name": "Explicit Nudity", "parent": "Explicit", "confidence": 100.0, "taxonomy_level": 2}
    ]
    assert body["human_review"]["model_labels"][0]["name"] == "Swimwear or Underwear"
    assert publish.source == Source("moderation.requests", 2, 7)
    headers = dict(publish.record.headers)
    assert headers["moderation-verdict"] == b"rejected"
    assert headers["moderation-decided-by"] == b"human"
    assert publish.record.key == b"req-loop-a"


def test_without_a_submission_time_the_review_took_until_the_event() -> None:
    body = orjson.loads(output())
    del body["humanAnswers"][0]["submissionTime"]
    _, outputs = run(reading_state(), OutputRead(orjson.dumps(body)))
    assert outputs[0] == ReviewTook(85.0)  # the event's time, T0 - 5


@pytest.mark.parametrize(
    "data",
    [
        output(loop="someone-else"),  # another loop's answers
        output(flowDefinitionArn=FLOW.replace("moderation", "other")),
        orjson.dumps({"humanLoopName": LOOP, "humanAnswers": []}),
        b"{not json",
    ],
)
def test_forged_or_unusable_answers_are_dead_lettered_and_the_review_stays_pending(
    data: bytes,
) -> None:
    event = completion()
    state, outputs = run(reading_state(event), OutputRead(data))
    assert state == PENDING
    (letter,) = outputs
    assert isinstance(letter, SendToDlq) and letter.completion == event
    assert letter.reason in (Reason.FORGED_EVENT, Reason.UNREADABLE_OUTPUT)


def test_an_output_the_store_refuses_is_dead_lettered_with_the_stores_reason() -> None:
    state, outputs = run(reading_state(), OutputUnreadable(Reason.UNREADABLE_OUTPUT, "NoSuchKey"))
    assert state == PENDING
    assert kinds(outputs) == ["SendToDlq"]
    assert isinstance(outputs[0], SendToDlq) and outputs[0].message == "NoSuchKey"


def test_an_unavailable_store_is_asked_again_after_a_backoff() -> None:
    event = completion()
    state, outputs = run(reading_state(event), OutputUnavailable("SlowDown: later"))
    assert outputs == [RetryScheduled(2.0, "SlowDown: later")]
    assert state.retry == Retry(event, T0, 1, T0 + 2.0, ())
    assert state.review == PENDING.review and state.reading is None


def test_a_second_failure_counts_from_the_first() -> None:
    event = completion()
    state, outputs = run(waiting_state(event, attempts=3), RetryDue(), now=T0 + 10)
    assert kinds(outputs) == ["ReadOutput"]
    assert state.retry is not None  # kept while the read is out: a crash retries it again
    state, outputs = run(state, OutputUnavailable("timeout"), now=T0 + 10)
    assert outputs == [RetryScheduled(8.0, "timeout")]
    assert state.retry == Retry(event, T0 - 30, 4, T0 + 18, ())


def test_a_store_unavailable_past_the_deadline_dead_letters_the_event() -> None:
    event, behind = completion(), completion()
    start = waiting_state(event, behind, attempts=5)
    state, outputs = run(start, RetryDue(), now=T0 + 300)
    state, outputs = run(state, OutputUnavailable("down"), now=T0 + 300)
    letter = outputs[0]
    assert isinstance(letter, SendToDlq)
    assert (letter.completion, letter.reason, letter.attempts) == (
        event,
        Reason.UNREADABLE_OUTPUT,
        6,
    )
    assert "unavailable for 330s (6 attempts): down" in letter.message
    # The event queued behind it is next: it asks for its own output.
    assert isinstance(outputs[-1], ReadOutput)
    assert state.retry is None and state.reading is not None
    assert state.reading.completion == behind


def test_events_wait_behind_one_waiting_for_the_store_within_bounds() -> None:
    first = completion()
    queued = tuple(completion() for _ in range(MAX_EVENTS_PER_LOOP - 1))
    state, outputs = run(waiting_state(first, *queued), CompletionArrived(last := completion()))
    assert outputs == []
    assert state.retry is not None and state.retry.queued == (*queued, last)
    state, outputs = run(state, CompletionArrived(extra := completion()))
    assert state.retry is not None and len(state.retry.queued) == MAX_EVENTS_PER_LOOP
    (letter,) = outputs
    assert isinstance(letter, SendToDlq)
    assert (letter.completion, letter.reason) == (extra, Reason.UNREADABLE_OUTPUT)


def test_the_genuine_answer_behind_a_forged_one_still_decides() -> None:
    forged, genuine = completion(), completion()
    state, _ = run(waiting_state(forged, genuine), RetryDue(), now=T0 + 10)
    state, outputs = run(state, OutputRead(output(loop="victim")), now=T0 + 10)
    assert kinds(outputs) == ["SendToDlq", "ReadOutput"]
    state, outputs = run(state, OutputRead(output()), now=T0 + 10)
    assert kinds(outputs) == ["ReviewTook", "Publish"]
    assert state == LoopState(decided="rejected")


def test_a_completion_for_a_decided_loop_is_a_duplicate() -> None:
    event = completion()
    state, outputs = run(DECIDED, CompletionArrived(event))
    assert state == DECIDED
    assert outputs == [Duplicate(event)]


@pytest.mark.parametrize(
    ("status", "code", "timed_out"),
    [("Failed", None, False), ("Stopped", None, False), ("Failed", "Expired", True)],
)
def test_failed_stopped_and_expired_loops_get_the_fallback(
    status: str, code: str | None, timed_out: bool
) -> None:
    event = completion(status=status, failure_code=code)
    state, outputs = run(PENDING, CompletionArrived(event))
    assert state == LoopState(decided="rejected")
    assert kinds(outputs) == [*(["TimedOut"] if timed_out else []), "Publish"]
    publish = outputs[-1]
    assert isinstance(publish, Publish) and publish.cause == event
    body = verdict_of(publish)
    assert (body["verdict"], body["decided_by"]) == ("rejected", "fallback")
    assert body["reasons"] == [
        {"rule": "review_fallback", "policy": "fallback:reject", "why": body["human_review"]["why"]}
    ]
    assert body["human_review"]["why"].startswith(f"human loop {status}")
    assert body["labels"][0]["name"] == "Swimwear or Underwear"  # the model's labels


def test_an_animations_label_frames_survive_into_the_final_verdict() -> None:
    framed = [
        {"name": "Swimwear or Underwear", "parent": "", "confidence": 66, "taxonomy_level": 1},
        {"name": "Alcohol", "parent": "", "confidence": 55, "taxonomy_level": 1},
    ]
    framed[0]["frame"], framed[1]["frame"] = 4, 0
    record = review(labels=framed)
    _, outputs = run(LoopState(review=record), CompletionArrived(completion(status="Stopped")))
    publish = outputs[-1]
    assert isinstance(publish, Publish)
    body = verdict_of(publish)
    assert [(label["name"], label["frame"]) for label in body["labels"]] == [
        ("Swimwear or Underwear", 4),
        ("Alcohol", 0),
    ]


def test_the_approve_fallback_approves() -> None:
    state, outputs = run(PENDING, CompletionArrived(completion(status="Stopped")),
                         cfg=config(fallback="approve"))  # fmt: skip
    assert state == LoopState(decided="approved")
    assert isinstance(outputs[-1], Publish) and outputs[-1].topic == "approved"


def test_the_requeue_fallback_sends_the_review_record_again_with_a_new_deadline() -> None:
    cfg = config(fallback="requeue", sla_s=600.0)
    event = completion(status="Failed")
    state, outputs = run(PENDING, CompletionArrived(event), now=T0 + 50, cfg=cfg)
    (publish,) = outputs
    assert isinstance(publish, Publish)
    assert (publish.topic, publish.decided_by, publish.cause) == ("review", "fallback", event)
    body = verdict_of(publish)
    assert body["verdict"] == "review" and body["id"] == "req-loop-a"
    assert body["review"]["requeued"] == 1
    assert body["review"]["requeue_reason"] == "human loop Failed"
    assert body["review"]["created_at"] == iso(T0 + 50)
    assert body["review"]["deadline"] == iso(T0 + 650)
    assert state.decided is None and state.review is not None
    assert state.review.requeued == 1 and state.review.raw == body
    # And it parses as any review record does (the console reads it too).
    assert parse_review_record(publish.record.value, max_bytes=10**6).requeued == 1


def test_a_completion_while_a_read_is_asked_for_is_a_bug() -> None:
    with pytest.raises(ValueError, match="waits for its output read"):
        run(reading_state(), CompletionArrived(completion()))


@pytest.mark.parametrize(
    "state",
    [LoopState(), PENDING, DECIDED, held_state(completion())],
    ids=["empty", "pending", "decided", "held"],
)
@pytest.mark.parametrize(
    "answer",
    [OutputRead(b"{}"), OutputUnreadable(Reason.UNREADABLE_OUTPUT, "x"), OutputUnavailable("x")],
)
def test_an_answer_nobody_asked_for_is_a_bug(state: LoopState, answer: Event) -> None:
    with pytest.raises(ValueError, match="none asked for"):
        run(state, answer)


# -- the SLA --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "state", [LoopState(), DECIDED, held_state(completion())], ids=["empty", "decided", "held"]
)
def test_the_sla_of_a_loop_not_pending_changes_nothing(state: LoopState) -> None:
    assert run(state, SlaDue()) == (state, [])


def test_a_review_past_its_sla_gets_the_fallback() -> None:
    state, outputs = run(PENDING, SlaDue())
    assert state == LoopState(decided="rejected")
    assert kinds(outputs) == ["TimedOut", "Publish"]
    body = verdict_of(outputs[1])
    assert body["human_review"] == {
        "human_loop_name": LOOP,
        "fallback": "reject",
        "why": SLA_EXCEEDED,
    }


def test_the_sla_sets_aside_the_event_waiting_for_the_store_and_the_rest_are_duplicates() -> None:
    first, behind = completion(), completion()
    state, outputs = run(waiting_state(first, behind), SlaDue())
    assert state == LoopState(decided="rejected")
    assert kinds(outputs) == ["TimedOut", "Superseded", "Publish", "Duplicate"]
    assert outputs[1] == Superseded(first) and outputs[3] == Duplicate(behind)


def test_after_a_requeue_by_the_sla_queued_events_are_read_for_the_new_review() -> None:
    first, behind = completion(), completion()
    cfg = config(fallback="requeue")
    state, outputs = run(waiting_state(first, behind), SlaDue(), cfg=cfg)
    assert kinds(outputs) == ["TimedOut", "Superseded", "Publish", "ReadOutput"]
    assert state.review is not None and state.review.requeued == 1
    assert state.reading is not None and state.reading.completion == behind


def test_the_sla_while_a_read_is_asked_for_is_a_bug() -> None:
    with pytest.raises(ValueError, match="waits for its output read"):
        run(reading_state(), SlaDue())


# -- retries --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "state",
    [LoopState(), PENDING, DECIDED, held_state(completion())],
    ids=["empty", "pending", "decided", "held"],
)
def test_a_retry_without_an_event_waiting_changes_nothing(state: LoopState) -> None:
    assert run(state, RetryDue()) == (state, [])


def test_a_due_retry_reads_the_output_again() -> None:
    event = completion()
    state, outputs = run(waiting_state(event), RetryDue(), now=T0 + 10)
    assert kinds(outputs) == ["ReadOutput"]
    state, outputs = run(state, OutputRead(output(picks=[[]])), now=T0 + 10)
    assert kinds(outputs) == ["ReviewTook", "Publish"]
    assert state == LoopState(decided="approved")


def test_a_retry_for_a_loop_decided_meanwhile_sets_its_events_aside() -> None:
    first, behind = completion(), completion()
    retry = Retry(first, T0, 1, T0, (behind,))
    state, outputs = run(LoopState(decided="approved", retry=retry), RetryDue())
    assert state == LoopState(decided="approved")
    assert outputs == [Superseded(first), Superseded(behind)]


def test_a_retry_while_a_read_is_asked_for_is_a_bug() -> None:
    with pytest.raises(ValueError, match="waits for its output read"):
        run(reading_state(), RetryDue())


# -- orphans --------------------------------------------------------------------------------


@pytest.mark.parametrize("evict", [False, True])
@pytest.mark.parametrize(
    "state", [LoopState(), PENDING, DECIDED], ids=["empty", "pending", "decided"]
)
def test_an_orphan_command_for_a_loop_holding_nothing_changes_nothing(
    state: LoopState, evict: bool
) -> None:
    assert run(state, OrphanDue(evict, T0), now=T0 + 10**6) == (state, [])


def test_held_events_expire_after_the_ttl() -> None:
    events = (completion(), completion())
    start = held_state(*events, since=T0 - 600)
    assert run(start, OrphanDue(), now=T0 - 1) == (start, [])  # not yet
    state, outputs = run(start, OrphanDue())
    assert state == LoopState()
    assert kinds(outputs) == ["Orphaned", "SendToDlq", "Orphaned", "SendToDlq"]
    assert outputs[0] == Orphaned("expired")
    letters = [o for o in outputs if isinstance(o, SendToDlq)]
    assert [letter.completion for letter in letters] == list(events)
    assert {letter.reason for letter in letters} == {Reason.ORPHAN_COMPLETION}
    assert "MODERATION_SINK_ORPHAN_TTL_S (600s)" in letters[0].message


def test_held_events_chosen_for_eviction_go_at_once() -> None:
    event = completion()
    start = held_state(event, since=T0 - 5)
    state, outputs = run(start, OrphanDue(evict=True, chosen_since=T0 - 5))
    assert state == LoopState()
    assert outputs[0] == Orphaned("evicted")
    assert isinstance(outputs[1], SendToDlq)
    assert "MODERATION_SINK_MAX_EARLY (100)" in outputs[1].message


def test_an_eviction_spares_a_newer_hold_of_the_loop() -> None:
    start = held_state(completion(), since=T0)
    assert run(start, OrphanDue(evict=True, chosen_since=T0 - 5)) == (start, [])


def test_an_orphan_command_while_a_read_is_asked_for_is_a_bug() -> None:
    with pytest.raises(ValueError, match="waits for its output read"):
        run(reading_state(), OrphanDue())


# -- the decider reads no clock -------------------------------------------------------------


def test_the_same_state_event_and_time_give_the_same_outputs() -> None:
    event = completion()
    first = run(PENDING, CompletionArrived(event))
    assert run(PENDING, CompletionArrived(event)) == first
    read = (run(first[0], OutputRead(output())), run(first[0], OutputRead(output())))
    assert read[0] == read[1]


# -- the tables' JSON -----------------------------------------------------------------------


def test_the_tables_json_is_the_layout_earlier_sinks_wrote() -> None:
    """A restarted sink recovers its tables from the changelog: the layout must not change."""
    command = {
        "kind": "completion",
        "event": completion().event,
        "source": {"topic": "completions", "partition": 1, "offset": 42},
    }
    early = {"events": [command, command], "early_at": 1_700_000_000.5}
    assert held_json(held_of(early) or Held((), 0.0)) == early
    retrying = {
        "command": command,
        "first_failure": 1_700_000_000.0,
        "attempts": 3,
        "next_at": 1_700_000_004.0,
        "queued": [command],
    }
    assert retry_json(retry_of(retrying) or Retry(completion(), 0.0, 0, 0.0)) == retrying


def test_held_events_and_retries_survive_the_tables_json() -> None:
    held = Held((completion(), completion()), T0)
    assert held_of(orjson.loads(orjson.dumps(held_json(held)))) == held
    retry = Retry(completion(), T0, 2, T0 + 3, (completion(),))
    assert retry_of(orjson.loads(orjson.dumps(retry_json(retry)))) == retry
    assert held_of(None) is None and retry_of({"no": "command"}) is None


# -- across loops ---------------------------------------------------------------------------


def test_a_timer_command_goes_out_once_at_a_time() -> None:
    requests = Requests(again_s=60.0)
    assert requests.ask("sla", "a", T0)
    assert not requests.ask("sla", "a", T0 + 59)  # on its way
    assert requests.ask("orphan", "a", T0) and requests.ask("sla", "b", T0)
    requests.handled("sla", "a")
    assert requests.ask("sla", "a", T0 + 1)
    assert requests.ask("sla", "a", T0 + 62)  # lost in a rebalance: sent again
    requests.sent("evict", "c", T0)
    assert requests.evicting() == {"c"}


def test_the_timers_pick_overdue_expired_and_due_loops() -> None:
    assert overdue([("a", T0 - 1), ("b", T0 + 1), ("c", None)], T0) == ["a"]
    assert expired([("a", T0 - 600), ("b", T0 - 599)], T0, 600.0) == ["a"]
    assert due([("a", T0), ("b", T0 + 1)], T0) == ["a"]


def test_evictions_take_the_oldest_holds_beyond_those_already_going() -> None:
    held = [("a", 1.0), ("b", 2.0), ("c", 3.0), ("d", 4.0)]
    assert evictions(4, held, limit=4, evicting=set()) == []
    assert evictions(4, held, limit=2, evicting=set()) == [("a", 1.0), ("b", 2.0)]
    assert evictions(4, held, limit=2, evicting={"a"}) == [("b", 2.0)]
    assert evictions(4, held, limit=1, evicting={"b"}) == [("a", 1.0), ("c", 3.0)]


# -- any interleaving -----------------------------------------------------------------------

LOOPS = ("loop-a", "loop-b", "loop-c")

action = st.one_of(
    st.tuples(st.just("review"), st.sampled_from(LOOPS)),
    st.tuples(
        st.just("completion"),
        st.sampled_from(LOOPS),
        st.sampled_from(["good", "approve", "forged", "other-flow", "failed", "expired"]),
    ),
    st.tuples(st.just("sla"), st.sampled_from(LOOPS)),
    st.tuples(st.just("retry"), st.sampled_from(LOOPS)),
    st.tuples(st.just("orphan"), st.sampled_from(LOOPS), st.booleans()),
)
store_answer = st.sampled_from(["ok", "ok", "unavailable", "missing"])


def _event_for(kind: str, loop: str) -> Completion:
    if kind in ("failed", "expired"):
        return completion(loop, "Failed", failure_code="Expired" if kind == "expired" else None)
    if kind == "other-flow":
        return completion(loop, flow=FLOW.replace("moderation", "elsewhere"))
    return completion(loop)


def _output_for(kind: str, loop: str) -> bytes:
    if kind == "forged":
        return output(loop=f"{loop}-victim")
    return output(loop=loop, picks=[[]] if kind == "approve" else [EXPLICIT])


@settings(max_examples=300, deadline=None)
@given(
    actions=st.lists(action, max_size=40),
    answers=st.lists(store_answer, min_size=1, max_size=20),
    fallback=st.sampled_from(["reject", "approve", "requeue"]),
    steps=st.lists(st.floats(0, 400), min_size=1, max_size=8),
)
def test_any_interleaving_decides_each_loop_at_most_once_and_accounts_for_every_event(
    actions: list[tuple[Any, ...]], answers: list[str], fallback: str, steps: list[float]
) -> None:
    cfg = config(fallback=fallback, max_events_per_loop=3, output_retry_s=200.0)
    states = {loop: LoopState() for loop in LOOPS}
    kind_of: dict[int, str] = {}  # event offset -> what kind of event it was
    handed_in: list[Completion] = []
    outputs_seen: list[tuple[str, Output]] = []
    now = T0
    answer_index = 0
    for index, (name, loop, *rest) in enumerate(actions):
        now += steps[index % len(steps)]
        event: Event
        if name == "review":
            event = ReviewArrived(review(loop))
        elif name == "completion":
            created = _event_for(rest[0], loop)
            kind_of[created.source.offset] = rest[0]
            handed_in.append(created)
            event = CompletionArrived(created)
        elif name == "sla":
            event = SlaDue()
        elif name == "retry":
            event = RetryDue()
        else:
            held = states[loop].held
            event = OrphanDue(rest[0], held.since if held is not None else 0.0)
        pending: Event | None = event
        while pending is not None:
            states[loop], outputs = decide(states[loop], pending, loop=loop, now=now, config=cfg)
            outputs_seen.extend((loop, output) for output in outputs)
            pending = None
            if outputs and isinstance(outputs[-1], ReadOutput):
                assert all(not isinstance(o, ReadOutput) for o in outputs[:-1])
                reading = states[loop].reading
                assert reading is not None
                answer = answers[answer_index % len(answers)]
                answer_index += 1
                if answer == "unavailable":
                    pending = OutputUnavailable("down")
                elif answer == "missing":
                    pending = OutputUnreadable(Reason.UNREADABLE_OUTPUT, "NoSuchKey")
                else:
                    kind = kind_of[reading.completion.source.offset]
                    pending = OutputRead(_output_for(kind, loop))
        assert states[loop].reading is None  # at rest, no read is ever left open

    # Each loop is decided at most once, and a decided loop keeps nothing else.
    finals = [
        (loop, o) for loop, o in outputs_seen if isinstance(o, Publish) and o.topic != "review"
    ]
    decided = [loop for loop, _ in finals]
    assert len(decided) == len(set(decided)), decided
    for loop, state in states.items():
        assert (state.decided is not None) == (loop in decided)
        if state.decided is not None:
            assert state.review is None and state.held is None and state.retry is None
        if state.held is not None:
            assert state.review is None and len(state.held.events) <= 3
        if state.retry is not None:
            assert state.review is not None and len(state.retry.queued) <= 3

    # Every event handed in ends in exactly one place: an output about it, or the state.
    ends: dict[int, list[str]] = {event.source.offset: [] for event in handed_in}
    for _, out in outputs_seen:
        if isinstance(out, Publish) and out.cause is not None:
            ends[out.cause.source.offset].append("decided")
        elif isinstance(out, SendToDlq | Duplicate | Superseded):
            ends[out.completion.source.offset].append(type(out).__name__)
    for state in states.values():
        kept = [
            *(state.held.events if state.held else ()),
            *((state.retry.completion, *state.retry.queued) if state.retry else ()),
        ]
        for event in kept:
            ends[event.source.offset].append("kept")
    assert all(len(places) == 1 for places in ends.values()), ends

    # A forged or misdirected event never decides anything; people's verdicts name their output.
    for offset, places in ends.items():
        if kind_of[offset] in ("forged", "other-flow"):
            assert places != ["decided"], (kind_of[offset], places)
    for _, publish in finals:
        if publish.decided_by == "human":
            assert publish.cause is not None
            assert kind_of[publish.cause.source.offset] in ("good", "approve")

    # Dead letters carry a reason the DLQ contract knows, and orphans are counted with theirs.
    letters = [o for _, o in outputs_seen if isinstance(o, SendToDlq)]
    orphans = [o for _, o in outputs_seen if isinstance(o, Orphaned)]
    assert len(orphans) == sum(1 for o in letters if o.reason == Reason.ORPHAN_COMPLETION)
