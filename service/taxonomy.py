"""Rekognition's moderation taxonomy, version 7.

Policies and activation conditions name labels exactly as Rekognition returns them (case
included); checking names against this table at start-up turns a typo, or a v6 name that v7 never
returns, into an error instead of a rule that silently never fires.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class TaxonomyLabel:
    name: str
    parent: str  # "" at the top level, as Rekognition's ParentName
    level: int  # 1-3, as Rekognition's TaxonomyLevel


_TREE: Final[dict[str, dict[str, tuple[str, ...]]]] = {
    "Explicit": {
        "Explicit Nudity": (
            "Exposed Male Genitalia",
            "Exposed Female Genitalia",
            "Exposed Buttocks or Anus",
            "Exposed Female Nipple",
        ),
        "Explicit Sexual Activity": (),
        "Sex Toys": (),
    },
    "Non-Explicit Nudity of Intimate parts and Kissing": {
        "Non-Explicit Nudity": (
            "Bare Back",
            "Exposed Male Nipple",
            "Partially Exposed Buttocks",
            "Partially Exposed Female Breast",
            "Implied Nudity",
        ),
        "Obstructed Intimate Parts": ("Obstructed Female Nipple", "Obstructed Male Genitalia"),
        "Kissing on the Lips": (),
    },
    "Swimwear or Underwear": {
        "Female Swimwear or Underwear": (),
        "Male Swimwear or Underwear": (),
    },
    "Violence": {
        "Weapons": (),
        "Graphic Violence": (
            "Weapon Violence",
            "Physical Violence",
            "Self-Harm",
            "Blood & Gore",
            "Explosions and Blasts",
        ),
    },
    "Visually Disturbing": {
        "Death and Emaciation": ("Emaciated Bodies", "Corpses"),
        "Crashes": ("Air Crash",),
    },
    "Drugs & Tobacco": {
        "Products": ("Pills",),
        "Drugs & Tobacco Paraphernalia & Use": ("Smoking",),
    },
    "Alcohol": {
        "Alcohol Use": ("Drinking",),
        "Alcoholic Beverages": (),
    },
    "Rude Gestures": {"Middle Finger": ()},
    "Gambling": {},
    "Hate Symbols": {"Nazi Party": (), "White Supremacy": (), "Extremist": ()},
}


def _flatten() -> dict[str, TaxonomyLabel]:
    labels: dict[str, TaxonomyLabel] = {}
    for top, children in _TREE.items():
        labels[top] = TaxonomyLabel(top, "", 1)
        for child, grandchildren in children.items():
            labels[child] = TaxonomyLabel(child, top, 2)
            for grandchild in grandchildren:
                labels[grandchild] = TaxonomyLabel(grandchild, child, 3)
    return labels


V7_LABELS: Final[dict[str, TaxonomyLabel]] = _flatten()
TOP_LEVEL_CATEGORIES: Final[tuple[str, ...]] = tuple(_TREE)


def is_v7_label(name: str) -> bool:
    return name in V7_LABELS


def top_level_of(name: str) -> str | None:
    """The level-1 category a label belongs to, or None for a name outside v7."""
    label = V7_LABELS.get(name)
    while label is not None and label.parent:
        label = V7_LABELS.get(label.parent)
    return label.name if label is not None else None


def ancestors_of(name: str) -> tuple[str, ...]:
    """The label itself followed by its parents up to level 1 (empty for unknown names)."""
    chain: list[str] = []
    label = V7_LABELS.get(name)
    while label is not None:
        chain.append(label.name)
        label = V7_LABELS.get(label.parent) if label.parent else None
    return tuple(chain)
