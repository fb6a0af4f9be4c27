"""Labels in, verdict out: the pure decision, no I/O.

Reject when any label reaches its reject threshold; otherwise review when any label reaches its
review threshold; otherwise approve. ``reasons`` lists every rule that fired, strongest first, so a
verdict can always be explained.
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


def decide(labels: list[Label], policy: RoutingPolicy) -> Decision:
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
    if rejecting:
        return Decision("rejected", rejecting + reviewing)
    if reviewing:
        return Decision("review", reviewing)
    return Decision("approved", [{"rule": "no_label_over_threshold", "policy": "default"}])


def _reason(kind: str, rule: str, label: Label, threshold: float) -> dict[str, Any]:
    return {
        "rule": kind,
        "policy": rule,
        "label": label.name,
        "confidence": label.confidence,
        "threshold": threshold,
    }
