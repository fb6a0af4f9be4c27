"""Human-loop activation conditions in Amazon A2I's JSON format, for Rekognition moderation.

Teams that already use Amazon Augmented AI (A2I) keep their ``HumanLoopActivationConditions``
unchanged: this module validates that JSON at start-up and decides, for each moderated image,
whether it goes to human review. The code is pure (no I/O, no clock, no global randomness), so the
same labels and the same request key always give the same answer.

What the AWS documentation pins down, and what this module follows:

* Top level ``{"Conditions": [C, ...]}``: a review starts if any member is true. A member is a
  simple condition ``{"ConditionType": ..., "ConditionParameters": {...}}`` or a complex one,
  ``{"And": [...]}`` / ``{"Or": [...]}`` with at least two members. "Up to two levels of nesting are
  supported": the docs' own example nests an ``And`` inside an ``Or``, so two And/Or levels are
  allowed and a third is refused. The JSON string is at most 10,240 characters.
* Rekognition supports two condition types. ``ModerationLabelConfidenceCheck`` has
  ``ModerationLabelName`` (exact and case-sensitive; ``"*"`` means any label) and a comparator;
  ``Sampling`` has ``RandomSamplingPercentage``, from 0.01 to 100. Sampling is deterministic:
  sending the same request again never changes its outcome. ``ImportantFormKeyConfidenceCheck``
  and ``MissingImportantFormKey`` are Textract's, and are refused here.
* A2I evaluates every condition, even after an ``Or`` is already true, and reports every result. Its
  output data (``humanTaskActivationConditionResults`` in ``output.json``) repeats the configured
  conditions with an ``EvaluationResult`` boolean on each simple condition and on each
  ``And``/``Or``. That example has no result at the top level, and its keys are in alphabetical
  order.

Decisions where the documentation says nothing:

* The ``HumanLoopActivationConditionsEvaluationResults`` string in a DetectModerationLabels
  response is documented only as "the result of condition evaluations".
  :meth:`Evaluation.results_json` therefore emits the same object as the documented output data,
  as compact JSON with sorted keys:
  ``{"Conditions":[{"EvaluationResult":true,"Or":[{"ConditionParameters":{"ConfidenceLessThan":60,
  "ModerationLabelName":"*"},"ConditionType":"ModerationLabelConfidenceCheck","EvaluationResult":true},
  ...]}]}``. Numbers are written as configured (``60`` stays ``60``, ``60.0`` stays ``60.0``).
* A check is evaluated only against the labels that were returned. A label Rekognition did not
  return has no confidence to compare, so a check on it is false whatever its comparator. This
  includes ``ConfidenceLessThan``: ``"*"`` with ``ConfidenceLessThan 60`` and no labels is false.
  Rekognition drops labels below ``MinConfidence`` (50 by default), so a "less than" check only sees
  labels from ``MinConfidence`` up.
* ``ConfidenceEquals`` is exact float equality, as the name says. It rarely fires.
* Sampling: SHA-256 of the request key and the condition's JSON path gives a draw in [0, 100) with
  53 bits of resolution. The condition is true if the draw is below the percentage. Including the
  path makes two Sampling conditions independent of each other. It also means that moving a Sampling
  condition within the JSON re-draws every request: the same request keeps the same outcome only
  while the configuration stays the same, which is also how AWS describes it.
* Refused, though the published JSON Schema is looser: unknown keys, a missing
  ``ConditionParameters``, an empty ``Conditions`` list, more than one comparator in a check (use an
  ``And`` of two checks for a range, as AWS's own example does), duplicate JSON keys, and NaN or
  Infinity.
* A label name outside taxonomy v7 is not an error, because the name might still be valid for
  another model version. It produces a warning instead: v6 names such as "Suggestive" never match v7
  output.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, NoReturn

from service.errors import ConfigError
from service.messages import Label
from service.taxonomy import V7_LABELS, is_v7_label

MAX_JSON_CHARS: Final = 10_240
MAX_NESTING: Final = 2  # And/Or levels

CONFIDENCE_CHECK: Final = "ModerationLabelConfidenceCheck"
SAMPLING: Final = "Sampling"
ANY_LABEL: Final = "*"

Comparator = Literal[
    "ConfidenceEquals",
    "ConfidenceLessThan",
    "ConfidenceLessThanEquals",
    "ConfidenceGreaterThan",
    "ConfidenceGreaterThanEquals",
]
Operator = Literal["And", "Or"]
Number = int | float

_COMPARATORS: Final[dict[str, tuple[str, Callable[[float, float], bool]]]] = {
    "ConfidenceEquals": ("=", operator.eq),
    "ConfidenceLessThan": ("<", operator.lt),
    "ConfidenceLessThanEquals": ("<=", operator.le),
    "ConfidenceGreaterThan": (">", operator.gt),
    "ConfidenceGreaterThanEquals": (">=", operator.ge),
}
_COMPARATOR_NAMES: Final[tuple[Comparator, ...]] = (
    "ConfidenceEquals",
    "ConfidenceLessThan",
    "ConfidenceLessThanEquals",
    "ConfidenceGreaterThan",
    "ConfidenceGreaterThanEquals",
)
_OPERATORS: Final[tuple[Operator, ...]] = ("And", "Or")
_TEXTRACT_TYPES: Final = ("ImportantFormKeyConfidenceCheck", "MissingImportantFormKey")
_REKOGNITION_TYPES: Final = (CONFIDENCE_CHECK, SAMPLING)
_SAMPLING_DOMAIN: Final = b"a2i-sampling\x00"


@dataclass(frozen=True, slots=True)
class ConfidenceCheck:
    """``ModerationLabelConfidenceCheck``: true if a returned label (any, for "*") compares true."""

    path: str  # where it sits in the JSON, e.g. "Conditions[0].Or[1]"
    label: str  # exact name, or "*" for any label
    comparator: Comparator
    threshold: Number  # kept as configured so results repeat it unchanged

    def matches(self, confidence: float) -> bool:
        return _COMPARATORS[self.comparator][1](confidence, self.threshold)


@dataclass(frozen=True, slots=True)
class SamplingCondition:
    """``Sampling``: a fixed share of requests, chosen by hashing the request key, not at random."""

    path: str
    percentage: Number  # 0.01-100, kept as configured


@dataclass(frozen=True, slots=True)
class LogicalCondition:
    """``{"And": [...]}`` or ``{"Or": [...]}``; A2I evaluates (and reports) every member."""

    path: str
    operator: Operator
    members: tuple[Condition, ...]


Condition = ConfidenceCheck | SamplingCondition | LogicalCondition


@dataclass(frozen=True, slots=True)
class ActivationConditions:
    """Validated conditions; ``warnings`` are for the caller to log: they never stop start-up."""

    conditions: tuple[Condition, ...]  # the top-level members: a review starts if any is true
    warnings: list[str]


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One image's outcome, with A2I's per-condition results so a reviewer can see why."""

    activated: bool
    results: dict[str, Any]  # {"Conditions": [...]} with an EvaluationResult on every condition
    reasons: list[str]  # the true conditions that started the review; empty when not activated

    def results_json(self) -> str:
        """The results as the compact JSON string Rekognition puts in its response."""
        return json.dumps(
            self.results, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False
        )


# --------------------------------------------------------------------------------------- parsing


def parse_conditions(text: str, *, source: str) -> ActivationConditions:
    """Parse and validate ``HumanLoopActivationConditions`` JSON text.

    Raises ConfigError(source, problem). The problem gives the JSON path and the reason.
    """
    if not isinstance(text, str):
        raise ConfigError(source, f"expected JSON text, got {type(text).__name__}")
    if len(text) > MAX_JSON_CHARS:
        raise ConfigError(
            source,
            f"the conditions JSON is {len(text):,} characters; A2I allows at most "
            f"{MAX_JSON_CHARS:,}",
        )
    try:
        document = json.loads(
            text,
            object_pairs_hook=_reject_duplicate_keys,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except json.JSONDecodeError as exc:
        raise ConfigError(
            source, f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from exc
    except _JsonProblem as exc:
        raise ConfigError(source, f"invalid JSON: {exc}") from exc
    except RecursionError as exc:
        raise ConfigError(source, "invalid JSON: nested too deeply") from exc
    return parse_conditions_obj(document, source=source)


def parse_conditions_obj(obj: object, *, source: str) -> ActivationConditions:
    """Validate conditions that are already parsed JSON (e.g. a section of a YAML or JSON file).

    The size limit applies to the compact JSON form of ``obj``.
    """
    try:
        compact = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ConfigError(source, f"the conditions are not representable as JSON: {exc}") from exc
    if len(compact) > MAX_JSON_CHARS:
        raise ConfigError(
            source,
            f"the conditions are {len(compact):,} characters as compact JSON; A2I allows at most "
            f"{MAX_JSON_CHARS:,}",
        )
    return _Parser(source).document(obj)


class _JsonProblem(ValueError):
    """Raised from json.loads hooks: valid JSON syntax that the conditions format does not allow."""


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _JsonProblem(f"duplicate key {key!r} in one object (which one would apply?)")
        seen[key] = value
    return seen


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _JsonProblem(f"{text} is too large for a number")
    return value


def _reject_constant(name: str) -> NoReturn:
    raise _JsonProblem(f"{name} is not a JSON number")


class _Parser:
    """One validation pass: knows the source to blame and collects warnings on the way."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.warnings: list[str] = []

    def fail(self, path: str, why: str) -> NoReturn:
        raise ConfigError(self.source, f"{path}: {why}")

    def document(self, obj: object) -> ActivationConditions:
        if not isinstance(obj, dict):
            self.fail("top level", f'expected an object {{"Conditions": [...]}}, got {_kind(obj)}')
        self.no_unknown_keys("top level", obj, ("Conditions",))
        if "Conditions" not in obj:
            self.fail("top level", "missing 'Conditions' (a non-empty array of conditions)")
        members = obj["Conditions"]
        if not isinstance(members, list):
            self.fail("Conditions", f"expected an array of conditions, got {_kind(members)}")
        if not members:
            self.fail("Conditions", "is empty: no condition could ever start a review")
        conditions = tuple(
            self.member(item, f"Conditions[{index}]", ()) for index, item in enumerate(members)
        )
        return ActivationConditions(conditions=conditions, warnings=self.warnings)

    def member(self, obj: object, path: str, outer: tuple[str, ...]) -> Condition:
        if not isinstance(obj, dict):
            self.fail(
                path,
                'expected a condition object ({"ConditionType": ..., "ConditionParameters": '
                f'...}} or {{"And": [...]}} or {{"Or": [...]}}), got {_kind(obj)}',
            )
        operators = [key for key in _OPERATORS if key in obj]
        if len(operators) == 2:
            self.fail(path, "has both 'And' and 'Or'; nest one inside the other instead")
        if operators:
            return self.logical(obj, path, operators[0], outer)
        if not obj:
            self.fail(path, "is an empty object; expected 'ConditionType' or 'And' or 'Or'")
        return self.simple(obj, path)

    def logical(
        self, obj: dict[str, Any], path: str, op: Operator, outer: tuple[str, ...]
    ) -> LogicalCondition:
        others = sorted(key for key in obj if key != op)
        if others:
            self.fail(
                path,
                f"an '{op}' object must have no other keys, found {_names(others)} "
                f"(put simple conditions inside the '{op}' array)",
            )
        op_path = f"{path}.{op}"
        if len(outer) >= MAX_NESTING:
            chain = " inside ".join((op, *reversed(outer)))
            self.fail(
                op_path,
                f"too deeply nested ({chain}): A2I allows at most {MAX_NESTING} levels of "
                "And/Or, e.g. an 'And' inside an 'Or'",
            )
        members = obj[op]
        if not isinstance(members, list):
            self.fail(op_path, f"expected an array of at least 2 conditions, got {_kind(members)}")
        if len(members) < 2:
            self.fail(
                op_path,
                f"needs at least 2 conditions, got {len(members)} "
                "(a single condition can stand without an operator)",
            )
        return LogicalCondition(
            path=path,
            operator=op,
            members=tuple(
                self.member(item, f"{op_path}[{index}]", (*outer, op))
                for index, item in enumerate(members)
            ),
        )

    def simple(self, obj: dict[str, Any], path: str) -> Condition:
        self.no_unknown_keys(path, obj, ("ConditionType", "ConditionParameters", "And", "Or"))
        if "ConditionType" not in obj:
            self.fail(path, "missing 'ConditionType'")
        kind = obj["ConditionType"]
        type_path = f"{path}.ConditionType"
        if not isinstance(kind, str):
            self.fail(type_path, f"expected a string, got {_kind(kind)}")
        if kind in _TEXTRACT_TYPES:
            self.fail(
                type_path,
                f"{kind!r} is an Amazon Textract (AnalyzeDocument) condition type; Rekognition "
                f"DetectModerationLabels supports only {_names(_REKOGNITION_TYPES)}",
            )
        if kind not in _REKOGNITION_TYPES:
            self.fail(
                type_path,
                f"unknown condition type {kind!r}{_suggest(kind, _REKOGNITION_TYPES)}; "
                f"Rekognition supports {_names(_REKOGNITION_TYPES)}",
            )
        params_path = f"{path}.ConditionParameters"
        if "ConditionParameters" not in obj:
            self.fail(path, f"missing 'ConditionParameters' (required for {kind})")
        params = obj["ConditionParameters"]
        if not isinstance(params, dict):
            self.fail(params_path, f"expected an object, got {_kind(params)}")
        if kind == SAMPLING:
            return self.sampling(params, path, params_path)
        return self.confidence_check(params, path, params_path)

    def sampling(self, params: dict[str, Any], path: str, params_path: str) -> SamplingCondition:
        key = "RandomSamplingPercentage"
        self.no_unknown_keys(params_path, params, (key,))
        if key not in params:
            self.fail(params_path, f"missing {key!r} (a number from 0.01 to 100)")
        value = params[key]
        if not _is_number(value) or not 0.01 <= value <= 100:
            self.fail(f"{params_path}.{key}", f"expected a number from 0.01 to 100, got {value!r}")
        return SamplingCondition(path=path, percentage=value)

    def confidence_check(
        self, params: dict[str, Any], path: str, params_path: str
    ) -> ConfidenceCheck:
        self.no_unknown_keys(params_path, params, ("ModerationLabelName", *_COMPARATORS))
        if "ModerationLabelName" not in params:
            self.fail(params_path, "missing 'ModerationLabelName' (a label name, or \"*\")")
        name = params["ModerationLabelName"]
        name_path = f"{params_path}.ModerationLabelName"
        if not isinstance(name, str) or not name:
            self.fail(name_path, f'expected a label name or "*", got {name!r}')
        comparators = [key for key in _COMPARATOR_NAMES if key in params]
        if not comparators:
            self.fail(params_path, f"missing a comparator: one of {_names(_COMPARATORS)}")
        if len(comparators) > 1:
            self.fail(
                params_path,
                f"has {_names(comparators)}; a check takes exactly one comparator "
                "(for a range, put two checks in an 'And')",
            )
        comparator = comparators[0]
        threshold = params[comparator]
        if not _is_number(threshold) or not 0 <= threshold <= 100:
            self.fail(
                f"{params_path}.{comparator}",
                f"expected a confidence from 0 to 100, got {threshold!r}",
            )
        if name != ANY_LABEL and not is_v7_label(name):
            self.warnings.append(_not_v7_warning(name_path, name))
        if (comparator == "ConfidenceLessThan" and threshold <= 0) or (
            comparator == "ConfidenceGreaterThan" and threshold >= 100
        ):
            self.warnings.append(
                f"{params_path}: {comparator} {threshold} can never be true "
                "(confidence is 0 to 100)"
            )
        return ConfidenceCheck(path=path, label=name, comparator=comparator, threshold=threshold)

    def no_unknown_keys(self, path: str, obj: dict[str, Any], allowed: Sequence[str]) -> None:
        unknown = [key for key in obj if key not in allowed]
        if unknown:
            key = unknown[0]
            self.fail(
                path,
                f"unknown key {key!r}{_suggest(key, allowed)}; allowed here: {_names(allowed)}",
            )


def _not_v7_warning(path: str, name: str) -> str:
    hint = _suggest(name, tuple(V7_LABELS))
    return (
        f"{path}: {name!r} is not a Rekognition taxonomy v7 label{hint}, so this check never "
        "matches v7 output; v6 names such as 'Suggestive' or 'Graphic Male Nudity' no longer exist"
    )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _kind(value: object) -> str:
    """The JSON name for a value's type, as a user of the JSON would say it."""
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float | str):
        return f"{'string' if isinstance(value, str) else 'number'} {value!r}"
    names = {type(None): "null", list: "an array", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def _names(names: Sequence[str] | dict[str, Any]) -> str:
    return ", ".join(repr(name) for name in names)


def _suggest(word: str, choices: Sequence[str]) -> str:
    folded = {choice.casefold(): choice for choice in choices}
    if word.casefold() in folded:
        return f" (did you mean {folded[word.casefold()]!r}? names are case-sensitive)"
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ------------------------------------------------------------------------------------ evaluation


def evaluate(
    conditions: ActivationConditions, labels: Sequence[Label], *, request_key: str
) -> Evaluation:
    """Evaluate every condition against one image's labels, as A2I does (no short-circuit)."""
    nodes: list[dict[str, Any]] = []
    reasons: list[str] = []
    activated = False
    for condition in conditions.conditions:
        value, node, why = _evaluate(condition, labels, request_key)
        nodes.append(node)
        if value:
            activated = True
            reasons.extend(why)
    return Evaluation(
        activated=activated,
        results={"Conditions": nodes},
        reasons=list(dict.fromkeys(reasons)),  # the same check twice explains nothing new
    )


def sampling_draw(request_key: str, path: str) -> float:
    """A request's fixed draw in [0, 100) for the Sampling condition at ``path``."""
    digest = hashlib.sha256(
        _SAMPLING_DOMAIN + path.encode() + b"\x00" + request_key.encode("utf-8", "surrogatepass")
    ).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) * 100.0 / (1 << 53)


def _evaluate(
    condition: Condition, labels: Sequence[Label], request_key: str
) -> tuple[bool, dict[str, Any], list[str]]:
    """(result, results node, reasons for a true result)."""
    if isinstance(condition, LogicalCondition):
        outcomes = [_evaluate(member, labels, request_key) for member in condition.members]
        combine = all if condition.operator == "And" else any
        value = combine(outcome[0] for outcome in outcomes)
        node = {
            "EvaluationResult": value,
            condition.operator: [outcome[1] for outcome in outcomes],
        }
        why = [reason for outcome in outcomes if outcome[0] for reason in outcome[2]]
        return value, node, why if value else []
    if isinstance(condition, SamplingCondition):
        draw = sampling_draw(request_key, condition.path)
        value = draw < condition.percentage
        node = {
            "ConditionParameters": {"RandomSamplingPercentage": condition.percentage},
            "ConditionType": SAMPLING,
            "EvaluationResult": value,
        }
        percent = _number(condition.percentage)
        shown = _shown(draw, operator.lt, condition.percentage)
        why = [f"sampled at {percent}% (draw {shown} < {percent})"]
        return value, node, why if value else []
    matched = [
        label
        for label in labels
        if (condition.label in (ANY_LABEL, label.name)) and condition.matches(label.confidence)
    ]
    node = {
        "ConditionParameters": {
            condition.comparator: condition.threshold,
            "ModerationLabelName": condition.label,
        },
        "ConditionType": CONFIDENCE_CHECK,
        "EvaluationResult": bool(matched),
    }
    symbol, compare = _COMPARATORS[condition.comparator]
    suffix = " (any label)" if condition.label == ANY_LABEL else ""
    why = [
        f"{label.name} confidence {_shown(label.confidence, compare, condition.threshold)} "
        f"{symbol} {_number(condition.threshold)}{suffix}"
        for label in matched
    ]
    return bool(matched), node, why


def _number(value: Number) -> str:
    """A configured number as a person wrote it: 70, 70.5, 0.01."""
    if isinstance(value, int):
        return str(value)
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def _shown(value: float, compare: Callable[[float, float], bool], against: Number) -> str:
    """``value`` rounded for people, but never so far that the stated comparison looks false."""
    bound = float(against)
    for digits in (1, 2, 3, 4, 6):
        text = f"{value:.{digits}f}"
        if compare(float(text), bound) == compare(value, bound):
            return text
    return repr(value)
