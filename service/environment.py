"""Typed settings out of environment variables, with pydantic-settings.

A settings model names each variable on its field (:func:`variable`); :func:`load` validates a
model from an environment mapping and is the one place pydantic's ``ValidationError`` becomes
:class:`ConfigError`, naming the variable and quoting the rejected value (never a secret's).
Rules that span fields raise ``ConfigError`` themselves, since only they know which variable to
blame. The value types here (topics, flags, networks, URLs, comma lists) are shared by the
service's settings and the console's.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, NoReturn, TypeVar, get_args

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    Field,
    SecretBytes,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from service.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]+")  # what Kafka itself accepts
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_RANGE_ERRORS = ("greater_than_equal", "greater_than", "less_than_equal", "less_than")

_CONFIG = SettingsConfigDict(
    case_sensitive=True,  # as the environment is
    frozen=True,
    validate_by_alias=True,  # from the environment: the variable names
    validate_by_name=True,  # in code and tests: the field names
    allow_inf_nan=False,
    hide_input_in_errors=True,  # a rejected value may be a secret: str(error) never shows it
    extra="ignore",  # every group sees the whole environment and takes its own variables
)


def variable(name: str | AliasChoices, default: Any = ..., **constraints: Any) -> Any:
    """A field read from the environment variable ``name`` (or the first set of several)."""
    return Field(default, validation_alias=name, **constraints)


def required(name: str, hint: str) -> Callable[[], NoReturn]:
    """A default for a variable that has none: its absence is an error that says what to set."""

    def missing() -> NoReturn:
        raise ConfigError(name, f"required: {hint}")

    return missing


def _share_environment(model: type[BaseModel], data: Any) -> Any:
    """Give each nested group the same environment: every group reads its own variables."""
    if not isinstance(data, Mapping):
        return data
    shared = dict(data)
    for name, field in model.model_fields.items():
        if name not in data and _group_of(field) is not None:
            shared[name] = data
    return shared


class EnvGroup(BaseModel):
    """A group of settings inside :class:`EnvSettings`: ``settings.kafka``, ``settings.backend``."""

    model_config = _CONFIG

    @model_validator(mode="before")
    @classmethod
    def _groups_read_the_same_environment(cls, data: Any) -> Any:
        return _share_environment(cls, data)


class EnvSettings(BaseSettings):
    """Top-level settings, validated from exactly the mapping :func:`load` is given."""

    model_config = _CONFIG

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only what load() hands over, never os.environ behind its back: the CLI passes
        # os.environ, tests their own mapping, and the two must not mix.
        return (init_settings,)

    @model_validator(mode="before")
    @classmethod
    def _groups_read_the_same_environment(cls, data: Any) -> Any:
        return _share_environment(cls, data)


def load(
    model: type[M],
    env: Mapping[str, str],
    *,
    defaults: Mapping[str, str] | None = None,
    **fields: Any,
) -> M:
    """Validate ``model`` from ``env``; ``defaults`` stand in for unset variables, ``fields`` are
    values settled elsewhere. Values are stripped and a blank one counts as unset."""
    variables = environment_variables(model)
    values: dict[str, Any] = dict(defaults or {})
    for name in variables:
        value = env.get(name)
        if value is not None and value.strip():
            values[name] = value.strip()
    try:
        return model(**values, **fields)
    except ValidationError as exc:
        raise _config_error(exc, variables) from exc


@functools.cache
def environment_variables(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """Every variable ``model`` reads (its groups' too), with its field: derived from the models,
    so nothing (the chart's test, the error translation) keeps a list of its own."""
    found: dict[str, FieldInfo] = {}
    for field in model.model_fields.values():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
        found |= {name: field for name in choices if isinstance(name, str)}
        group = _group_of(field)
        if group is not None:
            found |= environment_variables(group)
    return found


def _group_of(field: FieldInfo) -> type[EnvGroup] | None:
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, EnvGroup):
        return annotation
    return None


def _is_secret(field: FieldInfo | None) -> bool:
    if field is None:
        return True  # unknown: err on the side of not echoing
    annotation = field.annotation
    return any(kind in (SecretStr, SecretBytes) for kind in (annotation, *get_args(annotation)))


def _config_error(exc: ValidationError, variables: Mapping[str, FieldInfo]) -> ConfigError:
    # A default computed from a field that failed is not a second problem.
    errors = [e for e in exc.errors(include_url=False) if e["type"] != "default_factory_not_called"]
    named = [(_variable_of(error, variables), error) for error in errors]
    name, first = named[0]
    problem = _problem(first, variables.get(name))
    others = sorted({other for other, _ in named[1:]} - {name})
    if others:
        problem += f" (also invalid: {', '.join(others)})"
    return ConfigError(name, problem)


def _variable_of(error: ErrorDetails, variables: Mapping[str, FieldInfo]) -> str:
    names = [part for part in error["loc"] if isinstance(part, str) and part in variables]
    return names[-1] if names else ".".join(str(part) for part in error["loc"]) or "settings"


def _bounds(field: FieldInfo | None) -> tuple[object, object]:
    """A field's ``ge``/``le`` limits, so a range error can name both ends."""
    metadata = field.metadata if field is not None else []
    low = next((m.ge for m in metadata if getattr(m, "ge", None) is not None), None)
    high = next((m.le for m in metadata if getattr(m, "le", None) is not None), None)
    return low, high


def _problem(error: ErrorDetails, field: FieldInfo | None) -> str:
    kind, ctx = error["type"], error.get("ctx", {})
    if kind == "value_error":
        return str(ctx["error"])  # our own validators' words, which quote what is safe to quote
    low, high = _bounds(field)
    phrases = {
        "float_parsing": "expected a number",
        "int_parsing": "expected an integer",
        "int_from_float": "expected an integer",
        "finite_number": "expected a finite number",
        "greater_than_equal": f"must be at least {ctx.get('ge')}",
        "greater_than": f"must be more than {ctx.get('gt')}",
        "less_than_equal": f"must be at most {ctx.get('le')}",
        "less_than": f"must be less than {ctx.get('lt')}",
        "literal_error": f"must be {ctx.get('expected')}",
    }
    if low is not None and high is not None:
        phrases |= dict.fromkeys(_RANGE_ERRORS, f"must be between {low} and {high}")
    problem = phrases.get(kind, error["msg"])
    value = error.get("input")
    if _is_secret(field) or not isinstance(value, str):
        return problem
    return f"{problem}, got {value!r}"


# -- value types -----------------------------------------------------------------------------


def _flag(value: object) -> object:
    if not isinstance(value, str):
        return value
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _parts(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _comma_separated(value: object) -> object:
    return _parts(value) if isinstance(value, str) else value


def _topic(value: str) -> str:
    if len(value) > 249 or value in {".", ".."} or not _TOPIC_NAME.fullmatch(value):
        raise ValueError(f"not a valid Kafka topic name: {value!r}")
    return value


def _networks(value: object) -> object:
    if not isinstance(value, str):
        return value
    try:
        return tuple(ipaddress.ip_network(part, strict=False) for part in _parts(value))
    except ValueError as exc:
        raise ValueError(f"expected comma-separated CIDR networks: {exc}") from exc


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"expected an http(s) URL: {value!r}")
    return value


#: ``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``, in any case; nothing else.
Flag = Annotated[bool, BeforeValidator(_flag)]
#: ``a, b,c`` -> ``("a", "b", "c")``: put it on a tuple (or set) type.
CommaSeparated = BeforeValidator(_comma_separated)
Topic = Annotated[str, AfterValidator(_topic)]
Networks = Annotated[tuple[IpNetwork, ...], BeforeValidator(_networks)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]  # kept as written (pydantic's adds a "/")
