"""The service's error tree.

Callers decide by type and by the ``retriable`` flag, never by message text. Third-party errors
(botocore, aiohttp, aiokafka) are translated into these at exactly one boundary each and raised
``from`` the original, so the cause stays visible in tracebacks.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Stable codes for why a message went to the dead-letter topic.

    The value is part of the public contract: it is the DLQ record's ``error.reason``, the
    ``moderation-error-reason`` header, and a metric label. Add codes; never rename them.
    """

    MALFORMED_JSON = "malformed_json"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    INVALID_BASE64 = "invalid_base64"
    IMAGE_TOO_LARGE = "image_too_large"
    NOT_AN_IMAGE = "not_an_image"
    INVALID_URL = "invalid_url"
    FORBIDDEN_URL = "forbidden_url"
    UNREACHABLE_URL = "unreachable_url"
    URL_HTTP_ERROR = "url_http_error"
    INVALID_S3_OBJECT = "invalid_s3_object"
    INVALID_IMAGE_FORMAT = "invalid_image_format"
    INVALID_PARAMETER = "invalid_parameter"
    RECORD_TOO_LARGE = "record_too_large"
    INTERNAL_ERROR = "internal_error"  # a bug in this service; the message is kept, not lost
    MALFORMED_EVENT = "malformed_event"  # a completion event that is not A2I's shape
    UNREADABLE_OUTPUT = "unreadable_output"  # the reviewers' output.json is missing or invalid
    BACKEND_ERROR = "backend_error"  # the backend kept failing on this image while serving others
    UNDECODABLE_RECORD = "undecodable_record"  # the Kafka client cannot decode it (header key)
    OUTPUT_TOO_LARGE = "output_too_large"  # the broker refused the verdict record as too large
    IMAGE_TOO_MANY_PIXELS = "image_too_many_pixels"  # pixel flood / decompression bomb
    TRUNCATED_IMAGE = "truncated_image"  # the image data ends before its pixels do
    FORGED_EVENT = "forged_event"  # a completion event pointing at another loop's answers
    INVALID_REVIEW_RECORD = "invalid_review_record"  # a review-topic record that is not one
    ORPHAN_COMPLETION = "orphan_completion"  # no review record arrived for the event's loop in time
    DECODE_TIMEOUT = "decode_timeout"  # normalizing the image took longer than its time limit


class ServiceError(Exception):
    """Root of every error the service raises on purpose."""

    retriable: bool = False  # asking again, the same way and soon, can succeed


class ConfigError(ServiceError):
    """Bad configuration: fatal at start-up, and always names the variable or file at fault."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


class InputError(ServiceError):
    """A permanent problem with one message: it goes to the DLQ and the consumer carries on."""

    retriable = False

    def __init__(self, reason: Reason, message: str, *, attempts: int = 1) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.attempts = attempts  # how many tries it took to be sure (URL fetches retry)


class BackendError(ServiceError):
    """The backend (or a store it reads) failed; not the input's fault. Retried with backoff.

    A caller acts on the subclass: :class:`Throttled` slows the limiter, :class:`BackendUnavailable`
    waits out an outage, :class:`HumanLoopQuotaExceeded` holds or falls back, :class:`GaveUp`
    dead-letters the one input. Any other BackendError is a passing server error.
    """

    retriable = True

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class Throttled(BackendError):
    """Over the quota: slows the shared rate limiter, then retried."""


class BackendUnavailable(BackendError):
    """Credentials, permissions, a missing resource: an outage; callers wait (circuit breaker),
    never dead-letter healthy input."""

    retriable = False


class HumanLoopQuotaExceeded(BackendError):
    """Too many human reviews in progress: hold or fall back, never hammer."""


class GaveUp(BackendError):
    """The backend kept failing on this one input while serving others: the input goes to the
    DLQ."""

    retriable = False

    def __init__(self, code: str, attempts: int) -> None:
        super().__init__(code, f"still failing after {attempts} attempts while serving others")
        self.attempts = attempts


class PublishError(ServiceError):
    """An output record was not acknowledged: its offset is not committed, so it is redelivered."""

    retriable = True


class RecordRefused(PublishError):
    """The broker will never take this record (too large, invalid): retrying cannot help.

    The caller publishes something else in its place (a dead letter that says why), so the input
    is accounted for and its partition moves on.
    """

    retriable = False

    def __init__(self, topic: str, code: str, message: str) -> None:
        super().__init__(f"{topic}: {code}: {message}")
        self.topic = topic
        self.code = code
