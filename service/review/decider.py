"""The sink's decisions about one human loop, without I/O: (state, event) -> (state, outputs).

:func:`decide` takes what the sink remembers about a loop
(:class:`~service.review.state.LoopState`), one event and the time, and returns the new state and
the instructions for the faust adapter (:mod:`service.review.sink`) to carry out, in order:
publish a record, dead-letter an event, read an ``output.json``, count or log something. Nothing
here reads a clock, a store or a topic, so every rule is tested directly
(tests/unit/review/test_decider.py).

The rules, per loop:

* A review record makes the loop pending, then the events held for it are handled in arrival
  order (the first good answer decides). A review record for a decided loop changes nothing.
* A completion for a decided loop is a duplicate (EventBridge delivers at least once): counted,
  never a second verdict. Without a review record it is held, at most
  ``max_events_per_loop`` per loop (``orphan_completion`` beyond), until the record comes or the
  hold expires or is evicted (``orphan_completion``).
* ``Failed`` and ``Stopped`` loops, and reviews past their SLA, get the fallback (reject,
  approve, or requeue: the review record again on the review topic with a new deadline).
* A ``Completed`` loop asks for its ``output.json`` (:class:`ReadOutput`); the adapter answers
  with :class:`OutputRead`, :class:`OutputUnreadable` or :class:`OutputUnavailable`, and no other
  event may come in between. Answers are checked against the loop they claim (``forged_event``);
  unusable ones are dead-lettered and the review stays pending. An unavailable store is asked
  again after a backoff until ``output_retry_s`` has passed (then ``unreadable_output``); other
  events of the loop wait behind it, at most ``max_events_per_loop``.

Every completion handed in ends in exactly one place: a verdict (or requeue) it caused, one dead
letter, a counted duplicate, a :class:`Superseded` note (its loop was decided another way while it
waited), or the state (held, waiting for the store, or queued).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import orjson

from service.clock import epoch_of, iso_from_epoch
from service.errors import InputError, Reason
from service.messages import (
    DecidedBy,
    Label,
    OutputRecord,
    Source,
    Verdict,
    final_verdict_record,
    output_headers,
)
from service.review.answers import HumanVerdict, check_origin, decide_from_output
from service.review.events import CompletionEvent, parse_event
from service.review.records import ReviewLabel, ReviewRecord, image_json, review_record_of
from service.review.state import Completion, Held, LoopState, Reading, Retry

MAX_EVENTS_PER_LOOP = 8  # events held or queued for one loop; more are dead-lettered
REQUEST_AGAIN_S = 60.0  # a timer's command lost in a rebalance is sent again after this
SLA_EXCEEDED = "review SLA exceeded"

Fallback = Literal["reject", "approve", "requeue"]
Consensus = Literal["any", "majority"]


@dataclass(frozen=True, slots=True)
class Config:
    fallback: Fallback
    consensus: Consensus
    sla_s: float
    orphan_ttl_s: float
    max_early: int  # named in eviction messages (the adapter applies the bound)
    output_retry_s: float
    #: Seconds before read attempt ``n + 1`` after ``n`` failures: the one source of randomness,
    #: passed in (full jitter in the sink, a fixed function in tests).
    backoff: Callable[[int], float]
    max_events_per_loop: int = MAX_EVENTS_PER_LOOP


# -- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReviewArrived:
    review: ReviewRecord


@dataclass(frozen=True, slots=True)
class CompletionArrived:
    completion: Completion


@dataclass(frozen=True, slots=True)
class SlaDue:
    """The sweep found the review past its deadline."""


@dataclass(frozen=True, slots=True)
class RetryDue:
    """The backoff of the event waiting for the output store is over."""


@dataclass(frozen=True, slots=True)
class OrphanDue:
    """Held events are too old (``evict=False``) or chosen for eviction while held since
    ``chosen_since`` (``evict=True``: a newer hold of the loop is spared)."""

    evict: bool = False
    chosen_since: float = 0.0


@dataclass(frozen=True, slots=True)
class OutputRead:
    data: bytes


@dataclass(frozen=True, slots=True)
class OutputUnreadable:
    """The store says the output is the event's problem (missing, too large, forbidden)."""

    reason: Reason
    message: str


@dataclass(frozen=True, slots=True)
class OutputUnavailable:
    """The store cannot answer now: asked again after a backoff."""

    error: str


Event = (
    ReviewArrived
    | CompletionArrived
    | SlaDue
    | RetryDue
    | OrphanDue
    | OutputRead
    | OutputUnreadable
    | OutputUnavailable
)
ReadResult = OutputRead | OutputUnreadable | OutputUnavailable


# -- outputs --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadOutput:
    """Read the reviewers' ``output.json`` and hand the answer back; always the last output."""

    uri: str


@dataclass(frozen=True, slots=True)
class Publish:
    """Send a final verdict (to the approved or rejected topic) or a requeued review record.

    Should the broker refuse it for good, the adapter dead-letters it (``output_too_large``,
    pointing at ``source``).
    """

    topic: Verdict  # "approved", "rejected" or "review"
    record: OutputRecord
    request_id: str
    decided_by: DecidedBy
    source: Source  # the request's, from its review record
    cause: Completion | None  # the event that decided it; None for the SLA


@dataclass(frozen=True, slots=True)
class SendToDlq:
    completion: Completion
    reason: Reason
    message: str
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class Duplicate:
    """A completion for a decided loop: counted, ignored."""

    completion: Completion


@dataclass(frozen=True, slots=True)
class Superseded:
    """An event dropped because its loop was decided another way while it waited."""

    completion: Completion


@dataclass(frozen=True, slots=True)
class StaleReview:
    """A review record for a decided loop (redelivered): ignored."""


@dataclass(frozen=True, slots=True)
class TimedOut:
    """A review past its SLA, or a loop A2I expired."""


@dataclass(frozen=True, slots=True)
class Orphaned:
    """Counted with each orphan dead letter: ``overflow``, ``expired`` or ``evicted``."""

    why: Literal["overflow", "expired", "evicted"]


@dataclass(frozen=True, slots=True)
class ReviewTook:
    seconds: float


@dataclass(frozen=True, slots=True)
class RetryScheduled:
    delay_s: float
    error: str


@dataclass(frozen=True, slots=True)
class EarlyGrew:
    """One more loop holds events: the adapter checks the bound on held events."""


Output = (
    ReadOutput
    | Publish
    | SendToDlq
    | Duplicate
    | Superseded
    | StaleReview
    | TimedOut
    | Orphaned
    | ReviewTook
    | RetryScheduled
    | EarlyGrew
)


def decide(
    state: LoopState, event: Event, *, loop: str, now: float, config: Config
) -> tuple[LoopState, list[Output]]:
    """The new state of ``loop`` and what to do, in order, for one event at ``now``."""
    run = _Run(state, loop, now, config)
    run.handle(event)
    return run.state, run.outputs


class _Run:
    """One call of :func:`decide`: the state as it changes, and the outputs so far."""

    def __init__(self, state: LoopState, loop: str, now: float, config: Config) -> None:
        self.state = state
        self.loop = loop
        self.now = now
        self.config = config
        self.outputs: list[Output] = []

    def handle(self, event: Event) -> None:
        reading = self.state.reading
        if isinstance(event, OutputRead | OutputUnreadable | OutputUnavailable):
            if reading is None:
                raise ValueError(f"loop {self.loop!r}: an output read answered, none asked for")
            self.state = replace(self.state, reading=None)
            self._continue(self._settle(reading, event) + reading.behind)
            return
        if reading is not None:
            raise ValueError(f"loop {self.loop!r} waits for its output read, not {event!r}")
        if isinstance(event, ReviewArrived):
            self._review(event.review)
        elif isinstance(event, CompletionArrived):
            self._continue((event.completion,))
        elif isinstance(event, SlaDue):
            self._sla()
        elif isinstance(event, RetryDue):
            self._retry_due()
        else:
            self._orphan(event)

    # -- arrivals ---------------------------------------------------------------------------

    def _review(self, review: ReviewRecord) -> None:
        if self.state.decided is not None:
            self.outputs.append(StaleReview())
            return
        held = self.state.held
        self.state = replace(self.state, review=review, held=None)
        self._continue(held.events if held is not None else ())

    def _continue(self, todo: Sequence[Completion]) -> None:
        """Handle ``todo`` in order; events released by a settled one go first. A read stops
        the work: what is left waits behind it."""
        remaining = tuple(todo)
        while remaining and self.state.reading is None:
            first, remaining = remaining[0], remaining[1:]
            remaining = self._completion(first) + remaining
        reading = self.state.reading
        if reading is not None and remaining:
            self.state = replace(
                self.state, reading=replace(reading, behind=reading.behind + remaining)
            )

    def _completion(self, completion: Completion) -> tuple[Completion, ...]:
        """One event as if it just arrived; returns the events its settling released."""
        state = self.state
        if state.decided is not None:
            self.outputs.append(Duplicate(completion))
            return ()
        if state.review is None:
            self._hold(completion)
            return ()
        if state.retry is not None:
            self._queue(state.retry, completion)
            return ()
        return self._finish(completion)

    def _hold(self, completion: Completion) -> None:
        """Its review record has not arrived yet: keep the event (every one), within bounds."""
        held = self.state.held
        events = held.events if held is not None else ()
        limit = self.config.max_events_per_loop
        if len(events) >= limit:
            self.outputs.append(Orphaned("overflow"))
            self._dead_letter(
                completion,
                Reason.ORPHAN_COMPLETION,
                f"more than {limit} events held for loop {self.loop!r} without its review record",
            )
            return
        since = held.since if held is not None else self.now
        self.state = replace(self.state, held=Held((*events, completion), since))
        self.outputs.append(EarlyGrew())

    def _queue(self, retry: Retry, completion: Completion) -> None:
        """Another event waits for the store: this one waits behind it (it may be the genuine
        answer where the first is forged), within bounds."""
        limit = self.config.max_events_per_loop
        if len(retry.queued) >= limit:
            self._dead_letter(
                completion,
                Reason.UNREADABLE_OUTPUT,
                f"more than {limit} events wait for loop {self.loop!r}'s output",
            )
            return
        self.state = replace(self.state, retry=replace(retry, queued=(*retry.queued, completion)))

    # -- settling one event -----------------------------------------------------------------

    def _finish(self, completion: Completion) -> tuple[Completion, ...]:
        """Decide by the event: a fallback, or a read of its output (settled by the answer)."""
        try:
            event = parse_event(orjson.dumps(completion.event))
        except InputError as exc:
            return self._reject(completion, exc.reason, exc.message)
        if event.status != "Completed":
            why = f"human loop {event.status}"
            if event.failure_code:
                why += f" ({event.failure_code}: {event.failure_reason or ''})"
            if event.expired:
                self.outputs.append(TimedOut())
            released = self._clear_retry()
            self._fallback(why, cause=completion)
            return released
        if event.output_uri is None:  # parse_event refuses a Completed event without one
            raise AssertionError("a Completed event without an output URI")
        self.state = replace(self.state, reading=Reading(completion, event))
        self.outputs.append(ReadOutput(event.output_uri))
        return ()

    def _settle(self, reading: Reading, result: ReadResult) -> tuple[Completion, ...]:
        completion, event = reading.completion, reading.event
        if isinstance(result, OutputUnavailable):
            return self._retry_later(completion, result.error)
        if isinstance(result, OutputUnreadable):
            return self._reject(completion, result.reason, result.message)
        review = self.state.review
        if review is None or self.state.decided is not None:  # not while a read is asked for
            raise AssertionError("an output read for a loop that is not pending")
        try:
            human = decide_from_output(result.data, self.config.consensus)
            check_origin(
                human,
                loop=self.loop,
                path_flow_name=event.output_flow_name,
                event_flow_arn=event.flow_definition_arn,
                record_flow_arn=review.flow_definition_arn,
            )
        except InputError as exc:
            # Unusable or forged answers: the event goes to the DLQ; the review stays pending,
            # so the next event or the SLA fallback still decides it.
            return self._reject(completion, exc.reason, exc.message)
        released = self._clear_retry()
        self._human_verdict(review, event, human, completion)
        return released

    def _reject(
        self, completion: Completion, reason: Reason, message: str
    ) -> tuple[Completion, ...]:
        released = self._clear_retry()
        self._dead_letter(completion, reason, message)
        return released

    def _retry_later(self, completion: Completion, error: str) -> tuple[Completion, ...]:
        """The store is unavailable: try again after a backoff, until the deadline passes."""
        entry = self.state.retry
        first = entry.first_failure if entry is not None else self.now
        attempts = (entry.attempts if entry is not None else 0) + 1
        waited = self.now - first
        if waited >= self.config.output_retry_s:
            released = self._clear_retry()
            self._dead_letter(
                completion,
                Reason.UNREADABLE_OUTPUT,
                f"output store unavailable for {waited:.0f}s ({attempts} attempts): {error}",
                attempts=attempts,
            )
            return released
        delay = self.config.backoff(attempts)
        self.outputs.append(RetryScheduled(delay, error))
        queued = entry.queued if entry is not None else ()
        retry = Retry(completion, first, attempts, self.now + delay, queued)
        self.state = replace(self.state, retry=retry)
        return ()

    def _clear_retry(self) -> tuple[Completion, ...]:
        """Forget the loop's retry; returns the events that waited behind it."""
        retry = self.state.retry
        if retry is None:
            return ()
        self.state = replace(self.state, retry=None)
        return retry.queued

    def _dead_letter(
        self, completion: Completion, reason: Reason, message: str, *, attempts: int = 1
    ) -> None:
        self.outputs.append(SendToDlq(completion, reason, message, attempts))

    # -- timers -----------------------------------------------------------------------------

    def _sla(self) -> None:
        if self.state.review is None or self.state.decided is not None:
            return
        self.outputs.append(TimedOut())
        waiting = self.state.retry
        if waiting is not None:
            self.outputs.append(Superseded(waiting.completion))
        released = self._clear_retry()
        self._fallback(SLA_EXCEEDED, cause=None)
        self._continue(released)

    def _retry_due(self) -> None:
        retry = self.state.retry
        if retry is None:
            return
        if self.state.review is None or self.state.decided is not None:
            self.state = replace(self.state, retry=None)
            self.outputs.extend(Superseded(c) for c in (retry.completion, *retry.queued))
            return
        self._continue(self._finish(retry.completion))

    def _orphan(self, event: OrphanDue) -> None:
        held = self.state.held
        if held is None:
            return  # its review record came in time after all
        age = self.now - held.since
        why: Literal["expired", "evicted"]
        if event.evict:
            if held.since > event.chosen_since:
                return  # a newer hold of this loop replaced the one chosen for eviction
            why = "evicted"
            message = (
                f"no review record for loop {self.loop!r}; evicted after {age:.0f}s because "
                f"more than MODERATION_SINK_MAX_EARLY ({self.config.max_early}) "
                "events were waiting"
            )
        else:
            if age < self.config.orphan_ttl_s:
                return
            why = "expired"
            message = (
                f"no review record for loop {self.loop!r} within MODERATION_SINK_ORPHAN_TTL_S "
                f"({self.config.orphan_ttl_s:g}s)"
            )
        self.state = replace(self.state, held=None)
        for completion in held.events:
            self.outputs.append(Orphaned(why))
            self._dead_letter(completion, Reason.ORPHAN_COMPLETION, message)

    # -- verdicts ---------------------------------------------------------------------------

    def _fallback(self, why: str, *, cause: Completion | None) -> None:
        review = self.state.review
        if review is None:
            raise AssertionError("a fallback for a loop that is not pending")
        action = self.config.fallback
        if action == "requeue":
            self._requeue(review, why, cause)
            return
        verdict: Literal["approved", "rejected"] = "rejected" if action == "reject" else "approved"
        self._final(
            review,
            verdict=verdict,
            decided_by="fallback",
            labels=[_label(label) for label in review.labels],
            reasons=[{"rule": "review_fallback", "policy": f"fallback:{action}", "why": why}],
            human_review={"human_loop_name": self.loop, "fallback": action, "why": why},
            cause=cause,
        )

    def _requeue(self, review: ReviewRecord, why: str, cause: Completion | None) -> None:
        """The review record again, with a new deadline; the loop stays pending."""
        details = dict(review.raw["review"])
        details["requeued"] = review.requeued + 1
        details["requeue_reason"] = why
        details["created_at"] = iso_from_epoch(self.now)
        details["deadline"] = iso_from_epoch(self.now + self.config.sla_s)
        raw = {**review.raw, "review": details}
        self.state = replace(self.state, review=review_record_of(raw))
        headers = output_headers([], verdict="review", decided_by="fallback", id=review.id)
        record = OutputRecord(review.id.encode(), orjson.dumps(raw), headers)
        self.outputs.append(Publish("review", record, review.id, "fallback", review.source, cause))

    def _human_verdict(
        self,
        review: ReviewRecord,
        event: CompletionEvent,
        human: HumanVerdict,
        cause: Completion,
    ) -> None:
        answered = epoch_of(human.submitted_at)
        if answered is None:
            answered = epoch_of(event.time)
        if answered is None:
            answered = self.now
        duration = max(0.0, answered - review.created_at.timestamp())
        self.outputs.append(ReviewTook(duration))
        consensus = self.config.consensus
        self._final(
            review,
            verdict=human.verdict,
            decided_by="human",
            labels=human.labels,
            reasons=[
                {
                    "rule": "human_review",
                    "policy": f"consensus:{consensus}",
                    "answers": human.answers,
                    "rejecting": human.rejecting,
                }
            ],
            human_review={
                "human_loop_name": self.loop,
                "workers": human.workers,
                "answers": human.answers,
                "rejecting": human.rejecting,
                "consensus": consensus,
                "duration_s": duration,
                "model_labels": [_label(label).as_json() for label in review.labels],
                "output_uri": event.output_uri,
            },
            cause=cause,
        )

    def _final(
        self,
        review: ReviewRecord,
        *,
        verdict: Literal["approved", "rejected"],
        decided_by: DecidedBy,
        labels: Sequence[Label],
        reasons: list[dict[str, object]],
        human_review: dict[str, object],
        cause: Completion | None,
    ) -> None:
        # The decision is recorded with the verdict: a redelivered event is then a duplicate
        # (at worst the verdict is the one thing repeated, by at_least_once after a crash).
        self.state = replace(self.state, decided=verdict, review=None)
        value = final_verdict_record(
            request_id=review.id,
            verdict=verdict,
            decided_by=decided_by,
            labels=labels,
            model_version=review.model_version,
            reasons=list(reasons),
            attributes=review.attributes,
            image=image_json(review.image),
            source=review.source,
            received_at=review.received_at,
            decided_at=iso_from_epoch(self.now),
            human_review=dict(human_review),
        )
        headers = output_headers([], verdict=verdict, decided_by=decided_by, id=review.id)
        record = OutputRecord(review.id.encode(), value, headers)
        self.outputs.append(Publish(verdict, record, review.id, decided_by, review.source, cause))


def _label(label: ReviewLabel) -> Label:
    return Label(label.name, label.parent, label.confidence, label.taxonomy_level, label.frame)


# -- across loops: the timers and the bound on held events ----------------------------------


class Requests:
    """Commands the timers sent and not yet seen handled, so each (kind, loop) is sent once at a
    time; one lost in a rebalance is sent again after ``again_s``. Memory of one worker only."""

    def __init__(self, again_s: float = REQUEST_AGAIN_S) -> None:
        self._again_s = again_s
        self._sent: dict[tuple[str, str], float] = {}

    def ask(self, kind: str, loop: str, now: float) -> bool:
        """True (and remembered) unless a ``kind`` command for ``loop`` is already on its way."""
        sent = self._sent.get((kind, loop))
        if sent is not None and now - sent < self._again_s:
            return False
        self._sent[(kind, loop)] = now
        return True

    def sent(self, kind: str, loop: str, now: float) -> None:
        self._sent[(kind, loop)] = now

    def handled(self, kind: str, loop: str) -> None:
        self._sent.pop((kind, loop), None)

    def evicting(self) -> set[str]:
        return {loop for kind, loop in self._sent if kind == "evict"}


def overdue(deadlines: Iterable[tuple[str, float | None]], now: float) -> list[str]:
    """Loops whose review is past its deadline (None: no usable deadline, never overdue)."""
    return [loop for loop, deadline in deadlines if deadline is not None and deadline < now]


def expired(held: Iterable[tuple[str, float]], now: float, ttl_s: float) -> list[str]:
    """Loops whose events have been held for ``ttl_s`` or longer."""
    return [loop for loop, since in held if now - since >= ttl_s]


def due(retries: Iterable[tuple[str, float]], now: float) -> list[str]:
    """Loops whose wait for the output store is over."""
    return [loop for loop, next_at in retries if next_at <= now]


def evictions(
    count: int, held: Iterable[tuple[str, float]], *, limit: int, evicting: Collection[str]
) -> list[tuple[str, float]]:
    """Over ``limit`` loops holding events (``count`` of them, ``held`` oldest first): the oldest
    to evict, as (loop, held since), besides those already being evicted."""
    excess = count - limit - len(evicting)
    if excess <= 0:
        return []
    victims: list[tuple[str, float]] = []
    for loop, since in held:
        if loop in evicting:
            continue
        victims.append((loop, since))
        if len(victims) >= excess:
            break
    return victims
