"""The routing policy: confidence thresholds, with per-label overrides, loaded from a file.

An override names a v7 label exactly and applies to that label and to every label under it that
has no override of its own (the nearest override wins). A name outside v7 is a start-up error,
because a rule that can never match is a silent hole in moderation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from service.errors import ConfigError
from service.taxonomy import ancestors_of, is_v7_label


@dataclass(frozen=True, slots=True)
class Thresholds:
    """``None`` disables a step: ``reject=None`` never rejects on this label."""

    reject: float | None
    review: float | None


@dataclass(frozen=True)
class RoutingPolicy:
    default: Thresholds
    overrides: Mapping[str, Thresholds] = field(default_factory=dict)

    def thresholds_for(self, label: str) -> tuple[Thresholds, str]:
        """The thresholds that govern ``label`` and the rule name that supplied them."""
        for name in ancestors_of(label):
            if name in self.overrides:
                return self.overrides[name], f"label:{name}"
        return self.default, "default"


def _threshold(value: Any, where: str, source: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise ConfigError(source, f"{where} must be a number from 0 to 100 or null, got {value!r}")
    return float(value)


def _thresholds(spec: Any, where: str, source: str, fallback: Thresholds) -> Thresholds:
    if not isinstance(spec, dict):
        raise ConfigError(source, f"{where} must be an object with 'reject' and/or 'review'")
    unknown = set(spec) - {"reject", "review"}
    if unknown:
        raise ConfigError(source, f"{where} has unknown keys: {', '.join(sorted(unknown))}")
    reject = (
        _threshold(spec["reject"], f"{where}.reject", source)
        if "reject" in spec
        else (fallback.reject)
    )
    review = (
        _threshold(spec["review"], f"{where}.review", source)
        if "review" in spec
        else (fallback.review)
    )
    if reject is not None and review is not None and review > reject:
        raise ConfigError(source, f"{where}: review ({review}) must not exceed reject ({reject})")
    return Thresholds(reject=reject, review=review)


def policy_from_mapping(document: Any, default: Thresholds, source: str) -> RoutingPolicy:
    if not isinstance(document, dict):
        raise ConfigError(source, "the policy must be an object with 'default' and/or 'labels'")
    unknown = set(document) - {"default", "labels"}
    if unknown:
        raise ConfigError(source, f"unknown top-level keys: {', '.join(sorted(unknown))}")
    if "default" in document:
        default = _thresholds(document["default"], "default", source, default)
    labels = document.get("labels") or {}
    if not isinstance(labels, dict):
        raise ConfigError(source, "'labels' must map v7 label names to thresholds")
    for name in labels:
        if not is_v7_label(name):
            raise ConfigError(
                source,
                f"labels.{name!r} is not a Rekognition v7 moderation label "
                "(names are exact and case-sensitive; v6 names such as 'Suggestive' never match)",
            )
    overrides: dict[str, Thresholds] = {}
    policy = RoutingPolicy(default=default, overrides=overrides)
    # Parents first, so a partial override inherits the missing keys from the nearest
    # overridden ancestor, the same rule that decides which override governs a label.
    for name in sorted(labels, key=lambda label: len(ancestors_of(label))):
        inherited, _ = policy.thresholds_for(name)
        overrides[name] = _thresholds(labels[name], f"labels.{name!r}", source, inherited)
    return policy


def load_policy(path: Path | None, default: Thresholds) -> RoutingPolicy:
    """Read a JSON or YAML policy file; without one, the environment's thresholds apply."""
    if path is None:
        return RoutingPolicy(default=default)
    source = f"MODERATION_POLICY_FILE ({path})"
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(source, f"cannot read: {exc}") from exc
    try:
        document = orjson.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(source, f"not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}") from exc
    return policy_from_mapping(document, default, source)
