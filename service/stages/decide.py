"""Decide: labels and the backend's managed review into a verdict, its reasons and, for a review,
the review details that travel on the review topic.

An animation's frames are decided one by one and the worst verdict (rejected, then review, then
approved; the earliest frame among equals) is the image's, so conditions never combine labels
seen in different frames.

The rules are :func:`service.routing.decide`'s and :func:`service.activation.evaluate`'s (pure);
this stage picks their inputs: the activation conditions are evaluated here only when no managed
review started (A2I evaluated them itself otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from service.activation import ActivationConditions, Evaluation, evaluate
from service.backends.base import ModerationResult
from service.messages import Verdict
from service.policy import RoutingPolicy
from service.review.loops import review_details
from service.routing import decide
from service.settings import ReviewSettings
from service.stages.analyze import Analysis

ReviewMode = Literal["managed", "self_hosted"]
_SEVERITY: dict[Verdict, int] = {"approved": 0, "review": 1, "rejected": 2}


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    reasons: list[dict[str, Any]]
    review_mode: ReviewMode | None  # set for a review verdict
    review: dict[str, Any] | None  # the review record's ``review`` object, for a review verdict
    frame: int = 0  # the frame whose verdict it is (an animation's worst)


class Decider:
    def __init__(
        self,
        policy: RoutingPolicy,
        review: ReviewSettings,
        conditions: ActivationConditions | None = None,
    ) -> None:
        self._policy = policy
        self._review = review
        self._conditions = conditions

    def decide(self, loop: str, analysis: Analysis) -> Outcome:
        """The worst frame's outcome."""
        worst: Outcome | None = None
        for frame in analysis.frames:
            outcome = self._decide_frame(loop, frame.index, frame.result, analysis.review_refused)
            if worst is None or _SEVERITY[outcome.verdict] > _SEVERITY[worst.verdict]:
                worst = outcome
        assert worst is not None  # an analysis has at least one frame
        return worst

    def _decide_frame(
        self, loop: str, index: int, result: ModerationResult, review_refused: bool
    ) -> Outcome:
        managed = result.managed_review
        evaluation = None
        if self._conditions is not None and managed is None:
            evaluation = evaluate(self._conditions, result.labels, request_key=loop)
        held = evaluation.reasons if evaluation is not None and evaluation.activated else None
        decision = decide(
            result.labels,
            self._policy,
            conditions_hold=held,
            human_loop_arn=managed.loop_arn if managed is not None else None,
        )
        if decision.verdict != "review":
            return Outcome(decision.verdict, decision.reasons, None, None, index)
        mode: ReviewMode
        if managed is not None:
            mode = "managed"
            activation_reasons = list(managed.activation_reasons)
            activation_results = managed.conditions_evaluation
        else:
            mode = "self_hosted"
            activation_reasons, activation_results = _self_hosted_activation(
                evaluation, decision.reasons
            )
        details = review_details(
            loop=loop,
            mode=mode,
            flow_definition_arn=self._review.flow_definition_arn,
            human_loop_arn=managed.loop_arn if managed is not None else None,
            activation_reasons=activation_reasons,
            activation_results=activation_results,
            sla_s=self._review.sla_s,
            fallback_reason="human_loop_quota_exceeded" if review_refused else None,
        )
        return Outcome("review", decision.reasons, mode, details, index)


def _self_hosted_activation(
    evaluation: Evaluation | None, reasons: list[dict[str, Any]]
) -> tuple[list[str], object]:
    """Why our own review starts: the conditions that held, else the review-band labels."""
    activation_reasons = evaluation.reasons if evaluation and evaluation.activated else []
    activation_results = evaluation.results if evaluation is not None else None
    if not activation_reasons:
        activation_reasons = [
            f"{r['label']} confidence {r['confidence']:.1f} >= review threshold {r['threshold']:g}"
            for r in reasons
            if r["rule"] == "review_threshold"
        ]
    return activation_reasons, activation_results
