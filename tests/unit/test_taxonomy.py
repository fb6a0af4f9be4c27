"""The v7 moderation taxonomy table and its lookups."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.taxonomy import (
    TOP_LEVEL_CATEGORIES,
    V7_LABELS,
    ancestors_of,
    is_v7_label,
    top_level_of,
)

V7_NAMES = sorted(V7_LABELS)


def test_top_level_categories_are_the_v7_ten() -> None:
    assert TOP_LEVEL_CATEGORIES == (
        "Explicit",
        "Non-Explicit Nudity of Intimate parts and Kissing",
        "Swimwear or Underwear",
        "Violence",
        "Visually Disturbing",
        "Drugs & Tobacco",
        "Alcohol",
        "Rude Gestures",
        "Gambling",
        "Hate Symbols",
    )


def test_table_is_a_consistent_three_level_tree() -> None:
    for name, label in V7_LABELS.items():
        assert label.name == name
        assert label.level in (1, 2, 3)
        if label.level == 1:
            assert label.parent == ""
            assert name in TOP_LEVEL_CATEGORIES
        else:
            parent = V7_LABELS[label.parent]
            assert parent.level == label.level - 1
    assert sum(label.level == 1 for label in V7_LABELS.values()) == len(TOP_LEVEL_CATEGORIES)


@pytest.mark.parametrize(
    ("name", "parent", "level"),
    [
        ("Explicit", "", 1),
        ("Explicit Nudity", "Explicit", 2),
        ("Exposed Female Nipple", "Explicit Nudity", 3),
        ("Implied Nudity", "Non-Explicit Nudity", 3),
        ("Weapons", "Violence", 2),
        ("Blood & Gore", "Graphic Violence", 3),
        ("Air Crash", "Crashes", 3),
        ("Smoking", "Drugs & Tobacco Paraphernalia & Use", 3),
        ("Drinking", "Alcohol Use", 3),
        ("Middle Finger", "Rude Gestures", 2),
        ("Gambling", "", 1),
        ("Extremist", "Hate Symbols", 2),
    ],
)
def test_known_labels(name: str, parent: str, level: int) -> None:
    label = V7_LABELS[name]
    assert (label.parent, label.level) == (parent, level)
    assert is_v7_label(name)


@pytest.mark.parametrize(
    "name",
    [
        "Suggestive",  # v6
        "Explicit Nudity ",
        "explicit",
        "Graphic Male Nudity",  # v6
        "Visually Disturbing Content",
        "Weapon",
        "",
    ],
)
def test_names_outside_v7(name: str) -> None:
    assert not is_v7_label(name)
    assert top_level_of(name) is None
    assert ancestors_of(name) == ()


@pytest.mark.parametrize(
    ("name", "chain"),
    [
        ("Violence", ("Violence",)),
        ("Weapons", ("Weapons", "Violence")),
        ("Weapon Violence", ("Weapon Violence", "Graphic Violence", "Violence")),
        ("Pills", ("Pills", "Products", "Drugs & Tobacco")),
    ],
)
def test_ancestors_of(name: str, chain: tuple[str, ...]) -> None:
    assert ancestors_of(name) == chain
    assert top_level_of(name) == chain[-1]


@given(st.sampled_from(V7_NAMES))
def test_ancestor_chain_walks_parents_to_level_one(name: str) -> None:
    chain = ancestors_of(name)
    assert chain[0] == name
    assert len(chain) == V7_LABELS[name].level
    for child, parent in itertools.pairwise(chain):
        assert V7_LABELS[child].parent == parent
    assert V7_LABELS[chain[-1]].parent == ""
    assert top_level_of(name) == chain[-1]
