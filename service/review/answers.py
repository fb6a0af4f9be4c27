"""Reviewers' answers (A2I ``output.json``, Rekognition task type) into one human verdict.

A reviewer picks the labels that apply; none picked means the image is fine. With several
reviewers per task the consensus rule decides: ``any`` (default, fails closed) rejects when any
reviewer picked a label; ``majority`` rejects when at least half did (a tie rejects). The
verdict's labels are those picked by the reviewers who rejected, each once.

Answers only count for the loop they were given in: :func:`check_origin` compares the output's
own ``humanLoopName`` and ``flowDefinitionArn`` with the event's loop, its flow definition and the
review record's, so an event pointing at another review's answers is ``forged_event``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from service.errors import InputError, Reason
from service.messages import Label
from service.taxonomy import V7_LABELS

TASK_KEY = "AWS/Rekognition/DetectModerationLabels/Image/V3"


@dataclass(frozen=True, slots=True)
class HumanVerdict:
    verdict: Literal["approved", "rejected"]
    labels: list[Label]
    workers: list[str]
    answers: int
    rejecting: int
    submitted_at: str | None  # the last submission
    loop_name: str | None = None  # the output's own humanLoopName
    flow_definition_arn: str | None = None  # the output's own flowDefinitionArn


def decide_from_output(raw: bytes, consensus: Literal["any", "majority"]) -> HumanVerdict:
    try:
        output = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InputError(Reason.UNREADABLE_OUTPUT, f"output.json is not valid JSON: {exc}") from exc
    answers = output.get("humanAnswers") if isinstance(output, dict) else None
    if not isinstance(answers, list) or not answers:
        raise InputError(Reason.UNREADABLE_OUTPUT, "output.json has no humanAnswers")
    picked_by_worker: list[list[dict[str, Any]]] = []
    workers: list[str] = []
    submitted: list[str] = []
    for index, answer in enumerate(answers):
        content = answer.get("answerContent") if isinstance(answer, dict) else None
        task = content.get(TASK_KEY) if isinstance(content, dict) else None
        labels = task.get("moderationLabels") if isinstance(task, dict) else None
        if not isinstance(labels, list) or not all(isinstance(x, dict) for x in labels):
            raise InputError(
                Reason.UNREADABLE_OUTPUT,
                f"humanAnswers[{index}].answerContent[{TASK_KEY!r}].moderationLabels is missing",
            )
        picked_by_worker.append(labels)
        workers.append(str(answer.get("workerId", "")))
        if isinstance(answer.get("submissionTime"), str):
            submitted.append(answer["submissionTime"])
    rejecting = [labels for labels in picked_by_worker if labels]
    if consensus == "any":
        rejected = bool(rejecting)
    else:
        rejected = 2 * len(rejecting) >= len(picked_by_worker)
    chosen: dict[str, Label] = {}
    if rejected:
        for labels in rejecting:
            for item in labels:
                label = _label(item)
                chosen.setdefault(label.name, label)
    return HumanVerdict(
        verdict="rejected" if rejected else "approved",
        labels=list(chosen.values()),
        workers=workers,
        answers=len(picked_by_worker),
        rejecting=len(rejecting),
        submitted_at=max(submitted) if submitted else None,
        loop_name=_text_or_none(output.get("humanLoopName")),
        flow_definition_arn=_text_or_none(output.get("flowDefinitionArn")),
    )


def check_origin(
    human: HumanVerdict,
    *,
    loop: str,
    path_flow_name: str | None,
    event_flow_arn: str | None,
    record_flow_arn: str | None,
) -> None:
    """Raise ``forged_event`` unless these answers were given in ``loop`` under its flow."""
    if human.loop_name != loop:
        raise InputError(
            Reason.FORGED_EVENT,
            f"output.json answers loop {human.loop_name!r}, not the event's {loop!r}",
        )
    flow = human.flow_definition_arn
    if flow is None:
        raise InputError(Reason.FORGED_EVENT, "output.json names no flowDefinitionArn")
    for source, expected in (("event", event_flow_arn), ("review record", record_flow_arn)):
        if expected is not None and flow != expected:
            raise InputError(
                Reason.FORGED_EVENT,
                f"output.json is from flow definition {flow!r}, not the {source}'s {expected!r}",
            )
    if path_flow_name is not None and not flow.endswith(f":flow-definition/{path_flow_name}"):
        raise InputError(
            Reason.FORGED_EVENT,
            f"output.json's flow definition {flow!r} is not the one in its path "
            f"({path_flow_name!r})",
        )


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _label(item: dict[str, Any]) -> Label:
    name = str(item.get("name", ""))
    known = V7_LABELS.get(name)
    parent = str(item.get("parentName", known.parent if known else ""))
    # A person's choice has no score; 100 says "certain", the level comes from the taxonomy.
    return Label(
        name=name, parent=parent, confidence=100.0, taxonomy_level=known.level if known else 0
    )
