"""Human-loop names and the review record that travels on the review topic.

The loop name is derived from the request (its id and image reference), never random: a
redelivered message asks A2I for the same loop again, which A2I treats as the same loop instead
of starting a second review (the same name with *different* input would be a conflict).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from service.clock import iso_z
from service.messages import ModerationRequest, describe_image

MAX_LOOP_NAME = 63  # A2I: 1-63 characters, ^[a-z0-9](-*[a-z0-9])*$


def loop_name(request: ModerationRequest) -> str:
    identity = orjson.dumps(
        {"id": request.id, "image": describe_image(request.image)}, option=orjson.OPT_SORT_KEYS
    )
    return "m" + hashlib.sha256(identity).hexdigest()[: MAX_LOOP_NAME - 1]


def review_details(
    *,
    loop: str,
    mode: str,
    flow_definition_arn: str | None,
    human_loop_arn: str | None,
    activation_reasons: list[str],
    activation_results: Any,
    sla_s: float,
    fallback_reason: str | None = None,
) -> dict[str, Any]:
    """The ``review`` object of a review record: what a reviewer or the sink needs."""
    created = datetime.now(UTC)
    details: dict[str, Any] = {
        "human_loop_name": loop,
        "mode": mode,  # "managed" (A2I) or "self_hosted" (our console)
        "flow_definition_arn": flow_definition_arn,
        "human_loop_arn": human_loop_arn,
        "activation_reasons": activation_reasons,
        "activation_results": activation_results,
        "created_at": iso_z(created),
        "deadline": iso_z(created + timedelta(seconds=sla_s)),
    }
    if fallback_reason is not None:
        details["fallback_reason"] = fallback_reason
    return details
