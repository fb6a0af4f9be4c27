"""The reviewer's use cases against the real store (SQLite in a temp directory), the real output
writer (a local directory) and a capturing completion-event publisher."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
import pytest
from prometheus_client import CollectorRegistry

from service.console.a2i import OutputWriter
from service.console.auth import Auth
from service.console.delivery import Delivery
from service.console.image_source import ImageSource
from service.console.intake import store_review
from service.console.metrics import ConsoleMetrics
from service.console.review_tasks import ReviewTasks, a2i_answer, choice_problem
from service.console.storage import ConsoleStore, open_store
from service.fetch import FetchPolicy
from service.review.answers import TASK_KEY
from service.review.records import parse_review_record
from tests.console.harness import (
    CapturingPublisher,
    FakeClock,
    base_env,
    review_record,
    settings_from,
)


@dataclass
class Desk:
    tasks: ReviewTasks
    store: ConsoleStore
    clock: FakeClock
    publisher: CapturingPublisher
    metrics: ConsoleMetrics
    output_dir: Path

    async def add(self, request_id: str, **kwargs: Any) -> str:
        kwargs.setdefault("created", self.clock() - 60)
        kwargs.setdefault("deadline", self.clock() + 3600)
        loop, value = review_record(request_id, **kwargs)
        await store_review(
            self.store, parse_review_record(value, max_bytes=len(value)), value, self.clock()
        )
        return loop

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[Desk]:
    base, settings = settings_from(base_env(tmp_path))
    clock = FakeClock()
    store = open_store("sqlite", path=tmp_path / "console.db", dsn=None)
    metrics = ConsoleMetrics(CollectorRegistry())
    writer = OutputWriter(settings.output, region="us-east-1", s3_endpoint_url=None)
    fetch = base.fetch
    images = ImageSource(
        FetchPolicy(
            max_bytes=fetch.max_bytes,
            timeout_s=fetch.timeout_s,
            allowed_networks=fetch.allowed_networks,
        ),
        region="us-east-1",
        s3_endpoint_url=None,
    )
    publisher = CapturingPublisher()
    await store.open()
    await writer.start()
    await images.start()
    try:
        auth = Auth(settings, store, metrics, clock)
        tasks = ReviewTasks(
            settings=settings,
            store=store,
            delivery=Delivery(store, writer, publisher, metrics, clock),
            output_uri=writer.uri_for,
            images=images,
            metrics=metrics,
            clock=clock,
            is_lead=auth.is_lead,
        )
        yield Desk(tasks, store, clock, publisher, metrics, tmp_path / "outputs")
    finally:
        await images.close()
        await writer.close()
        await store.close()


# -- choosing -------------------------------------------------------------------------------------


def test_a_choice_is_labels_or_nothing_and_only_v7_labels() -> None:
    assert choice_problem(["Weapons"], nothing=False) == ""
    assert choice_problem([], nothing=True) == ""
    assert "not both" in choice_problem(["Weapons"], nothing=True)
    assert "Choose the labels" in choice_problem([], nothing=False)
    assert "Unknown label" in choice_problem(["Weapons", "Kittens"], nothing=False)


# -- the queue and claims -------------------------------------------------------------------------


async def test_the_queue_lists_waiting_items_by_deadline_and_counts_them(desk: Desk) -> None:
    later = await desk.add("later", deadline=desk.clock() + 7200)
    sooner = await desk.add("sooner", deadline=desk.clock() + 600)
    await desk.add("overdue", deadline=desk.clock() - 1)
    await desk.tasks.claim("alice", later)

    for_bob = await desk.tasks.queue("bob")

    assert [row["loop_name"] for row in for_bob.rows] == [sooner, later]
    assert [(row["claimed_by"], row["yours"]) for row in for_bob.rows] == [
        (None, False),
        ("alice", False),
    ]
    assert (for_bob.counts.pending, for_bob.counts.claimed, for_bob.counts.overdue) == (2, 1, 1)
    assert [row["yours"] for row in (await desk.tasks.queue("alice")).rows] == [False, True]


async def test_claim_next_takes_the_nearest_deadline_skips_and_counts(desk: Desk) -> None:
    first = await desk.add("first", deadline=desk.clock() + 600)
    second = await desk.add("second", deadline=desk.clock() + 1200)

    claimed = await desk.tasks.claim_next("alice", None)
    assert claimed is not None and claimed.loop_name == first
    skipped = await desk.tasks.claim_next("bob", skip=first)
    assert skipped is not None and skipped.loop_name == second
    assert await desk.tasks.claim_next("carol", None) is None

    assert desk.sample("moderation_console_claims_total", outcome="claimed") == 2
    assert desk.sample("moderation_console_claims_total", outcome="empty") == 1


async def test_claim_says_claimed_taken_or_gone(desk: Desk) -> None:
    loop = await desk.add("contested")
    late = await desk.add("late", deadline=desk.clock() + 10)

    assert (await desk.tasks.claim("alice", loop)).outcome == "claimed"
    assert (await desk.tasks.claim("alice", loop)).outcome == "claimed"  # renewal
    taken = await desk.tasks.claim("bob", loop)
    assert taken.outcome == "taken" and taken.item is not None
    assert taken.item.claimed_by == "alice"
    desk.clock.advance(11)
    assert (await desk.tasks.claim("bob", late)).outcome == "gone"
    assert (await desk.tasks.claim("bob", "m" + "0" * 62)).outcome == "gone"

    counted = {
        outcome: desk.sample("moderation_console_claims_total", outcome=outcome)
        for outcome in ("claimed", "taken", "gone")
    }
    assert counted == {"claimed": 2, "taken": 1, "gone": 2}


async def test_open_tells_the_holder_a_lead_and_anyone_else_apart(desk: Desk) -> None:
    loop = await desk.add("open")
    await desk.tasks.claim("alice", loop)

    assert (await desk.tasks.open("alice", loop)).access == "yours"
    assert (await desk.tasks.open("lead", loop)).access == "lead"
    assert (await desk.tasks.open("bob", loop)).access == "other"
    missing = await desk.tasks.open("alice", "m" + "0" * 62)
    assert (missing.access, missing.item) == ("missing", None)


async def test_release_gives_only_ones_own_claim_back(desk: Desk) -> None:
    loop = await desk.add("release")
    await desk.tasks.claim("alice", loop)

    assert not await desk.tasks.release("bob", loop)
    assert await desk.tasks.release("alice", loop)
    assert (await desk.tasks.claim("bob", loop)).outcome == "claimed"


# -- deciding -------------------------------------------------------------------------------------


async def test_a_decision_is_recorded_once_written_as_a2i_and_published(desk: Desk) -> None:
    loop = await desk.add("decide")
    await desk.tasks.claim("alice", loop)
    desk.clock.advance(42)

    decided = await desk.tasks.decide("alice", loop, ["Weapons"], nothing=False)

    assert decided.outcome == "decided" and decided.decision is not None
    decision = decided.decision
    assert decision.published_at == desk.clock()  # delivered at once
    output = orjson.loads(Path(unquote(urlsplit(decision.output_uri).path)).read_bytes())
    assert output["humanLoopName"] == loop
    (answer,) = output["humanAnswers"]
    assert answer["workerId"] == "alice"
    assert answer["timeSpentInSeconds"] == 42
    assert answer["answerContent"][TASK_KEY]["moderationLabels"] == [
        {"name": "Weapons", "parentName": "Violence"}
    ]
    ((key, event),) = desk.publisher.events
    assert key == loop.encode()
    assert orjson.loads(event)["detail"]["humanLoopOutput"]["outputS3Uri"] == (decision.output_uri)
    assert desk.sample("moderation_console_decisions_total", verdict="rejected") == 1
    assert desk.sample("moderation_console_decision_seconds_sum") == 42

    again = await desk.tasks.decide("alice", loop, [], nothing=True)
    assert again.outcome == "repeat" and again.decision == decision  # the first answer stands
    assert len(desk.publisher.events) == 1


async def test_a_decision_the_broker_refuses_is_kept_for_the_outbox(desk: Desk) -> None:
    loop = await desk.add("outbox")
    await desk.tasks.claim("alice", loop)
    desk.publisher.fail = True

    decided = await desk.tasks.decide("alice", loop, [], nothing=True)

    assert decided.outcome == "decided" and decided.decision is not None
    assert decided.decision.published_at is None
    assert decided.decision.labels == []
    assert desk.sample("moderation_console_decisions_total", verdict="approved") == 1
    assert desk.sample("moderation_console_deliveries_total", outcome="failed") == 1
    assert [d.loop_name for d in await desk.store.unpublished(desk.clock() + 60)] == [loop]


async def test_decisions_that_cannot_be_recorded_say_why(desk: Desk) -> None:
    loop = await desk.add("refused")
    late = await desk.add("late", deadline=desk.clock() + 10)
    await desk.tasks.claim("alice", loop)
    await desk.tasks.claim("bob", late)

    invalid = await desk.tasks.decide("alice", loop, ["Weapons"], nothing=True)
    assert (invalid.outcome, invalid.decision) == ("invalid", None)
    assert "not both" in invalid.why
    not_held = await desk.tasks.decide("bob", loop, ["Weapons"], nothing=False)
    assert (not_held.outcome, not_held.why) == ("conflict", "claimed by alice")
    missing = await desk.tasks.decide("alice", "m" + "0" * 62, [], nothing=True)
    assert missing.outcome == "missing"
    desk.clock.advance(11)
    overdue = await desk.tasks.decide("bob", late, [], nothing=True)
    assert overdue.outcome == "conflict" and "deadline" in overdue.why

    await desk.tasks.decide("alice", loop, [], nothing=True)
    await desk.tasks.claim("bob", loop)
    other = await desk.tasks.decide("bob", loop, [], nothing=True)
    assert (other.outcome, other.decision, other.why) == (
        "conflict",
        None,
        "already decided by alice",
    )
    assert len(desk.publisher.events) == 1
    assert desk.sample("moderation_console_decisions_total", verdict="approved") == 1


async def test_the_a2i_answer_uses_the_console_flow_and_the_writers_location(desk: Desk) -> None:
    loop = await desk.add("answer", created=1_700_000_000.0)
    item = await desk.store.item(loop)
    assert item is not None
    _, settings = settings_from(base_env(desk.output_dir.parent))
    seen = []

    def output_uri(item_: Any, flow: Any) -> str:
        seen.append((item_.loop_name, flow.arn))
        return "s3://answers/output.json"

    uri, output, event = a2i_answer(
        item,
        1_700_000_100.0,
        reviewer="alice",
        labels=[],
        submitted_at=1_700_000_130.5,
        issuer="https://console.example",
        default_flow=settings.flow_definition,
        output_uri=output_uri,
    )

    assert uri == "s3://answers/output.json"
    assert seen == [(loop, settings.flow_definition.arn)]
    body = orjson.loads(output)
    assert body["flowDefinitionArn"] == settings.flow_definition.arn
    (answer,) = body["humanAnswers"]
    assert (answer["acceptanceTime"], answer["submissionTime"]) == (
        "2023-11-14T22:15:00.000Z",
        "2023-11-14T22:15:30.500Z",
    )
    assert answer["workerMetadata"]["identityData"]["issuer"] == "https://console.example"
    assert orjson.loads(event)["detail"]["humanLoopOutput"]["outputS3Uri"] == uri


# -- the image ------------------------------------------------------------------------------------


async def test_the_image_is_for_the_holder_only(desk: Desk) -> None:
    loop = await desk.add("image")  # an inline image: nothing stored to show
    await desk.tasks.claim("alice", loop)

    assert (await desk.tasks.image("alice", "m" + "0" * 62)).outcome == "missing"
    refused = await desk.tasks.image("bob", loop)
    assert refused.outcome == "not_yours" and refused.data == b""
    assert desk.sample("moderation_console_refused_requests_total", reason="forbidden") == 1
    inline = await desk.tasks.image("alice", loop)
    assert (inline.outcome, inline.status) == ("unavailable", 404)


async def test_an_unreadable_record_names_no_image(desk: Desk) -> None:
    loop = "m" + "1" * 62
    await desk.store.upsert_item(
        loop_name=loop,
        request_id="unreadable",
        record=b'{"review": "not an object"}',
        created_at=desk.clock() - 60,
        deadline=desk.clock() + 600,
        requeued=0,
        now=desk.clock(),
    )
    await desk.tasks.claim("alice", loop)

    image = await desk.tasks.image("alice", loop)

    assert image.outcome == "unreadable" and "unreadable" in image.reason


# -- the history ----------------------------------------------------------------------------------


async def test_the_history_is_for_leads_and_pages_by_submission_time(desk: Desk) -> None:
    loops = [await desk.add(f"history{i}") for i in range(3)]
    for loop in loops:
        await desk.tasks.claim("alice", loop)
        desk.clock.advance(1)
        await desk.tasks.decide("alice", loop, ["Weapons"], nothing=False)

    refused = await desk.tasks.history("alice", {})
    assert (refused.outcome, refused.entries) == ("forbidden", [])
    assert desk.sample("moderation_console_refused_requests_total", reason="forbidden") == 1
    assert (await desk.tasks.history("lead", {"limit": "many"})).outcome == "bad_query"

    first = await desk.tasks.history("lead", {"limit": "2", "reviewer": "alice"})
    assert first.outcome == "shown" and first.reviewer == "alice"
    assert [entry["loop_name"] for entry in first.entries] == [loops[2], loops[1]]
    assert first.entries[0]["verdict"] == "rejected"
    assert first.entries[0]["labels"] == ["Weapons"]
    assert first.next_before == first.entries[1]["submitted_at"]
    rest = await desk.tasks.history("lead", {"limit": "2", "before": str(first.next_before)})
    assert [entry["loop_name"] for entry in rest.entries] == [loops[0]]
    assert rest.next_before is None
    assert (await desk.tasks.history("lead", {"reviewer": "bob"})).entries == []
