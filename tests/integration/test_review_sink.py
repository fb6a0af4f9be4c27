"""The completion sink as a real process: real broker, real S3 protocol (moto server), events in
EventBridge's exact shape; duplicates, reordering, malformed input and a restart in the middle."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import uuid
from asyncio.subprocess import Process
from collections import Counter
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aioboto3
import orjson
import pytest

from service.review.events import completion_event
from tests.kafka_helpers import Topics, collect, create_topics, produce
from tests.processes import local_settings, process_env, running_process

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

BUCKET = "a2i-output"
FLOW = "arn:aws:sagemaker:us-east-1:000000000000:flow-definition/moderation"
TASK = "AWS/Rekognition/DetectModerationLabels/Image/V3"


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def review_record(request_id: str, loop: str, *, deadline_in_s: float = 3600) -> bytes:
    now = datetime.now(UTC)
    return orjson.dumps(
        {
            "schema_version": 1,
            "id": request_id,
            "verdict": "review",
            "decided_by": "model",
            "labels": [
                {
                    "name": "Swimwear or Underwear",
                    "parent": "",
                    "confidence": 66.0,
                    "taxonomy_level": 1,
                }
            ],
            "model_version": "7.0",
            "reasons": [{"rule": "review_threshold", "policy": "default"}],
            "attributes": {"uploader": f"user-of-{request_id}"},
            "image": {"s3": {"bucket": "uploads", "key": f"{request_id}.jpg"}},
            "source": {"topic": "moderation.requests", "partition": 0, "offset": 1},
            "received_at": iso(now),
            "decided_at": iso(now),
            "review": {
                "human_loop_name": loop,
                "mode": "managed",
                "flow_definition_arn": FLOW,
                "human_loop_arn": f"arn:aws:sagemaker:us-east-1:000000000000:human-loop/{loop}",
                "activation_reasons": ["ConditionsEvaluation"],
                "activation_results": None,
                "created_at": iso(now - timedelta(seconds=90)),
                "deadline": iso(now + timedelta(seconds=deadline_in_s)),
            },
        }
    )


def output_json(loop: str, picks: list[list[dict[str, str]]]) -> bytes:
    return orjson.dumps(
        {
            "awsManagedHumanLoopRequestSource": TASK,
            "flowDefinitionArn": FLOW,
            "humanLoopName": loop,
            "humanAnswers": [
                {
                    "answerContent": {TASK: {"moderationLabels": labels}},
                    "submissionTime": iso(datetime.now(UTC)),
                    "acceptanceTime": iso(datetime.now(UTC) - timedelta(seconds=30)),
                    "timeSpentInSeconds": 30.0,
                    "workerId": f"worker-{i}",
                    "workerMetadata": {
                        "identityData": {
                            "identityProviderType": "Cognito",
                            "issuer": "x",
                            "sub": f"sub-{i}",
                        }
                    },
                }
                for i, labels in enumerate(picks)
            ],
            "inputContent": {},
        }
    )


def event(loop: str, status: str = "Completed", failure_code: str | None = None) -> bytes:
    now = iso(datetime.now(UTC))
    uri = f"s3://{BUCKET}/moderation/2026/11/21/00/00/00/{loop}/output.json"
    return orjson.dumps(
        completion_event(
            loop_name=loop,
            status=status,  # type: ignore[arg-type]
            output_uri=uri if status == "Completed" else None,
            flow_definition_arn=FLOW,
            event_id=str(uuid.uuid4()),
            time=now,
            created=now,
            failure_code=failure_code,
            failure_reason="worker task expired" if failure_code else None,
        )
    )


async def put_output(endpoint: str, loop: str, body: bytes) -> None:
    session = aioboto3.Session()
    async with session.client("s3", region_name="us-east-1", endpoint_url=endpoint) as s3:
        with contextlib.suppress(Exception):
            await s3.create_bucket(Bucket=BUCKET)
        await s3.put_object(
            Bucket=BUCKET, Key=f"moderation/2026/11/21/00/00/00/{loop}/output.json", Body=body
        )


def sink_process(env: dict[str, str], log: Path) -> AbstractAsyncContextManager[Process]:
    return running_process([sys.executable, "-m", "service", "sink"], env, log)


def sink_env(bootstrap: str, topics: Topics, completions: str, s3: str) -> dict[str, str]:
    return process_env(
        local_settings(bootstrap, topics)
        | {
            "SINK_PRODUCER_MAX_BATCH_SIZE": "16",
            "S3_ENDPOINT_URL": s3,
            "MODERATION_COMPLETIONS_TOPIC": completions,
            "MODERATION_REVIEW_FALLBACK": "reject",
            "LOG_FORMAT": "text",
        }
    )


def finals(records: list) -> dict[str, Counter[tuple[str, str]]]:
    """request id -> Counter of (verdict, decided_by) over the final-verdict topics."""
    seen: dict[str, Counter[tuple[str, str]]] = {}
    for record in records:
        value = orjson.loads(record.value)
        if "verdict" in value:
            seen.setdefault(value["id"], Counter())[(value["verdict"], value["decided_by"])] += 1
    return seen


async def wait_for(
    bootstrap: str,
    topic_names: list[str],
    predicate,
    proc: asyncio.subprocess.Process,
    timeout_s: float = 90.0,
) -> list:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        records = await collect(bootstrap, topic_names, 10**9, timeout_s=2)
        if (
            predicate(records)
            or proc.returncode is not None
            or asyncio.get_running_loop().time() > deadline
        ):
            return records
        await asyncio.sleep(0.5)


async def test_sink_turns_completions_into_single_final_verdicts_across_a_restart(
    kafka_bootstrap: str, topics: Topics, moto_s3: str, tmp_path: Path
) -> None:
    completions = f"{topics.input}.completions"
    await create_topics(
        kafka_bootstrap,
        [topics.review, completions, topics.approved, topics.rejected, topics.dlq],
        2,
    )
    explicit = [{"name": "Explicit Nudity", "parentName": "Explicit"}]
    await put_output(moto_s3, "loop-a", output_json("loop-a", [explicit]))
    await put_output(moto_s3, "loop-b", output_json("loop-b", [[]]))
    await put_output(moto_s3, "loop-d", output_json("loop-d", [[], explicit]))  # any -> rejected
    await put_output(moto_s3, "loop-e", output_json("loop-e", [[]]))
    await put_output(moto_s3, "loop-f", output_json("loop-f", [explicit]))
    await put_output(moto_s3, "loop-g", b"{this is not json")
    env = sink_env(kafka_bootstrap, topics, completions, moto_s3)
    outputs = [topics.approved, topics.rejected, topics.dlq]
    log = tmp_path / "sink.log"

    # Before the sink runs: reviews for a..c, e..g, one already past its SLA (h); d's review
    # will come late, after its completion.
    reviews = [(f"req-{x}".encode(), review_record(f"req-{x}", f"loop-{x}"), []) for x in "abcefg"]
    reviews.append((b"req-h", review_record("req-h", "loop-h", deadline_in_s=-1), []))
    await produce(kafka_bootstrap, topics.review, reviews)

    async with sink_process(env, log) as sink:
        await produce(
            kafka_bootstrap,
            completions,
            [
                (None, event("loop-a"), []),
                (None, event("loop-b"), []),
                (None, event("loop-c", "Failed", "Expired"), []),
                (None, event("loop-d"), []),  # before its review record
                (None, event("loop-e"), []),
                (None, event("loop-e"), []),  # EventBridge delivers at least once
                (None, b'{"detail-type": "SageMaker A2I HumanLoop Status Change"}', []),
                (None, b"not json at all", []),
                (None, event("loop-g"), []),  # unreadable output.json
            ],
        )
        await produce(
            kafka_bootstrap, topics.review, [(b"req-d", review_record("req-d", "loop-d"), [])]
        )

        def first_round_done(records: list) -> bool:
            seen = finals(records)
            dlq = sum(1 for r in records if r.topic == topics.dlq)
            return all(f"req-{x}" in seen for x in "abcdeh") and dlq >= 3

        records = await wait_for(kafka_bootstrap, outputs, first_round_done, sink)
        assert first_round_done(records), log.read_text()[-4000:]
        sink.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(sink.wait(), 30) == 0, log.read_text()[-4000:]

    # Second life: f's review has been pending across the restart; its completion arrives now,
    # along with duplicates of loops decided in the first life.
    async with sink_process(env, log) as sink:
        await produce(
            kafka_bootstrap,
            completions,
            [(None, event("loop-f"), []), (None, event("loop-a"), []), (None, event("loop-e"), [])],
        )
        records = await wait_for(kafka_bootstrap, outputs, lambda rs: "req-f" in finals(rs), sink)
        await asyncio.sleep(3)  # room for any (wrong) second verdict to show up
        records = await collect(kafka_bootstrap, outputs, 10**9, timeout_s=2)

    seen = finals(records)
    assert seen["req-a"] == Counter({("rejected", "human"): 1}), log.read_text()[-4000:]
    assert seen["req-b"] == Counter({("approved", "human"): 1})
    assert seen["req-c"] == Counter({("rejected", "fallback"): 1})
    assert seen["req-d"] == Counter({("rejected", "human"): 1})
    assert seen["req-e"] == Counter({("approved", "human"): 1})
    assert seen["req-f"] == Counter({("rejected", "human"): 1})
    assert seen["req-h"] == Counter({("rejected", "fallback"): 1})
    assert "req-g" not in seen  # unreadable output: DLQ, review stays pending until its SLA

    values = {
        orjson.loads(r.value)["id"]: orjson.loads(r.value) for r in records if r.topic != topics.dlq
    }
    a = values["req-a"]
    assert a["attributes"] == {"uploader": "user-of-req-a"}  # the original request travels on
    assert a["labels"][0]["name"] == "Explicit Nudity"
    assert a["human_review"]["workers"] == ["worker-0"]
    assert a["human_review"]["duration_s"] >= 60
    assert values["req-d"]["attributes"] == {"uploader": "user-of-req-d"}
    assert values["req-f"]["attributes"] == {"uploader": "user-of-req-f"}

    dead = [orjson.loads(r.value)["error"]["reason"] for r in records if r.topic == topics.dlq]
    assert sorted(dead) == ["malformed_event", "malformed_json", "unreadable_output"]
