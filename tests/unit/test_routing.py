"""The verdict decision: thresholds, overrides, reasons ordering, and its defining property."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.messages import Label
from service.policy import RoutingPolicy, Thresholds
from service.routing import decide
from service.taxonomy import V7_LABELS

DEFAULT = Thresholds(reject=80.0, review=50.0)
POLICY = RoutingPolicy(
    default=DEFAULT,
    overrides={
        "Violence": Thresholds(reject=70.0, review=30.0),
        "Weapons": Thresholds(reject=None, review=60.0),
        "Alcohol": Thresholds(reject=None, review=None),
    },
)


def label(name: str, confidence: float) -> Label:
    known = V7_LABELS.get(name)
    return Label(
        name=name,
        parent=known.parent if known else "",
        confidence=confidence,
        taxonomy_level=known.level if known else 0,
    )


@pytest.mark.parametrize(
    ("labels", "verdict"),
    [
        ([], "approved"),
        ([("Explicit", 79.99)], "review"),
        ([("Explicit", 80.0)], "rejected"),  # reaching the threshold is enough
        ([("Explicit", 49.99)], "approved"),
        ([("Explicit", 50.0)], "review"),
        ([("Graphic Violence", 70.0)], "rejected"),  # inherits the Violence override
        ([("Graphic Violence", 30.0)], "review"),
        ([("Weapons", 100.0)], "review"),  # its own override never rejects
        ([("Weapons", 59.0)], "approved"),
        ([("Drinking", 100.0)], "approved"),  # Alcohol disabled entirely
        ([("Not A V7 Label", 85.0)], "rejected"),  # unknown names use the default
        ([("Drinking", 99.0), ("Explicit", 55.0)], "review"),
        ([("Swimwear or Underwear", 55.0), ("Explicit Nudity", 95.0)], "rejected"),
    ],
)
def test_verdicts(labels: list[tuple[str, float]], verdict: str) -> None:
    assert decide([label(n, c) for n, c in labels], POLICY).verdict == verdict


def test_approved_reason() -> None:
    decision = decide([label("Explicit", 10.0)], POLICY)
    assert decision.reasons == [{"rule": "no_label_over_threshold", "policy": "default"}]


def test_reasons_list_rejects_first_then_reviews_strongest_first() -> None:
    decision = decide(
        [
            label("Swimwear or Underwear", 60.0),
            label("Explicit", 85.0),
            label("Physical Violence", 90.0),
            label("Weapons", 75.0),
            label("Drinking", 99.0),
        ],
        POLICY,
    )
    assert decision.verdict == "rejected"
    assert decision.reasons == [
        {
            "rule": "reject_threshold",
            "policy": "label:Violence",
            "label": "Physical Violence",
            "confidence": 90.0,
            "threshold": 70.0,
        },
        {
            "rule": "reject_threshold",
            "policy": "default",
            "label": "Explicit",
            "confidence": 85.0,
            "threshold": 80.0,
        },
        {
            "rule": "review_threshold",
            "policy": "label:Weapons",
            "label": "Weapons",
            "confidence": 75.0,
            "threshold": 60.0,
        },
        {
            "rule": "review_threshold",
            "policy": "default",
            "label": "Swimwear or Underwear",
            "confidence": 60.0,
            "threshold": 50.0,
        },
    ]


def test_review_reasons_only_when_nothing_rejects() -> None:
    decision = decide([label("Explicit", 60.0), label("Graphic Violence", 65.0)], POLICY)
    assert decision.verdict == "review"
    assert [r["label"] for r in decision.reasons] == ["Graphic Violence", "Explicit"]
    assert {r["rule"] for r in decision.reasons} == {"review_threshold"}


# --- property: independent oracle -------------------------------------------------------------

NAMES = [*sorted(V7_LABELS), "Suggestive", "Unknown"]
threshold = st.one_of(st.none(), st.floats(0, 100))


@st.composite
def thresholds(draw: st.DrawFn) -> Thresholds:
    reject, review = draw(threshold), draw(threshold)
    if reject is not None and review is not None and review > reject:
        reject, review = review, reject
    return Thresholds(reject=reject, review=review)


policies = st.builds(
    RoutingPolicy,
    default=thresholds(),
    overrides=st.dictionaries(st.sampled_from(sorted(V7_LABELS)), thresholds(), max_size=8),
)
labels_strategy = st.lists(st.builds(label, st.sampled_from(NAMES), st.floats(0, 100)), max_size=10)


def governing(name: str, policy: RoutingPolicy) -> Thresholds:
    """Walk up the taxonomy by hand: the nearest override, else the default."""
    current: str | None = name
    while current:
        if current in policy.overrides:
            return policy.overrides[current]
        known = V7_LABELS.get(current)
        current = known.parent if known else None
    return policy.default


def reaches(confidence: float, limit: float | None) -> bool:
    return limit is not None and confidence >= limit


@given(labels_strategy, policies)
def test_rejected_iff_some_label_reaches_its_reject_threshold(
    labels: list[Label], policy: RoutingPolicy
) -> None:
    decision = decide(labels, policy)
    rejects = any(reaches(lb.confidence, governing(lb.name, policy).reject) for lb in labels)
    reviews = any(reaches(lb.confidence, governing(lb.name, policy).review) for lb in labels)
    assert (decision.verdict == "rejected") == rejects
    assert (decision.verdict == "review") == (not rejects and reviews)
    assert (decision.verdict == "approved") == (not rejects and not reviews)
    confidences = [reason.get("confidence", 0) for reason in decision.reasons]
    if decision.verdict != "approved":
        rules = [reason["rule"] for reason in decision.reasons]
        assert rules == sorted(rules)  # every reject_threshold before any review_threshold
        for rule in set(rules):
            same = [c for c, r in zip(confidences, rules, strict=True) if r == rule]
            assert same == sorted(same, reverse=True)
