"""A2I activation conditions: validation with located errors, evaluation, A2I's results format."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.activation import (
    MAX_JSON_CHARS,
    ActivationConditions,
    ConfidenceCheck,
    LogicalCondition,
    SamplingCondition,
    evaluate,
    parse_conditions,
    parse_conditions_obj,
    sampling_draw,
)
from service.errors import ConfigError
from service.messages import Label

SOURCE = "A2I_ACTIVATION_CONDITIONS"
COMPARATORS = (
    "ConfidenceEquals",
    "ConfidenceLessThan",
    "ConfidenceLessThanEquals",
    "ConfidenceGreaterThan",
    "ConfidenceGreaterThanEquals",
)


def check(name: str = "*", **comparator: float) -> dict[str, Any]:
    if not comparator:
        comparator = {"ConfidenceGreaterThan": 50}
    return {
        "ConditionType": "ModerationLabelConfidenceCheck",
        "ConditionParameters": {"ModerationLabelName": name, **comparator},
    }


def sample(percentage: Any) -> dict[str, Any]:
    return {
        "ConditionType": "Sampling",
        "ConditionParameters": {"RandomSamplingPercentage": percentage},
    }


def doc(*members: Any) -> dict[str, Any]:
    return {"Conditions": list(members)}


def label(name: str, confidence: float) -> Label:
    return Label(name=name, parent="", confidence=confidence, taxonomy_level=1)


def refused(document: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_conditions_obj(document, source=SOURCE)
    assert info.value.variable == SOURCE
    return info.value.problem


def refused_text(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_conditions(text, source=SOURCE)
    assert info.value.variable == SOURCE
    return info.value.problem


def strip_results(node: Any) -> Any:
    """The results with every EvaluationResult removed: what was configured."""
    if isinstance(node, dict):
        return {
            key: strip_results(value) for key, value in node.items() if key != "EvaluationResult"
        }
    if isinstance(node, list):
        return [strip_results(item) for item in node]
    return node


# The reference's example (docs/reference a2i-rekognition.md): any label under 60 always goes to
# review; any label over 90 goes in 5% of cases.
REFERENCE_EXAMPLE = """
{"Conditions": [{"Or": [{"ConditionType": "ModerationLabelConfidenceCheck",
  "ConditionParameters": {"ModerationLabelName": "*", "ConfidenceLessThan": 60}},
  {"And": [{"ConditionType": "Sampling", "ConditionParameters": {"RandomSamplingPercentage": 5}},
  {"ConditionType": "ModerationLabelConfidenceCheck", "ConditionParameters":
  {"ModerationLabelName": "*", "ConfidenceGreaterThan": 90}}]}]}]}
"""
SAMPLING_PATH = "Conditions[0].Or[1].And[0]"


# ------------------------------------------------------------------------------------ validation

NESTED_TOO_DEEP = doc({"Or": [check(), {"And": [check(), {"Or": [check(), check()]}]}]})

INVALID = [
    pytest.param([], "top level: expected an object", id="not an object"),
    pytest.param({}, "top level: missing 'Conditions'", id="missing Conditions"),
    pytest.param(
        {"Conditions": [check()], "Version": 1},
        "top level: unknown key 'Version'",
        id="unknown top key",
    ),
    pytest.param({"conditions": [check()]}, "did you mean 'Conditions'?", id="lowercase top key"),
    pytest.param(
        {"Conditions": check()}, "Conditions: expected an array", id="Conditions not array"
    ),
    pytest.param({"Conditions": []}, "Conditions: is empty", id="Conditions empty"),
    pytest.param(
        doc(check(), "Sampling"),
        "Conditions[1]: expected a condition object",
        id="member not object",
    ),
    pytest.param(doc({}), "Conditions[0]: is an empty object", id="member empty"),
    pytest.param(
        doc({"And": [check(), check()], "Or": [check(), check()]}),
        "Conditions[0]: has both 'And' and 'Or'",
        id="And and Or",
    ),
    pytest.param(
        doc({"Or": [check(), check()], "ConditionType": "Sampling"}),
        "Conditions[0]: an 'Or' object must have no other keys, found 'ConditionType'",
        id="Or with ConditionType",
    ),
    pytest.param(
        doc({"And": check()}),
        "Conditions[0].And: expected an array of at least 2",
        id="And not array",
    ),
    pytest.param(
        doc({"And": [check()]}),
        "Conditions[0].And: needs at least 2 conditions, got 1",
        id="And with one",
    ),
    pytest.param(
        doc({"Or": []}), "Conditions[0].Or: needs at least 2 conditions, got 0", id="Or empty"
    ),
    pytest.param(
        doc({"Or": [check(), {"And": [check(), 7]}]}),
        "Conditions[0].Or[1].And[1]: expected a condition object",
        id="nested member bad",
    ),
    pytest.param(
        NESTED_TOO_DEEP,
        "Conditions[0].Or[1].And[1].Or: too deeply nested (Or inside And inside Or)",
        id="three levels",
    ),
    pytest.param(
        doc({"and": [check(), check()]}),
        "Conditions[0]: unknown key 'and' (did you mean 'And'?",
        id="lowercase and",
    ),
    pytest.param(
        doc({"ConditionParameters": {}}),
        "Conditions[0]: missing 'ConditionType'",
        id="no ConditionType",
    ),
    pytest.param(
        doc({"ConditionType": 1, "ConditionParameters": {}}),
        "Conditions[0].ConditionType: expected a string, got number 1",
        id="ConditionType number",
    ),
    pytest.param(
        doc({"ConditionType": "LabelCheck", "ConditionParameters": {}}),
        "Conditions[0].ConditionType: unknown condition type 'LabelCheck'",
        id="unknown type",
    ),
    pytest.param(
        doc({"ConditionType": "sampling", "ConditionParameters": {}}),
        "did you mean 'Sampling'? names are case-sensitive",
        id="type wrong case",
    ),
    pytest.param(
        doc({"ConditionType": "ImportantFormKeyConfidenceCheck", "ConditionParameters": {}}),
        "Conditions[0].ConditionType: 'ImportantFormKeyConfidenceCheck' is an Amazon Textract",
        id="textract confidence",
    ),
    pytest.param(
        doc({"Or": [check(), {"ConditionType": "MissingImportantFormKey"}]}),
        "Conditions[0].Or[1].ConditionType: 'MissingImportantFormKey' is an Amazon Textract",
        id="textract missing key",
    ),
    pytest.param(
        doc({"ConditionType": "Sampling"}),
        "Conditions[0]: missing 'ConditionParameters'",
        id="no parameters",
    ),
    pytest.param(
        doc({"ConditionType": "Sampling", "ConditionParameters": [5]}),
        "Conditions[0].ConditionParameters: expected an object, got an array",
        id="parameters not object",
    ),
    pytest.param(
        doc({**check(), "Comment": "x"}),
        "Conditions[0]: unknown key 'Comment'",
        id="unknown simple key",
    ),
    pytest.param(
        doc(
            {
                "ConditionType": "ModerationLabelConfidenceCheck",
                "ConditionParameters": {"ConfidenceLessThan": 5},
            }
        ),
        "Conditions[0].ConditionParameters: missing 'ModerationLabelName'",
        id="no label name",
    ),
    pytest.param(
        doc(check(3)),
        "Conditions[0].ConditionParameters.ModerationLabelName: expected a label name",
        id="label name number",
    ),
    pytest.param(
        doc(check("")),
        "Conditions[0].ConditionParameters.ModerationLabelName: expected a label name",
        id="label name empty",
    ),
    pytest.param(
        doc(
            {
                "ConditionType": "ModerationLabelConfidenceCheck",
                "ConditionParameters": {"ModerationLabelName": "*"},
            }
        ),
        "Conditions[0].ConditionParameters: missing a comparator",
        id="no comparator",
    ),
    pytest.param(
        doc({"And": [check(), check(ConfidenceLessThan=99, ConfidenceGreaterThan=90)]}),
        "Conditions[0].And[1].ConditionParameters: has 'ConfidenceLessThan', 'ConfidenceGreater",
        id="two comparators",
    ),
    pytest.param(
        doc(check(ConfidenceLessThan="60")),
        "Conditions[0].ConditionParameters.ConfidenceLessThan: expected a confidence from 0 to 100",
        id="comparator string",
    ),
    pytest.param(
        doc(check(ConfidenceEquals=True)),
        "Conditions[0].ConditionParameters.ConfidenceEquals: expected a confidence",
        id="comparator bool",
    ),
    pytest.param(
        doc(check(ConfidenceGreaterThanEquals=-1)),
        "ConditionParameters.ConfidenceGreaterThanEquals: expected a confidence from 0 to 100, got",
        id="comparator negative",
    ),
    pytest.param(
        doc(check(ConfidenceLessThanEquals=100.5)),
        "ConditionParameters.ConfidenceLessThanEquals: expected a confidence from 0 to 100, got 10",
        id="comparator over 100",
    ),
    pytest.param(
        doc(check(ConfidenceLessThan=math.nan)), "not representable as JSON", id="comparator NaN"
    ),
    pytest.param(
        doc(check(ConfidenceLessThen=50)),
        "Conditions[0].ConditionParameters: unknown key 'ConfidenceLessThen' (did you mean 'Confi",
        id="comparator typo",
    ),
    pytest.param(
        doc(check(KeyValueBlockConfidenceLessThan=50)),
        "unknown key 'KeyValueBlockConfidenceLessThan'",
        id="textract comparator",
    ),
    pytest.param(
        doc({"ConditionType": "Sampling", "ConditionParameters": {}}),
        "Conditions[0].ConditionParameters: missing 'RandomSamplingPercentage'",
        id="sampling missing",
    ),
    pytest.param(
        doc(sample("5%")),
        "Conditions[0].ConditionParameters.RandomSamplingPercentage: expected a number from 0.01",
        id="sampling string",
    ),
    pytest.param(
        doc(sample(0)),
        "RandomSamplingPercentage: expected a number from 0.01 to 100, got 0",
        id="sampling zero",
    ),
    pytest.param(
        doc(sample(0.001)),
        "RandomSamplingPercentage: expected a number from 0.01 to 100, got 0.001",
        id="sampling too fine",
    ),
    pytest.param(
        doc(sample(101)),
        "RandomSamplingPercentage: expected a number from 0.01 to 100, got 101",
        id="sampling over 100",
    ),
    pytest.param(
        doc(sample(None)),
        "RandomSamplingPercentage: expected a number from 0.01 to 100, got None",
        id="sampling null",
    ),
    pytest.param(
        doc(
            {
                "ConditionType": "Sampling",
                "ConditionParameters": {"RandomSamplingPercentage": 5, "Seed": 1},
            }
        ),
        "Conditions[0].ConditionParameters: unknown key 'Seed'",
        id="sampling unknown key",
    ),
    pytest.param({"Conditions": {1, 2}}, "not representable as JSON", id="not JSON at all"),
]


@pytest.mark.parametrize(("document", "expected"), INVALID)
def test_invalid_conditions_are_refused_with_their_location(document: Any, expected: str) -> None:
    assert expected in refused(document)


@pytest.mark.parametrize(
    ("document", "expected"),
    [case for case in INVALID if case.id not in ("comparator NaN", "not JSON at all")],
)
def test_the_same_errors_from_json_text(document: Any, expected: str) -> None:
    assert expected in refused_text(json.dumps(document, indent=2))


SAMPLING_TEXT = (
    '{"Conditions": [{"ConditionType": "Sampling", '
    '"ConditionParameters": {"RandomSamplingPercentage": %s}}]}'
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"Conditions": [\n  {"ConditionType": "Sampling",}\n]}',
            "invalid JSON at line 2, column 32",
        ),
        ("", "invalid JSON at line 1, column 1"),
        (SAMPLING_TEXT % "NaN", "NaN is not a JSON number"),
        (SAMPLING_TEXT % "1e999", "1e999 is too large for a number"),
        (
            '{"Conditions": [], "Conditions": [{"ConditionType": "Sampling"}]}',
            "duplicate key 'Conditions'",
        ),
        ("[" * 5000 + "]" * 5000, "invalid JSON: nested too deeply"),
    ],
    ids=["trailing comma", "empty", "NaN", "overflow", "duplicate key", "deep"],
)
def test_json_text_problems(text: str, expected: str) -> None:
    assert expected in refused_text(text)


def test_the_size_limit_counts_the_whole_text() -> None:
    padding = " " * (MAX_JSON_CHARS - len(json.dumps(doc(sample(5)))))
    parse_conditions(json.dumps(doc(sample(5))) + padding, source=SOURCE)  # exactly at the limit
    assert "10,241 characters; A2I allows at most 10,240" in refused_text(
        json.dumps(doc(sample(5))) + padding + " "
    )


def test_the_size_limit_applies_to_parsed_objects_as_compact_json() -> None:
    many = doc(*[check("Violence", ConfidenceGreaterThan=50)] * 200)
    assert "as compact JSON; A2I allows at most 10,240" in refused(many)


def test_parsed_model() -> None:
    parsed = parse_conditions(REFERENCE_EXAMPLE, source=SOURCE)
    assert parsed == ActivationConditions(
        conditions=(
            LogicalCondition(
                path="Conditions[0]",
                operator="Or",
                members=(
                    ConfidenceCheck("Conditions[0].Or[0]", "*", "ConfidenceLessThan", 60),
                    LogicalCondition(
                        path="Conditions[0].Or[1]",
                        operator="And",
                        members=(
                            SamplingCondition(SAMPLING_PATH, 5),
                            ConfidenceCheck(
                                "Conditions[0].Or[1].And[1]", "*", "ConfidenceGreaterThan", 90
                            ),
                        ),
                    ),
                ),
            ),
        ),
        warnings=[],
    )


def test_two_levels_of_nesting_are_allowed_both_ways() -> None:
    parse_conditions_obj(doc({"Or": [check(), {"And": [check(), sample(5)]}]}), source=SOURCE)
    parse_conditions_obj(doc({"And": [sample(5), {"Or": [check(), check()]}]}), source=SOURCE)
    parse_conditions_obj(doc({"Or": [{"Or": [check(), check()]}, check()]}), source=SOURCE)


# -------------------------------------------------------------------------------------- warnings


def test_names_outside_taxonomy_v7_are_warnings_not_errors() -> None:
    parsed = parse_conditions_obj(
        doc(
            check("Suggestive", ConfidenceLessThan=98),
            {"And": [check("violence", ConfidenceGreaterThan=50), check("Violence")]},
            check("*"),
        ),
        source=SOURCE,
    )
    assert len(parsed.warnings) == 2
    first, second = parsed.warnings
    assert first.startswith("Conditions[0].ConditionParameters.ModerationLabelName: 'Suggestive'")
    assert "not a Rekognition taxonomy v7 label" in first
    assert "never matches v7 output" in first
    assert "'Suggestive'" in first
    assert second.startswith("Conditions[1].And[0].ConditionParameters.ModerationLabelName")
    assert "did you mean 'Violence'? names are case-sensitive" in second


def test_comparisons_that_can_never_be_true_are_warned_about() -> None:
    parsed = parse_conditions_obj(
        doc(check(ConfidenceLessThan=0), check(ConfidenceGreaterThan=100)), source=SOURCE
    )
    assert [warning.split(":")[0] for warning in parsed.warnings] == [
        "Conditions[0].ConditionParameters",
        "Conditions[1].ConditionParameters",
    ]
    assert all("can never be true" in warning for warning in parsed.warnings)


# ------------------------------------------------------------------------------------ evaluation


def test_reference_example_low_confidence_goes_to_review() -> None:
    parsed = parse_conditions(REFERENCE_EXAMPLE, source=SOURCE)
    result = evaluate(parsed, [label("Explicit Nudity", 55.123)], request_key="request-1")
    assert result.activated
    assert result.reasons == ["Explicit Nudity confidence 55.1 < 60 (any label)"]
    assert result.results == {
        "Conditions": [
            {
                "EvaluationResult": True,
                "Or": [
                    {
                        "ConditionParameters": {
                            "ConfidenceLessThan": 60,
                            "ModerationLabelName": "*",
                        },
                        "ConditionType": "ModerationLabelConfidenceCheck",
                        "EvaluationResult": True,
                    },
                    {
                        "And": [
                            {
                                "ConditionParameters": {"RandomSamplingPercentage": 5},
                                "ConditionType": "Sampling",
                                "EvaluationResult": sampling_draw("request-1", SAMPLING_PATH) < 5,
                            },
                            {
                                "ConditionParameters": {
                                    "ConfidenceGreaterThan": 90,
                                    "ModerationLabelName": "*",
                                },
                                "ConditionType": "ModerationLabelConfidenceCheck",
                                "EvaluationResult": False,
                            },
                        ],
                        "EvaluationResult": False,
                    },
                ],
            }
        ]
    }


def test_reference_example_no_labels_means_no_review() -> None:
    """'*' ConfidenceLessThan 60 is false without labels: there is no inference to compare."""
    parsed = parse_conditions(REFERENCE_EXAMPLE, source=SOURCE)
    for key in (f"request-{n}" for n in range(200)):
        result = evaluate(parsed, [], request_key=key)
        assert not result.activated
        assert result.reasons == []


def test_reference_example_high_confidence_is_sampled() -> None:
    parsed = parse_conditions(REFERENCE_EXAMPLE, source=SOURCE)
    keys = [f"image-{n}" for n in range(400)]
    chosen = [key for key in keys if sampling_draw(key, SAMPLING_PATH) < 5]
    assert 5 <= len(chosen) <= 40  # about 20
    for key in keys:
        result = evaluate(parsed, [label("Weapons", 97.5)], request_key=key)
        assert result.activated == (key in chosen)
        if result.activated:
            draw = sampling_draw(key, SAMPLING_PATH)
            assert result.reasons[1] == "Weapons confidence 97.5 > 90 (any label)"
            shown = re.fullmatch(r"sampled at 5% \(draw ([0-9.]+) < 5\)", result.reasons[0])
            assert shown is not None
            assert float(shown[1]) < 5
            assert abs(float(shown[1]) - draw) < 0.1


def test_aws_output_data_example_is_reproduced() -> None:
    """AWS's Rekognition output.json example: same conditions and labels give the same results."""
    conditions = doc(
        {
            "Or": [
                check("Suggestive", ConfidenceLessThan=98),
                check("Female Swimwear Or Underwear", ConfidenceGreaterThan=98),
            ]
        }
    )
    parsed = parse_conditions_obj(conditions, source=SOURCE)
    assert len(parsed.warnings) == 2  # both are v6 names (v7 says "Female Swimwear or Underwear")
    result = evaluate(parsed, [label("Suggestive", 96.7122802734375)], request_key="k")
    assert result.results_json() == (
        '{"Conditions":[{"EvaluationResult":true,"Or":['
        '{"ConditionParameters":{"ConfidenceLessThan":98,"ModerationLabelName":"Suggestive"},'
        '"ConditionType":"ModerationLabelConfidenceCheck","EvaluationResult":true},'
        '{"ConditionParameters":{"ConfidenceGreaterThan":98,'
        '"ModerationLabelName":"Female Swimwear Or Underwear"},'
        '"ConditionType":"ModerationLabelConfidenceCheck","EvaluationResult":false}]}]}'
    )
    assert json.loads(result.results_json()) == result.results


@pytest.mark.parametrize(
    ("comparator", "threshold", "confidence", "expected", "reason"),
    [
        ("ConfidenceLessThan", 70, 62.13, True, "Explicit Nudity confidence 62.1 < 70"),
        ("ConfidenceLessThan", 70, 70.0, False, None),
        ("ConfidenceLessThanEquals", 70, 70.0, True, "Explicit Nudity confidence 70.0 <= 70"),
        ("ConfidenceGreaterThan", 70, 70.04, True, "Explicit Nudity confidence 70.04 > 70"),
        ("ConfidenceGreaterThan", 70, 70.0, False, None),
        ("ConfidenceGreaterThanEquals", 70.5, 70.5, True,
         "Explicit Nudity confidence 70.5 >= 70.5"),
        ("ConfidenceEquals", 96.7122802734375, 96.7122802734375, True,
         "Explicit Nudity confidence 96.7122802734375 = 96.7122802734375"),
        ("ConfidenceEquals", 96.7, 96.7122802734375, False, None),
    ],
)  # fmt: skip
def test_comparators(
    comparator: str, threshold: float, confidence: float, expected: bool, reason: str | None
) -> None:
    parsed = parse_conditions_obj(
        doc(check("Explicit Nudity", **{comparator: threshold})), source=SOURCE
    )
    result = evaluate(parsed, [label("Explicit Nudity", confidence)], request_key="k")
    assert result.activated is expected
    assert result.reasons == ([reason] if reason else [])


def test_a_named_check_only_looks_at_that_exact_name() -> None:
    parsed = parse_conditions_obj(doc(check("Violence", ConfidenceLessThan=80)), source=SOURCE)
    assert not evaluate(parsed, [label("Graphic Violence", 60.0)], request_key="k").activated
    assert not evaluate(parsed, [label("violence", 60.0)], request_key="k").activated
    assert not evaluate(parsed, [], request_key="k").activated  # absent label: no inference
    both = [label("Weapons", 90.0), label("Violence", 60.0)]
    assert evaluate(parsed, both, request_key="k").reasons == ["Violence confidence 60.0 < 80"]


def test_a_false_and_gives_no_reasons_even_when_a_member_is_true() -> None:
    parsed = parse_conditions_obj(
        doc({"And": [check("Violence", ConfidenceLessThan=80), check("Weapons")]}), source=SOURCE
    )
    result = evaluate(parsed, [label("Violence", 60.0)], request_key="k")
    assert not result.activated
    assert result.reasons == []
    assert [node["EvaluationResult"] for node in result.results["Conditions"][0]["And"]] == [
        True,
        False,
    ]


def test_every_condition_is_evaluated_without_short_circuit() -> None:
    parsed = parse_conditions_obj(
        doc(check("Violence"), {"Or": [check("Violence"), check("Weapons")]}), source=SOURCE
    )
    result = evaluate(parsed, [label("Violence", 90.0), label("Weapons", 91.0)], request_key="k")
    assert [node["EvaluationResult"] for node in result.results["Conditions"]] == [True, True]
    assert all(node["EvaluationResult"] for node in result.results["Conditions"][1]["Or"])
    # the same label matching twice is explained once
    assert result.reasons == ["Violence confidence 90.0 > 50", "Weapons confidence 91.0 > 50"]


def test_numbers_are_reported_as_configured() -> None:
    parsed = parse_conditions('{"Conditions":[' + json.dumps(sample(100.0)) + "]}", source=SOURCE)
    result = evaluate(parsed, [], request_key="k")
    assert result.activated  # 100% always samples
    assert '"RandomSamplingPercentage":100.0' in result.results_json()
    assert result.reasons[0].startswith("sampled at 100% (draw ")


def test_sampling_is_independent_per_condition_path() -> None:
    parsed = parse_conditions_obj(doc({"And": [sample(50), sample(50)]}), source=SOURCE)
    keys = [f"key-{n}" for n in range(4000)]
    rate = sum(evaluate(parsed, [], request_key=key).activated for key in keys) / len(keys)
    assert 0.22 <= rate <= 0.28  # 25% if independent, 50% if both drew the same number


def test_sampling_draws_are_finer_than_a_hundredth() -> None:
    draws = [sampling_draw(f"k{n}", "Conditions[0]") for n in range(1000)]
    assert all(0 <= draw < 100 for draw in draws)
    assert any(round(draw * 100) != draw * 100 for draw in draws)
    assert sampling_draw("k1", "Conditions[0]") != sampling_draw("k1", "Conditions[1]")


# ------------------------------------------------------------------------------ property tests

NAMES = ("*", "Violence", "Weapons", "Explicit Nudity", "Gambling")
numbers = st.one_of(st.integers(0, 100), st.floats(0, 100, allow_nan=False))
confidences = st.floats(0, 100, allow_nan=False)
labels_strategy = st.lists(st.builds(label, st.sampled_from(NAMES[1:]), confidences), max_size=6)


@st.composite
def leaves(draw: st.DrawFn, *, sampling: bool = True) -> dict[str, Any]:
    if sampling and draw(st.integers(0, 4)) == 0:
        return sample(draw(st.one_of(st.integers(1, 100), st.floats(0.01, 100))))
    comparator = draw(st.sampled_from(COMPARATORS))
    return check(draw(st.sampled_from(NAMES)), **{comparator: draw(numbers)})


def trees(depth: int, *, sampling: bool = True) -> st.SearchStrategy[dict[str, Any]]:
    """A condition with at most ``depth`` levels of And/Or."""
    leaf = leaves(sampling=sampling)
    if depth == 0:
        return leaf
    inner = st.lists(trees(depth - 1, sampling=sampling), min_size=2, max_size=3)
    return st.one_of(
        leaf,
        inner.map(lambda members: {"And": members}),
        inner.map(lambda members: {"Or": members}),
    )


documents = st.lists(trees(2), min_size=1, max_size=3).map(lambda members: doc(*members))
request_keys = st.text(min_size=0, max_size=40)


@given(documents, labels_strategy, request_keys)
def test_evaluation_is_deterministic(
    document: dict[str, Any], labels: list[Label], key: str
) -> None:
    parsed = parse_conditions_obj(document, source=SOURCE)
    reparsed = parse_conditions(json.dumps(document), source=SOURCE)
    first = evaluate(parsed, labels, request_key=key)
    assert evaluate(parsed, labels, request_key=key) == first
    assert evaluate(reparsed, list(labels), request_key=key) == first
    assert evaluate(parsed, labels, request_key=key).results_json() == first.results_json()


@settings(max_examples=8, derandomize=True, deadline=None)
@given(
    st.sampled_from([1, 2.5, 5, 10, 33.3, 50, 75, 99]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", max_size=12),
)
def test_sampling_rate_matches_the_percentage(percentage: float, prefix: str) -> None:
    parsed = parse_conditions_obj(doc(sample(percentage)), source=SOURCE)
    n = 5000
    hits = sum(evaluate(parsed, [], request_key=f"{prefix}/{i}").activated for i in range(n))
    p = percentage / 100
    assert abs(hits - n * p) <= 3 * math.sqrt(n * p * (1 - p)) + 1


def _truth(node: dict[str, Any]) -> bool:
    return bool(node["EvaluationResult"])


@given(documents, labels_strategy, request_keys)
def test_and_is_all_or_is_any_everywhere(
    document: dict[str, Any], labels: list[Label], key: str
) -> None:
    result = evaluate(parse_conditions_obj(document, source=SOURCE), labels, request_key=key)

    def consistent(node: dict[str, Any]) -> None:
        if "And" in node:
            assert _truth(node) == all(_truth(member) for member in node["And"])
            for member in node["And"]:
                consistent(member)
        elif "Or" in node:
            assert _truth(node) == any(_truth(member) for member in node["Or"])
            for member in node["Or"]:
                consistent(member)

    for node in result.results["Conditions"]:
        consistent(node)
    assert result.activated == any(_truth(node) for node in result.results["Conditions"])
    assert bool(result.reasons) == result.activated


@given(st.lists(leaves(sampling=False), min_size=2, max_size=3), labels_strategy)
def test_combining_checks_combines_their_separate_results(
    members: list[dict[str, Any]], labels: list[Label]
) -> None:
    alone = [
        evaluate(parse_conditions_obj(doc(m), source=SOURCE), labels, request_key="k").activated
        for m in members
    ]
    for op, combine in (("And", all), ("Or", any)):
        parsed = parse_conditions_obj(doc({op: members}), source=SOURCE)
        assert evaluate(parsed, labels, request_key="k").activated == combine(alone)
    # top-level members behave like an Or
    together = parse_conditions_obj(doc(*members), source=SOURCE)
    assert evaluate(together, labels, request_key="k").activated == any(alone)


@given(numbers, labels_strategy)
def test_any_label_greater_than_is_the_maximum_confidence(
    threshold: float, labels: list[Label]
) -> None:
    parsed = parse_conditions_obj(doc(check("*", ConfidenceGreaterThan=threshold)), source=SOURCE)
    expected = max((lab.confidence for lab in labels), default=-math.inf) > threshold
    assert evaluate(parsed, labels, request_key="k").activated == expected


@given(documents, labels_strategy, request_keys)
def test_results_mirror_the_configured_structure(
    document: dict[str, Any], labels: list[Label], key: str
) -> None:
    result = evaluate(parse_conditions_obj(document, source=SOURCE), labels, request_key=key)
    assert strip_results(result.results) == document
    assert json.loads(result.results_json()) == result.results
    assert "EvaluationResult" not in result.results  # none at the top level, as in AWS's output

    def every_node_has_a_boolean(node: dict[str, Any]) -> None:
        assert isinstance(node["EvaluationResult"], bool)
        for member in node.get("And", node.get("Or", [])):
            every_node_has_a_boolean(member)

    for node in result.results["Conditions"]:
        every_node_has_a_boolean(node)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(
            ["Conditions", "And", "Or", "ConditionType", "ConditionParameters",
             "ModerationLabelName", "RandomSamplingPercentage", *COMPARATORS, "x"]
        ) | st.text(max_size=8),
        children,
        max_size=4,
    ),
    max_leaves=30,
)  # fmt: skip
interesting = st.one_of(
    json_values,
    json_values.map(lambda value: {"Conditions": value}),
    json_values.map(lambda value: {"Conditions": [value]}),
    st.lists(json_values, max_size=3).map(lambda members: {"Conditions": [{"Or": members}]}),
    st.builds(
        lambda kind, params: doc({"ConditionType": kind, "ConditionParameters": params}),
        st.sampled_from(["Sampling", "ModerationLabelConfidenceCheck", "MissingImportantFormKey"]),
        json_values,
    ),
)


def outcome(parse: Callable[[], ActivationConditions]) -> ActivationConditions | ConfigError:
    """The parse result or its ConfigError; any other exception escapes and fails the test."""
    try:
        return parse()
    except ConfigError as exc:
        return exc


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(interesting)
def test_parsing_anything_raises_only_config_error(value: Any) -> None:
    for result in (
        outcome(lambda: parse_conditions_obj(value, source=SOURCE)),
        outcome(lambda: parse_conditions(json.dumps(value), source=SOURCE)),
    ):
        if isinstance(result, ConfigError):
            assert result.variable == SOURCE
            assert result.problem
        else:
            evaluate(result, [label("Violence", 75.0)], request_key="k")


@given(st.text(max_size=200))
def test_parsing_any_text_raises_only_config_error(text: str) -> None:
    result = outcome(lambda: parse_conditions(text, source=SOURCE))
    assert isinstance(result, ActivationConditions) or result.variable == SOURCE
