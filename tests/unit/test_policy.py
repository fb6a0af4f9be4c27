"""Routing policy files: JSON and YAML, validation, nearest-ancestor overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from service.errors import ConfigError
from service.policy import RoutingPolicy, Thresholds, load_policy, policy_from_mapping

DEFAULT = Thresholds(reject=80.0, review=50.0)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def refused(document: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        policy_from_mapping(document, DEFAULT, "policy.yaml")
    assert info.value.variable == "policy.yaml"
    return info.value


def test_no_file_uses_the_environment_thresholds() -> None:
    policy = load_policy(None, DEFAULT)
    assert policy == RoutingPolicy(default=DEFAULT)
    assert policy.thresholds_for("Weapons") == (DEFAULT, "default")


def test_json_file(tmp_path: Path) -> None:
    document = {
        "default": {"reject": 90, "review": 60},
        "labels": {"Violence": {"reject": 70}, "Alcohol": {"reject": None, "review": None}},
    }
    path = write(tmp_path, "policy.json", orjson.dumps(document).decode())
    policy = load_policy(path, DEFAULT)
    assert policy.default == Thresholds(90.0, 60.0)
    assert dict(policy.overrides) == {
        "Violence": Thresholds(70.0, 60.0),  # unset keys fall back to the file's default
        "Alcohol": Thresholds(None, None),
    }


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".YAML", ""])
def test_yaml_file(tmp_path: Path, suffix: str) -> None:
    text = """
default:
  reject: 85
labels:
  Weapons:
    reject: 95.5
    review: 40
  Explicit Nudity:
    reject: 60
  Drugs & Tobacco:
    reject: null
"""
    policy = load_policy(write(tmp_path, f"policy{suffix}", text), DEFAULT)
    assert policy.default == Thresholds(85.0, 50.0)
    assert dict(policy.overrides) == {
        "Weapons": Thresholds(95.5, 40.0),
        "Explicit Nudity": Thresholds(60.0, 50.0),
        "Drugs & Tobacco": Thresholds(None, 50.0),
    }


def test_json_suffix_is_parsed_as_json_not_yaml(tmp_path: Path) -> None:
    # Valid YAML, invalid JSON: the .json suffix must pick the strict parser.
    path = write(tmp_path, "policy.json", "default: {reject: 90}\n")
    with pytest.raises(ConfigError) as info:
        load_policy(path, DEFAULT)
    assert str(path) in info.value.variable
    assert "not valid json" in info.value.problem


def test_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "policy.yaml", "default: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_policy(path, DEFAULT)
    assert info.value.variable == f"MODERATION_POLICY_FILE ({path})"
    assert "not valid yaml" in info.value.problem


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        load_policy(path, DEFAULT)
    assert "cannot read" in info.value.problem
    assert str(path) in info.value.variable


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just text\n"])
def test_document_must_be_an_object(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load_policy(write(tmp_path, "policy.yaml", text), DEFAULT)


@pytest.mark.parametrize("name", ["Weapon", "violence", "Graphic Male Nudity", "Nudity"])
def test_unknown_label_name_is_refused_by_name(name: str) -> None:
    error = refused({"labels": {name: {"reject": 90}}})
    assert repr(name) in error.problem


def test_v6_name_suggestive_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "policy.yaml", "labels:\n  Suggestive:\n    reject: 70\n")
    with pytest.raises(ConfigError) as info:
        load_policy(path, DEFAULT)
    assert "'Suggestive'" in info.value.problem
    assert "v7" in info.value.problem


@pytest.mark.parametrize(
    ("document", "in_problem"),
    [
        ({"labels": {"Weapons": {"reject": 40, "review": 60}}}, "must not exceed"),
        ({"labels": {"Weapons": {"reject": 40}}}, "must not exceed"),  # default review is 50
        ({"default": {"review": 90}}, "must not exceed"),  # default reject is 80
        ({"default": {"reject": 70, "review": 71}}, "must not exceed"),
        ({"default": {"reject": 101}}, "from 0 to 100"),
        ({"default": {"review": -1}}, "from 0 to 100"),
        ({"default": {"reject": True}}, "from 0 to 100"),
        ({"default": {"reject": "80"}}, "from 0 to 100"),
        ({"labels": {"Weapons": {"reject": float("nan")}}}, "from 0 to 100"),
        ({"labels": {"Weapons": {"block": 90}}}, "unknown keys: block"),
        ({"labels": {"Weapons": 90}}, "must be an object"),
        ({"default": [80, 50]}, "must be an object"),
        ({"labels": ["Weapons"]}, "'labels' must map"),
        ({"rules": {}}, "unknown top-level keys: rules"),
    ],
)
def test_invalid_documents(document: Any, in_problem: str) -> None:
    assert in_problem in refused(document).problem


@pytest.mark.parametrize(
    "document",
    [
        {"labels": {"Weapons": {"reject": None, "review": 90}}},  # review only: no reject
        {"labels": {"Weapons": {"reject": 30, "review": None}}},
        {"default": {"reject": 50, "review": 50}},  # equal is fine
        {"default": {"reject": 0, "review": 0}},
        {"labels": None},
        {},
    ],
)
def test_valid_edge_documents(document: Any) -> None:
    assert isinstance(policy_from_mapping(document, DEFAULT, "p"), RoutingPolicy)


def test_null_disables_a_step() -> None:
    policy = policy_from_mapping({"labels": {"Alcohol": {"reject": None}}}, DEFAULT, "p")
    thresholds, rule = policy.thresholds_for("Drinking")
    assert thresholds == Thresholds(reject=None, review=50.0)
    assert rule == "label:Alcohol"


def test_nearest_ancestor_override_wins() -> None:
    policy = policy_from_mapping(
        {
            "labels": {
                "Violence": {"reject": 70, "review": 40},
                "Graphic Violence": {"reject": 99, "review": 90},
            }
        },
        DEFAULT,
        "p",
    )
    # Override on the level-1 category applies to a level-2 label under it.
    assert policy.thresholds_for("Weapons") == (Thresholds(70.0, 40.0), "label:Violence")
    assert policy.thresholds_for("Violence") == (Thresholds(70.0, 40.0), "label:Violence")
    # A nearer override (level 2) beats it for everything below it.
    assert policy.thresholds_for("Graphic Violence") == (
        Thresholds(99.0, 90.0),
        "label:Graphic Violence",
    )
    assert policy.thresholds_for("Self-Harm") == (
        Thresholds(99.0, 90.0),
        "label:Graphic Violence",
    )
    # Unrelated and unknown labels keep the default.
    assert policy.thresholds_for("Alcohol") == (DEFAULT, "default")
    assert policy.thresholds_for("Suggestive") == (DEFAULT, "default")


def test_own_override_beats_the_parents() -> None:
    policy = policy_from_mapping(
        {"labels": {"Violence": {"reject": 70}, "Weapons": {"reject": 95, "review": 80}}},
        DEFAULT,
        "p",
    )
    assert policy.thresholds_for("Weapons") == (Thresholds(95.0, 80.0), "label:Weapons")
    assert policy.thresholds_for("Physical Violence") == (
        Thresholds(70.0, 50.0),
        "label:Violence",
    )


def test_file_default_is_the_fallback_for_overrides_whatever_the_key_order(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "p.yaml", "labels:\n  Gambling: {review: 10}\ndefault: {reject: 95}\n")
    policy = load_policy(path, DEFAULT)
    assert policy.overrides["Gambling"] == Thresholds(reject=95.0, review=10.0)


def test_partial_override_inherits_missing_keys_from_the_nearest_overridden_ancestor() -> None:
    document = {
        "default": {"reject": 80, "review": 50},
        "labels": {"Violence": {"reject": 60, "review": 20}, "Weapons": {"reject": 40}},
    }
    policy = policy_from_mapping(document, Thresholds(80, 50), "test")
    # Weapons sets only reject; review comes from Violence (20), not the default (50, > 40).
    assert policy.thresholds_for("Weapons") == (Thresholds(reject=40, review=20), "label:Weapons")
    assert policy.thresholds_for("Graphic Violence") == (Thresholds(60, 20), "label:Violence")
