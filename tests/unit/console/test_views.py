"""What pages and the API show of an item: claims as the viewer sees them, images redacted."""

from __future__ import annotations

from dataclasses import replace

from service.console.storage import Item
from service.console.views import item_view, model_labels, taxonomy_tree
from service.review.records import parse_review_record
from service.taxonomy import V7_LABELS
from tests.console.harness import review_record

NOW = 1_700_000_000.0


def item(**changes: object) -> Item:
    loop, value = review_record(
        "view",
        created=NOW - 60,
        deadline=NOW + 600,
        image={"url": "https://user:secret@images.example/a.png?sig=abc#frag"},
        labels=[
            {"name": "Weapons", "parent": "Violence", "confidence": 61.0, "taxonomy_level": 2},
            {"name": "Violence", "parent": "", "confidence": 88.0, "taxonomy_level": 1},
        ],
    )
    base = Item(
        loop_name=loop,
        request_id="view",
        record={},
        review=parse_review_record(value, max_bytes=len(value)),
        created_at=NOW - 60,
        deadline=NOW + 600,
        status="pending",
        claimed_by=None,
        claimed_at=None,
        claim_expires=None,
        received_at=NOW - 59,
        requeued=0,
    )
    return replace(base, **changes)


def test_a_claim_that_ran_out_shows_as_free_to_others_but_not_to_its_holder() -> None:
    ran_out = item(claimed_by="alice", claimed_at=NOW - 400, claim_expires=NOW - 100)

    assert item_view(ran_out, "bob", NOW)["claimed_by"] is None
    mine = item_view(ran_out, "alice", NOW)
    assert (mine["claimed_by"], mine["yours"]) == ("alice", True)
    active = item(claimed_by="alice", claimed_at=NOW - 10, claim_expires=NOW + 290)
    assert item_view(active, "bob", NOW)["claimed_by"] == "alice"
    assert item_view(active, "bob", NOW)["claim_expires"] == NOW + 290


def test_an_image_url_is_shown_without_credentials_query_or_fragment() -> None:
    shown = item_view(item(), "alice", NOW)["image"]

    assert shown == {"kind": "url", "where": "https://images.example/a.png"}


def test_an_unreadable_record_shows_as_such() -> None:
    shown = item_view(item(review=None), "alice", NOW)

    assert shown["unreadable"] and shown["image"] == {"kind": "unreadable"}
    assert shown["labels"] == [] and shown["activation_reasons"] == []


def test_model_labels_come_most_confident_first() -> None:
    review = item().review
    assert [label["name"] for label in model_labels(review)] == ["Violence", "Weapons"]


def test_the_taxonomy_tree_holds_every_v7_label_once() -> None:
    def names(nodes: list[dict]) -> list[str]:
        return [n for node in nodes for n in (node["name"], *names(node["children"]))]

    assert sorted(names(taxonomy_tree())) == sorted(V7_LABELS)
