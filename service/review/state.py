"""What the sink remembers about one human loop, and the JSON its changelog-backed tables keep.

One entry per loop in each of four faust tables; their JSON layout is the one earlier versions
wrote, so a restarted (or upgraded) sink recovers what the previous one remembered:

* ``pending-reviews``: the review record, as it arrived, waiting for people;
* ``early-completions``: ``{"events": [command, ...], "early_at": epoch}``, completion events
  that came before their loop's review record, oldest first;
* ``decided-loops``: the final verdict (``"approved"`` or ``"rejected"``);
* ``output-retries``: ``{"command", "first_failure", "attempts", "next_at", "queued"}``, an event
  whose ``output.json`` the store could not serve yet, and the events waiting behind it.

A command is ``{"kind": "completion", "event": <the EventBridge event>, "source": <where the
intake read it>}``, exactly as the intake forwards it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.messages import Source
from service.review.events import CompletionEvent
from service.review.records import ReviewRecord, review_record_of


@dataclass(frozen=True, slots=True)
class Completion:
    """A completion event as the intake forwarded it: its JSON and where it was read."""

    event: Any  # the EventBridge event's JSON (checked at the door, parsed again when used)
    source: Source

    def as_json(self) -> dict[str, Any]:
        return {"kind": "completion", "event": self.event, "source": self.source.as_json()}


@dataclass(frozen=True, slots=True)
class Held:
    """Events of a loop whose review record has not arrived, oldest first."""

    events: tuple[Completion, ...]
    since: float  # when the first of them was held (epoch seconds)


@dataclass(frozen=True, slots=True)
class Retry:
    """An event waiting for the output store, and the events of its loop queued behind it."""

    completion: Completion
    first_failure: float
    attempts: int
    next_at: float
    queued: tuple[Completion, ...] = ()


@dataclass(frozen=True, slots=True)
class Reading:
    """An output read asked for and not answered yet; never stored (it lasts one faust event)."""

    completion: Completion
    event: CompletionEvent
    behind: tuple[Completion, ...] = ()  # events to handle once this one is settled


@dataclass(frozen=True, slots=True)
class LoopState:
    review: ReviewRecord | None = None
    held: Held | None = None
    decided: str | None = None
    retry: Retry | None = None
    reading: Reading | None = None


# -- the tables' JSON ---------------------------------------------------------------------------


def _source_of(value: object) -> Source:
    """A command's ``source``; the sink alone writes commands, so this only guards against bugs."""
    value = value if isinstance(value, dict) else {}
    try:
        partition, offset = int(value.get("partition", -1)), int(value.get("offset", -1))
        return Source(str(value.get("topic", "")), partition, offset)
    except (TypeError, ValueError):
        return Source("", -1, -1)


def completion_of(command: object) -> Completion:
    command = command if isinstance(command, dict) else {}
    return Completion(command.get("event"), _source_of(command.get("source")))


def _number(value: object, default: float) -> float:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if is_number else default  # type: ignore[arg-type]


def _completions(value: object) -> tuple[Completion, ...]:
    items = value if isinstance(value, list) else []
    return tuple(completion_of(item) for item in items if isinstance(item, dict))


def review_of(value: object) -> ReviewRecord | None:
    """A ``pending-reviews`` entry; ``InputError(invalid_review_record)`` if it is not a record."""
    return None if value is None else review_record_of(value)


def held_of(value: object) -> Held | None:
    """An ``early-completions`` entry; None for none (or for a value that holds nothing)."""
    if not isinstance(value, dict):
        return None
    events = _completions(value.get("events"))
    return Held(events, _number(value.get("early_at"), 0.0)) if events else None


def held_since(value: object) -> float | None:
    """When an ``early-completions`` entry began holding, without reading its events."""
    since = value.get("early_at") if isinstance(value, dict) else None
    return float(since) if isinstance(since, int | float) and not isinstance(since, bool) else None


def held_json(held: Held) -> dict[str, Any]:
    return {"events": [event.as_json() for event in held.events], "early_at": held.since}


def retry_of(value: object) -> Retry | None:
    if not isinstance(value, dict) or not isinstance(value.get("command"), dict):
        return None
    attempts = value.get("attempts")
    return Retry(
        completion=completion_of(value["command"]),
        first_failure=_number(value.get("first_failure"), 0.0),
        attempts=attempts if isinstance(attempts, int) and not isinstance(attempts, bool) else 0,
        next_at=_number(value.get("next_at"), 0.0),
        queued=_completions(value.get("queued")),
    )


def retry_json(retry: Retry) -> dict[str, Any]:
    return {
        "command": retry.completion.as_json(),
        "first_failure": retry.first_failure,
        "attempts": retry.attempts,
        "next_at": retry.next_at,
        "queued": [event.as_json() for event in retry.queued],
    }
