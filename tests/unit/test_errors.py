"""The error tree: a caller acts on the type; ``retriable`` says whether asking again can help."""

from __future__ import annotations

import pytest

from service.errors import (
    BackendError,
    BackendUnavailable,
    GaveUp,
    HumanLoopQuotaExceeded,
    ServiceError,
    Throttled,
)


@pytest.mark.parametrize(
    ("kind", "retriable"),
    [
        (BackendError, True),
        (Throttled, True),
        (HumanLoopQuotaExceeded, True),
        (BackendUnavailable, False),
    ],
)
def test_backend_errors_carry_their_code(kind: type[BackendError], retriable: bool) -> None:
    error = kind("SomeCode", "what happened")
    assert isinstance(error, BackendError)
    assert isinstance(error, ServiceError)
    assert error.code == "SomeCode"
    assert str(error) == "SomeCode: what happened"
    assert error.retriable is retriable


def test_gave_up_is_a_backend_error_that_keeps_the_last_code_and_the_attempts() -> None:
    error = GaveUp("InternalServerError", 5)
    assert isinstance(error, BackendError)
    assert (error.code, error.attempts, error.retriable) == ("InternalServerError", 5, False)
    assert str(error).startswith("InternalServerError: ")
