"""What the reviewer pages and the JSON API show of items and decisions: plain dicts, no I/O.

Pages and API render the same shapes, so a field added here appears in both. An item whose
stored record is unreadable shows as such rather than failing the page.
"""

from __future__ import annotations

from typing import Any

from service.console.image_source import image_kind
from service.console.storage import HistoryEntry, Item
from service.fetch import redact_url
from service.messages import S3Image, UrlImage
from service.review.records import ReviewRecord
from service.taxonomy import TOP_LEVEL_CATEGORIES, V7_LABELS


def taxonomy_tree() -> list[dict[str, Any]]:
    """The v7 labels as nested nodes (level 1 -> 2 -> 3) for the label picker."""

    def children(parent: str) -> list[dict[str, Any]]:
        return [
            {"name": label.name, "level": label.level, "children": children(label.name)}
            for label in V7_LABELS.values()
            if label.parent == parent
        ]

    return [{"name": top, "level": 1, "children": children(top)} for top in TOP_LEVEL_CATEGORIES]


def image_summary(review: ReviewRecord | None) -> dict[str, Any]:
    """Where the image is (URLs redacted), or an inline image's hash and size: never its bytes."""
    if review is None:
        return {"kind": "unreadable"}
    image = review.image
    summary: dict[str, Any] = {"kind": image_kind(image)}
    if isinstance(image, S3Image):
        summary["where"] = f"s3://{image.bucket}/{image.key}"
    elif isinstance(image, UrlImage):
        summary["where"] = redact_url(image.url)
    else:
        summary["sha256"] = image.sha256
        summary["size"] = image.size
    return summary


def model_labels(review: ReviewRecord | None) -> list[dict[str, Any]]:
    """The model's labels, most confident first."""
    labels = review.labels if review is not None else ()
    return [
        {
            "name": label.name,
            "parent": label.parent,
            "confidence": label.confidence,
            "taxonomy_level": label.taxonomy_level,
        }
        for label in sorted(labels, key=lambda label: -label.confidence)
    ]


def item_view(item: Item, user: str, now: float) -> dict[str, Any]:
    """An item as ``user`` sees it at ``now``: a run-out claim of someone else's shows as free."""
    review = item.review
    active_claim = item.claim_expires is not None and item.claim_expires > now
    return {
        "loop_name": item.loop_name,
        "request_id": item.request_id,
        "status": item.status,
        "deadline": item.deadline,
        "created_at": item.created_at,
        "claimed_by": item.claimed_by if active_claim or item.claimed_by == user else None,
        "claim_expires": item.claim_expires if item.claimed_by else None,
        "yours": item.held_by(user),
        "unreadable": review is None,
        "labels": model_labels(review),
        "activation_reasons": list(review.activation_reasons) if review else [],
        "image": image_summary(review),
    }


def history_view(entry: HistoryEntry) -> dict[str, Any]:
    """One decision in the leads' history, with what the model had said."""
    decision = entry.decision
    return {
        "loop_name": decision.loop_name,
        "request_id": decision.request_id,
        "reviewer": decision.reviewer,
        "verdict": "rejected" if decision.labels else "approved",
        "labels": [label["name"] for label in decision.labels],
        "accepted_at": decision.accepted_at,
        "submitted_at": decision.submitted_at,
        "output_uri": decision.output_uri,
        "delivered_at": decision.published_at,
        "unreadable": entry.review is None,
        "model_labels": model_labels(entry.review),
    }
