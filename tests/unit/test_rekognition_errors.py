"""The botocore boundary: ClientError codes become InputError or BackendError; label parsing."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from service.backends.rekognition import parse_labels, translate_client_error
from service.errors import BackendError, InputError, Reason
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
    ("code", "retriable", "throttled"),
    [
        ("ThrottlingException", True, True),
        ("ProvisionedThroughputExceededException", True, True),
        ("InternalServerError", True, False),
        ("ServiceUnavailableException", True, False),
        ("ServiceUnavailable", True, False),
        ("AccessDeniedException", False, False),
        ("UnrecognizedClientException", False, False),
        ("ExpiredTokenException", False, False),
        ("ResourceNotFoundException", False, False),
        ("HumanLoopQuotaExceededException", True, False),
        ("SomethingNew", False, False),
    ],
)
def test_backend_problems_are_backend_errors(code: str, retriable: bool, throttled: bool) -> None:
    error = translate_client_error(client_error(code, "try later"))
    assert isinstance(error, BackendError)
    assert not isinstance(error, InputError)
    assert error.code == code
    assert error.retriable is retriable
    assert error.throttled is throttled
    assert error.human_loop_quota is (code == "HumanLoopQuotaExceededException")
    assert str(error) == f"{code}: try later"


@pytest.mark.parametrize(
    "response",
    [{}, {"Error": {}}, {"Error": {"Message": "no code"}}],
)
def test_response_without_a_code_is_a_non_retriable_backend_error(
    response: dict[str, Any],
) -> None:
    error = translate_client_error(ClientError(response, "DetectModerationLabels"))
    assert isinstance(error, BackendError)
    assert error.code == "Unknown"
    assert error.retriable is False
    assert error.throttled is False


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

    with pytest.raises(BackendError) as info:
        call()
    assert info.value.__cause__ is original


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
