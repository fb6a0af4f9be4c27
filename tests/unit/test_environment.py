"""The environment-to-settings machinery: variables derived from the models, errors that name
them and never echo a secret."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from service.environment import EnvGroup, EnvSettings, Flag, environment_variables, load, variable
from service.errors import ConfigError


class Inner(EnvGroup):
    size: int = variable("INNER_SIZE", 1, ge=1, le=9)


class Outer(EnvSettings):
    inner: Inner
    token: SecretStr | None = variable("OUTER_TOKEN", None, min_length=20, repr=False)
    enabled: Flag = variable("OUTER_ENABLED", False)


def test_variables_come_from_the_models_nested_groups_included() -> None:
    assert set(environment_variables(Outer)) == {"INNER_SIZE", "OUTER_TOKEN", "OUTER_ENABLED"}


def test_nested_groups_read_the_same_flat_environment() -> None:
    loaded = load(Outer, {"INNER_SIZE": " 7 ", "OUTER_ENABLED": "on", "UNRELATED": "x"})
    assert (loaded.inner.size, loaded.enabled) == (7, True)


def test_a_rejected_value_is_quoted_but_a_secret_is_not() -> None:
    with pytest.raises(ConfigError) as caught:
        load(Outer, {"INNER_SIZE": "12"})
    assert str(caught.value) == "INNER_SIZE: must be between 1 and 9, got '12'"
    with pytest.raises(ConfigError) as caught:
        load(Outer, {"OUTER_TOKEN": "s3cr3t-but-short"})
    assert caught.value.variable == "OUTER_TOKEN"
    assert "s3cr3t" not in str(caught.value)


@pytest.mark.parametrize("spelling", ["y", "t", "2", "enabled"])
def test_only_the_documented_flag_spellings_count(spelling: str) -> None:
    with pytest.raises(ConfigError, match="expected true or false"):
        load(Outer, {"OUTER_ENABLED": spelling})
