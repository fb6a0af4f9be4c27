"""Labels in, verdict out: the pure decision, no I/O.

In order, the first that holds decides:

1. a managed A2I human loop was started (Rekognition returned a ``HumanLoopArn``): **review**,
   since people will answer and their answer is final;
2. some label reaches its reject threshold: **rejected**;
3. the A2I activation conditions hold (evaluated here when review is self-hosted): **review**;
4. some label reaches its review threshold: **review**;
5. otherwise **approved**.

So thresholds and conditions combine as "reject what is clearly bad, send to people what the
conditions or the review band pick out, approve the rest". ``reasons`` lists every rule that
fired, strongest first, so a verdict can always be explained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.messages import Label, Verdict
from service.policy import RoutingPolicy


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reasons: list[dict[str, Any]]


def decide(
    labels: list[Label],
    policy: RoutingPolicy,
    *,
    conditions_hold: list[str] | None = None,
    human_loop_arn: str | None = None,
) -> Decision:
    """``conditions_hold``: the activation reasons when the conditions held, else None."""
    rejecting: list[dict[str, Any]] = []
    reviewing: list[dict[str, Any]] = []
    for label in labels:
        thresholds, rule = policy.thresholds_for(label.name)
        if thresholds.reject is not None and label.confidence >= thresholds.reject:
            rejecting.append(_reason("reject_threshold", rule, label, thresholds.reject))
        elif thresholds.review is not None and label.confidence >= thresholds.review:
            reviewing.append(_reason("review_threshold", rule, label, thresholds.review))
    rejecting.sort(key=lambda reason: -reason["confidence"])
    reviewing.sort(key=lambda reason: -reason["confidence"])
    activation = (
        [{"rule": "activation_conditions", "policy": "a2i", "conditions": conditions_hold}]
        if conditions_hold is not None
        else []
    )
    if human_loop_arn is not None:
        started = {"rule": "human_loop_started", "policy": "a2i", "human_loop_arn": human_loop_arn}
        return Decision("review", [started, *rejecting, *reviewing])
    if rejecting:
        return Decision("rejected", rejecting + activation + reviewing)
    if activation or reviewing:
        return Decision("review", activation + reviewing)
    return Decision("approved", [{"rule": "no_label_over_threshold", "policy": "default"}])


def _reason(kind: str, rule: str, label: Label, threshold: float) -> dict[str, Any]:
    return {
        "rule": kind,
        "policy": rule,
        "label": label.name,
        "confidence": label.confidence,
        "threshold": threshold,
    }
