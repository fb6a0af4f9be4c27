"""The botocore boundary: ClientError codes become InputError or a BackendError subclass a caller
can act on; label and managed-review parsing."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from service.backends.base import ManagedReview
from service.backends.rekognition import (
    parse_labels,
    parse_managed_review,
    translate_client_error,
)
from service.errors import (
    BackendError,
    BackendUnavailable,
    HumanLoopQuotaExceeded,
    InputError,
    Reason,
    Throttled,
)
from service.messages import Label


def client_error(code: str, message: str = "details from AWS") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "DetectModerationLabels")


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("InvalidImageFormatException", Reason.INVALID_IMAGE_FORMAT),
        ("ImageTooLargeException", Reason.IMAGE_TOO_LARGE),
        ("InvalidS3ObjectException", Reason.INVALID_S3_OBJECT),
        ("InvalidParameterException", Reason.INVALID_PARAMETER),
    ],
)
def test_image_problems_are_input_errors(code: str, reason: Reason) -> None:
    error = translate_client_error(client_error(code, "Request has invalid image format"))
    assert isinstance(error, InputError)
    assert error.reason is reason
    assert error.retriable is False
    assert code in error.message
    assert "Request has invalid image format" in error.message


@pytest.mark.parametrize(
    ("code", "kind", "retriable"),
    [
        ("ThrottlingException", Throttled, True),
        ("ProvisionedThroughputExceededException", Throttled, True),
        ("InternalServerError", BackendError, True),
        ("ServiceUnavailableException", BackendError, True),
        ("ServiceUnavailable", BackendError, True),
        ("AccessDeniedException", BackendUnavailable, False),
        ("UnrecognizedClientException", BackendUnavailable, False),
        ("ExpiredTokenException", BackendUnavailable, False),
        ("ResourceNotFoundException", BackendUnavailable, False),
        ("HumanLoopQuotaExceededException", HumanLoopQuotaExceeded, True),
        ("SomethingNew", BackendUnavailable, False),
    ],
)
def test_backend_problems_are_backend_errors(
    code: str, kind: type[BackendError], retriable: bool
) -> None:
    error = translate_client_error(client_error(code, "try later"))
    assert type(error) is kind
    assert error.code == code
    assert error.retriable is retriable
    assert str(error) == f"{code}: try later"


@pytest.mark.parametrize(
    "response",
    [{}, {"Error": {}}, {"Error": {"Message": "no code"}}],
)
def test_response_without_a_code_is_an_outage(response: dict[str, Any]) -> None:
    error = translate_client_error(ClientError(response, "DetectModerationLabels"))
    assert type(error) is BackendUnavailable
    assert error.code == "Unknown"
    assert error.retriable is False


def test_codes_are_matched_exactly() -> None:
    # A near miss must not be mistaken for an image problem (which would dead-letter the input).
    error = translate_client_error(client_error("invalidimageformatexception"))
    assert isinstance(error, BackendError)


def test_translated_error_can_be_raised_from_the_original() -> None:
    original = client_error("ThrottlingException")

    def call() -> None:
        try:
            raise original
        except ClientError as exc:
            raise translate_client_error(exc) from exc

    with pytest.raises(Throttled) as info:
        call()
    assert info.value.__cause__ is original


def test_a_started_review_is_typed_and_its_evaluation_decoded() -> None:
    response = {
        "HumanLoopActivationOutput": {
            "HumanLoopArn": "arn:aws:sagemaker:us-east-1:1:human-loop/m1",
            "HumanLoopActivationReasons": ["ConditionsEvaluation"],
            "HumanLoopActivationConditionsEvaluationResults": '{"Conditions": [true]}',
        }
    }
    assert parse_managed_review(response) == ManagedReview(
        loop_arn="arn:aws:sagemaker:us-east-1:1:human-loop/m1",
        activation_reasons=("ConditionsEvaluation",),
        conditions_evaluation={"Conditions": [True]},
    )


@pytest.mark.parametrize(
    "response",
    [{}, {"HumanLoopActivationOutput": {}}, {"HumanLoopActivationOutput": {"HumanLoopArn": ""}}],
)
def test_no_loop_arn_means_no_managed_review(response: dict[str, Any]) -> None:
    assert parse_managed_review(response) is None


def test_an_evaluation_that_is_not_json_is_kept_as_text() -> None:
    output = {"HumanLoopArn": "arn:x", "HumanLoopActivationConditionsEvaluationResults": "{oops"}
    review = parse_managed_review({"HumanLoopActivationOutput": output})
    assert review is not None
    assert review.conditions_evaluation == "{oops"
    assert review.activation_reasons == ()


def test_parse_labels() -> None:
    response = {
        "ModerationLabels": [
            {"Name": "Explicit", "ParentName": "", "Confidence": 98.5, "TaxonomyLevel": 1},
            {
                "Name": "Explicit Nudity",
                "ParentName": "Explicit",
                "Confidence": 97,
                "TaxonomyLevel": 2,
            },
        ],
        "ModerationModelVersion": "7.0",
    }
    labels = parse_labels(response)
    assert labels == [
        Label("Explicit", "", 98.5, 1),
        Label("Explicit Nudity", "Explicit", 97.0, 2),
    ]
    assert isinstance(labels[1].confidence, float)


@pytest.mark.parametrize("response", [{}, {"ModerationLabels": []}])
def test_parse_labels_empty(response: dict[str, Any]) -> None:
    assert parse_labels(response) == []


def test_parse_labels_defaults_for_missing_optional_fields() -> None:
    # Older model versions return neither ParentName nor TaxonomyLevel for some labels.
    assert parse_labels({"ModerationLabels": [{"Name": "Gambling", "Confidence": 61.25}]}) == [
        Label("Gambling", "", 61.25, 0)
    ]
