"""A2I completion events as EventBridge delivers them ("SageMaker A2I HumanLoop Status Change").

Parsing is strict about what the sink relies on and tolerant of everything else, so events that
EventBridge enriches later still parse; anything unusable is an InputError for the DLQ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from service.errors import InputError, Reason

DETAIL_TYPE = "SageMaker A2I HumanLoop Status Change"
FINAL_STATUSES = ("Completed", "Failed", "Stopped")
Status = Literal["Completed", "Failed", "Stopped"]


@dataclass(frozen=True, slots=True)
class CompletionEvent:
    event_id: str
    loop_name: str
    status: Status
    output_uri: str | None
    failure_code: str | None
    failure_reason: str | None
    time: str | None

    @property
    def expired(self) -> bool:
        return self.failure_code == "Expired"


def parse_event(value: bytes | None) -> CompletionEvent:
    if value is None:
        raise InputError(Reason.MALFORMED_EVENT, "record has no value")
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InputError(Reason.MALFORMED_JSON, f"event is not valid JSON: {exc}") from exc
    if not isinstance(event, dict):
        raise InputError(Reason.MALFORMED_EVENT, "event must be a JSON object")
    if event.get("detail-type") != DETAIL_TYPE:
        raise InputError(
            Reason.MALFORMED_EVENT,
            f"detail-type is {event.get('detail-type')!r}, not {DETAIL_TYPE!r}",
        )
    detail = event.get("detail")
    if not isinstance(detail, dict):
        raise InputError(Reason.MALFORMED_EVENT, "event has no 'detail' object")
    name = _text(detail, "humanLoopName")
    status = _text(detail, "humanLoopStatus")
    if status not in FINAL_STATUSES:
        raise InputError(
            Reason.MALFORMED_EVENT, f"humanLoopStatus {status!r} is not one of {FINAL_STATUSES}"
        )
    output = detail.get("humanLoopOutput")
    uri = output.get("outputS3Uri") if isinstance(output, dict) else None
    if status == "Completed" and not isinstance(uri, str):
        raise InputError(
            Reason.MALFORMED_EVENT, "Completed event has no humanLoopOutput.outputS3Uri"
        )
    return CompletionEvent(
        event_id=str(event.get("id", "")),
        loop_name=name,
        status=status,  # type: ignore[arg-type]  # checked above
        output_uri=uri if isinstance(uri, str) else None,
        failure_code=_optional_text(detail, "failureCode"),
        failure_reason=_optional_text(detail, "failureReason"),
        time=_optional_text(event, "time"),
    )


def _text(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise InputError(Reason.MALFORMED_EVENT, f"detail.{key} must be a non-empty string")
    return value


def _optional_text(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) else None


def completion_event(
    *,
    loop_name: str,
    status: Status,
    output_uri: str | None,
    flow_definition_arn: str,
    region: str = "us-east-1",
    account: str = "000000000000",
    event_id: str,
    time: str,
    created: str,
    failure_code: str | None = None,
    failure_reason: str | None = None,
) -> dict[str, Any]:
    """An event in exactly A2I's shape; used by the self-hosted console so the sink can't tell."""
    loop_arn = f"arn:aws:sagemaker:{region}:{account}:human-loop/{loop_name}"
    return {
        "version": "0",
        "id": event_id,
        "detail-type": DETAIL_TYPE,
        "source": "aws.sagemaker",
        "account": account,
        "time": time,
        "region": region,
        "resources": [loop_arn],
        "detail": {
            "creationTime": created,
            "failureCode": failure_code,
            "failureReason": failure_reason,
            "flowDefinitionArn": flow_definition_arn,
            "humanLoopArn": loop_arn,
            "humanLoopName": loop_name,
            "humanLoopOutput": {"outputS3Uri": output_uri} if output_uri else None,
            "humanLoopStatus": status,
        },
    }
