"""A2I completion events as EventBridge delivers them ("SageMaker A2I HumanLoop Status Change").

Parsing is strict about what the sink relies on and tolerant of everything else, so events that
EventBridge enriches later still parse; anything unusable is an InputError for the DLQ. What the
sink relies on includes where the answers are: ``outputS3Uri`` must be a well-formed ``s3://`` or
``file://`` URI (else ``malformed_event``, so a bad URI never reaches the object store) that sits
in A2I's layout under the event's own loop and flow definition,
``<prefix>/<flow-definition-name>/YYYY/MM/DD/hh/mm/ss/<loop>/output.json`` (else
``forged_event``: an event must not point at another loop's answers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import SplitResult, unquote, urlsplit

import orjson

from service.errors import InputError, Reason

DETAIL_TYPE = "SageMaker A2I HumanLoop Status Change"
FINAL_STATUSES = ("Completed", "Failed", "Stopped")
Status = Literal["Completed", "Failed", "Stopped"]

MAX_URI_LENGTH = 2048
_FLOW_ARN = re.compile(
    r"arn:aws[a-z\-]*:sagemaker:[a-z0-9\-]+:[0-9]{12}:flow-definition/"
    r"(?P<name>[a-z0-9](-*[a-z0-9])*)"
)
_LOOP_ARN = re.compile(r"arn:aws[a-z\-]*:sagemaker:[a-z0-9\-]+:[0-9]{12}:human-loop/(?P<name>.+)")
# S3's bucket naming rules: 3-63 of a-z 0-9 . -, starting and ending with a letter or digit.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_IP_LIKE = re.compile(r"\d+\.\d+\.\d+\.\d+")
_DATE_PARTS = (4, 2, 2, 2, 2, 2)  # YYYY/MM/DD/hh/mm/ss: the loop's creation time


@dataclass(frozen=True, slots=True)
class CompletionEvent:
    event_id: str
    loop_name: str
    status: Status
    output_uri: str | None
    failure_code: str | None
    failure_reason: str | None
    time: str | None
    flow_definition_arn: str | None = None
    #: The flow definition name in the output's path (A2I's layout), when there is an output.
    output_flow_name: str | None = None

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
    flow_arn, flow_name = _check_arns(detail, name)
    output = detail.get("humanLoopOutput")
    uri = output.get("outputS3Uri") if isinstance(output, dict) else None
    if status == "Completed" and not isinstance(uri, str):
        raise InputError(
            Reason.MALFORMED_EVENT, "Completed event has no humanLoopOutput.outputS3Uri"
        )
    output_flow = None
    if status == "Completed" and isinstance(uri, str):
        output_flow = check_output_location(uri, loop=name, flow_name=flow_name)
    return CompletionEvent(
        event_id=str(event.get("id", "")),
        loop_name=name,
        status=status,  # type: ignore[arg-type]  # checked above
        output_uri=uri if isinstance(uri, str) else None,
        failure_code=_optional_text(detail, "failureCode"),
        failure_reason=_optional_text(detail, "failureReason"),
        time=_optional_text(event, "time"),
        flow_definition_arn=flow_arn,
        output_flow_name=output_flow,
    )


def _check_arns(detail: dict[str, Any], name: str) -> tuple[str | None, str | None]:
    """The event's flow definition (ARN, name); its loop ARN, when given, must name its loop."""
    flow_arn = _optional_text(detail, "flowDefinitionArn")
    flow_name = None
    if flow_arn is not None:
        match = _FLOW_ARN.fullmatch(flow_arn)
        if match is None:
            raise InputError(Reason.MALFORMED_EVENT, "detail.flowDefinitionArn is not a flow ARN")
        flow_name = match["name"]
    loop_arn = _optional_text(detail, "humanLoopArn")
    if loop_arn is not None:
        arn_match = _LOOP_ARN.fullmatch(loop_arn)
        if arn_match is None:
            raise InputError(Reason.MALFORMED_EVENT, "detail.humanLoopArn is not a human-loop ARN")
        if arn_match["name"] != name:
            raise InputError(
                Reason.FORGED_EVENT, f"humanLoopArn names loop {arn_match['name']!r}, not {name!r}"
            )
    return flow_arn, flow_name


def flow_definition_name(arn: str) -> str | None:
    """The name in a flow definition ARN (A2I puts it in every output path), or None."""
    match = _FLOW_ARN.fullmatch(arn)
    return match["name"] if match is not None else None


def check_output_location(uri: str, *, loop: str, flow_name: str | None) -> str:
    """Check that ``uri`` is a readable location in A2I's layout for ``loop``; return its flow name.

    A malformed URI (an empty or invalid bucket, no key, another scheme) is ``malformed_event``: it
    could only fail at the store, and a client-side failure there must never look transient. A
    well-formed URI outside the loop's own prefix is ``forged_event``.
    """
    path = _output_path(uri)
    segments = path.split("/")
    if len(segments) < 9 or segments[-1] != "output.json":
        raise InputError(
            Reason.FORGED_EVENT,
            f"{uri!r} is not in A2I's layout "
            "(<flow-definition>/YYYY/MM/DD/hh/mm/ss/<loop>/output.json)",
        )
    if any(part in (".", "..") for part in segments):
        raise InputError(Reason.MALFORMED_EVENT, f"{uri!r} has '.' or '..' in its path")
    if segments[-2] != loop:
        raise InputError(Reason.FORGED_EVENT, f"{uri!r} is not under loop {loop!r}'s own prefix")
    date = segments[-8:-2]
    if not all(
        part.isascii() and part.isdigit() and len(part) == size
        for part, size in zip(date, _DATE_PARTS, strict=True)
    ):
        raise InputError(Reason.FORGED_EVENT, f"{uri!r} has no YYYY/MM/DD/hh/mm/ss in its path")
    output_flow = segments[-9]
    if flow_name is not None and output_flow != flow_name:
        raise InputError(
            Reason.FORGED_EVENT,
            f"{uri!r} is under flow definition {output_flow!r}, not the event's {flow_name!r}",
        )
    return output_flow


def _output_path(uri: str) -> str:
    """The object key (s3) or file path of a well-formed output URI, else ``malformed_event``."""
    if len(uri) > MAX_URI_LENGTH:
        raise InputError(Reason.MALFORMED_EVENT, f"outputS3Uri is over {MAX_URI_LENGTH} characters")
    try:
        parts: SplitResult = urlsplit(uri)
        port = parts.port  # raises on a non-numeric port
    except ValueError as exc:
        raise InputError(Reason.MALFORMED_EVENT, f"outputS3Uri is not a URI: {exc}") from exc
    if parts.query or parts.fragment or port is not None or "\x00" in uri:
        raise InputError(Reason.MALFORMED_EVENT, f"outputS3Uri {uri!r} is not a plain object URI")
    if parts.scheme == "s3":
        bucket = parts.netloc
        if not _BUCKET.fullmatch(bucket) or ".." in bucket or _IP_LIKE.fullmatch(bucket):
            raise InputError(
                Reason.MALFORMED_EVENT, f"outputS3Uri {uri!r} has no valid S3 bucket name"
            )
        key = unquote(parts.path.removeprefix("/"))
        if not key or len(key.encode("utf-8")) > 1024:
            raise InputError(Reason.MALFORMED_EVENT, f"outputS3Uri {uri!r} has no object key")
        return key
    if parts.scheme == "file":
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not path.startswith("/"):
            raise InputError(Reason.MALFORMED_EVENT, f"{uri!r} is not an absolute file:// URI")
        return path
    raise InputError(Reason.MALFORMED_EVENT, f"outputS3Uri {uri!r} is neither s3:// nor file://")


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
