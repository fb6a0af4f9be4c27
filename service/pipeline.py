"""One input record, end to end: parse, load the image, moderate, route, publish one output.

``handle`` never raises for a bad message: every input error ends in the DLQ with its reason.
Backend trouble never dead-letters healthy input either: throttling slows the shared limiter and
retries; an outage opens the circuit breaker and the call waits (which, with the in-flight cap,
pauses intake). Only a message the backend keeps failing on while it serves others gives up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson

from service.activation import ActivationConditions, Evaluation, evaluate
from service.backends.base import HumanLoopRequest, ModerationBackend, ModerationResult
from service.capacity import ConcurrencyBudget
from service.clock import utc_now
from service.errors import BackendError, InputError, Reason, RecordRefused
from service.fetch import ImageFetcher
from service.messages import (
    BytesImage,
    DeadLetter,
    ModerationRequest,
    RawHeaders,
    S3Image,
    Source,
    UrlImage,
    id_of_invalid,
    output_headers,
    parse_request,
    verdict_record,
)
from service.metrics import Metrics
from service.policy import RoutingPolicy
from service.publisher import SupportsPublish, publish_dead_letter
from service.ratelimit import AdaptiveRateLimiter
from service.retry import CircuitBreaker, full_jitter
from service.review.loops import loop_name, review_details
from service.routing import decide
from service.settings import Settings

log = logging.getLogger(__name__)

URL_FETCH_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class InputRecord:
    """The parts of a consumed Kafka record the pipeline needs (decoupled from aiokafka)."""

    source: Source
    key: bytes | None
    value: bytes | None
    headers: RawHeaders


class GaveUp(Exception):
    """The backend kept failing on this one image while serving others."""

    def __init__(self, code: str, attempts: int) -> None:
        super().__init__(code)
        self.code = code
        self.attempts = attempts


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        *,
        backend: ModerationBackend,
        fetcher: ImageFetcher,
        limiter: AdaptiveRateLimiter,
        breaker: CircuitBreaker,
        policy: RoutingPolicy,
        sink: SupportsPublish,
        metrics: Metrics,
        budget: ConcurrencyBudget,
        conditions: ActivationConditions | None = None,
        backend_name: str = "rekognition",
    ) -> None:
        self._settings = settings
        self._backend = backend
        self._fetcher = fetcher
        self._limiter = limiter
        self._breaker = breaker
        self._policy = policy
        self._sink = sink
        self._metrics = metrics
        self._budget = budget
        self._conditions = conditions
        self._backend_name = backend_name
        self._topics = {
            "approved": settings.kafka.approved_topic,
            "rejected": settings.kafka.rejected_topic,
            "review": settings.kafka.review_topic,
        }

    async def handle(self, record: InputRecord) -> str:
        """Process one record and publish its single outcome; returns the output's kind."""
        received_at = utc_now()
        started = time.monotonic()
        request: ModerationRequest | None = None
        attempts = 0
        try:
            request = parse_request(
                record.value,
                max_record_bytes=self._settings.kafka.max_input_bytes,
                max_image_bytes=self._settings.fetch.max_bytes,
            )
            image, attempts = await self._load_image(request)
            loop = loop_name(request)
            review_cfg = self._settings.review
            human_loop = (
                HumanLoopRequest(
                    loop, review_cfg.flow_definition_arn, review_cfg.content_classifiers
                )
                if review_cfg.flow_definition_arn is not None
                else None
            )
            result, attempts, loop_refused = await self._moderate(image, request, human_loop)
        except InputError as exc:
            tries = max(attempts, exc.attempts)
            await self.dead_letter(record, request, exc.reason, exc.message, tries)
            self._observe_done(record, started)
            return exc.reason.value
        except GaveUp as exc:
            message = f"backend kept failing with {exc.code} while serving other requests"
            await self.dead_letter(record, request, Reason.BACKEND_ERROR, message, exc.attempts)
            self._observe_done(record, started)
            return Reason.BACKEND_ERROR.value

        managed_arn = (result.human_loop or {}).get("HumanLoopArn")
        evaluation = None
        if self._conditions is not None and managed_arn is None:
            evaluation = evaluate(self._conditions, result.labels, request_key=loop)
        decision = decide(
            result.labels,
            self._policy,
            conditions_hold=evaluation.reasons if evaluation and evaluation.activated else None,
            human_loop_arn=managed_arn,
        )
        review = None
        if decision.verdict == "review":
            review = self._review(loop, result, evaluation, decision.reasons, loop_refused)
        value = verdict_record(
            request,
            verdict=decision.verdict,
            decided_by="model",
            labels=result.labels,
            model_version=result.model_version,
            reasons=decision.reasons,
            source=record.source,
            received_at=received_at,
            review=review,
        )
        headers = output_headers(
            record.headers, verdict=decision.verdict, decided_by="model", id=request.id
        )
        try:
            await self._sink.publish(
                self._topics[decision.verdict], request.id.encode(), value, headers
            )
        except RecordRefused as exc:
            # The verdict itself is refused (an input's attributes can make it too large): the
            # message still ends somewhere, with the reason, instead of wedging its partition.
            await self.dead_letter(record, request, Reason.OUTPUT_TOO_LARGE, str(exc), attempts)
            self._observe_done(record, started)
            return Reason.OUTPUT_TOO_LARGE.value
        self._metrics.verdicts.labels(verdict=decision.verdict, decided_by="model").inc()
        self._metrics.count_labels([label.name for label in result.labels])
        self._observe_done(record, started)
        return decision.verdict

    def _review(
        self,
        loop: str,
        result: ModerationResult,
        evaluation: Evaluation | None,
        reasons: list[dict[str, Any]],
        loop_refused: bool,
    ) -> dict[str, Any]:
        managed = result.human_loop if (result.human_loop or {}).get("HumanLoopArn") else None
        if managed is not None:
            mode = "managed"
            activation_reasons = list(managed.get("HumanLoopActivationReasons", []))
            activation_results = _json_or_text(
                managed.get("HumanLoopActivationConditionsEvaluationResults")
            )
        else:
            mode = "self_hosted"
            activation_reasons = evaluation.reasons if evaluation and evaluation.activated else []
            activation_results = evaluation.results if evaluation is not None else None
            if not activation_reasons:
                activation_reasons = [
                    f"{r['label']} confidence {r['confidence']:.1f} >= review threshold "
                    f"{r['threshold']:g}"
                    for r in reasons
                    if r["rule"] == "review_threshold"
                ]
        self._metrics.reviews_started.labels(mode=mode).inc()
        return review_details(
            loop=loop,
            mode=mode,
            flow_definition_arn=self._settings.review.flow_definition_arn,
            human_loop=managed,
            activation_reasons=activation_reasons,
            activation_results=activation_results,
            sla_s=self._settings.review.sla_s,
            fallback_reason="human_loop_quota_exceeded" if loop_refused else None,
        )

    def _observe_done(self, record: InputRecord, started: float) -> None:
        self._metrics.processing.observe(time.monotonic() - started)
        if record.source.timestamp_ms is not None:
            age = time.time() - record.source.timestamp_ms / 1000
            self._metrics.end_to_end.observe(max(0.0, age))

    async def _load_image(self, request: ModerationRequest) -> tuple[S3Image | bytes, int]:
        image = request.image
        if isinstance(image, S3Image):
            return image, 0
        if isinstance(image, BytesImage):
            return image.data, 0
        assert isinstance(image, UrlImage)
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._fetcher.fetch(image.url), attempt
            except InputError as exc:
                # Only a failure to reach the host may be passing; everything else is final.
                if exc.reason is not Reason.UNREACHABLE_URL or attempt >= URL_FETCH_ATTEMPTS:
                    suffix = f" (after {attempt} attempts)" if attempt > 1 else ""
                    raise InputError(exc.reason, exc.message + suffix, attempts=attempt) from exc
                await asyncio.sleep(full_jitter(attempt, base=0.5, cap=5.0))

    async def _moderate(
        self,
        image: S3Image | bytes,
        request: ModerationRequest,
        human_loop: HumanLoopRequest | None,
    ) -> tuple[ModerationResult, int, bool]:
        """The backend's answer, the attempts it took, and whether A2I refused a human loop."""
        min_confidence = request.min_confidence
        if min_confidence is None:
            min_confidence = self._settings.backend.default_min_confidence
        attempt = 0
        server_errors = 0
        successes_at_first_error: int | None = None
        loop_refused = False
        while True:
            probe = await self._breaker.admit()
            issued_at = await self._limiter.acquire()
            attempt += 1
            try:
                result = await self._call(image, min_confidence, human_loop)
            except BackendError as exc:
                if exc.human_loop_quota:
                    # Too many reviews in progress: hold (retry later, gently) or decide now
                    # without a managed loop and let the self-hosted path take the review.
                    if self._settings.review.quota_fallback == "policy":
                        human_loop, loop_refused = None, True
                        continue
                    await asyncio.sleep(full_jitter(attempt, base=1.0, cap=60.0))
                    continue
                if exc.throttled:
                    self._limiter.on_throttled(issued_at)
                    await asyncio.sleep(full_jitter(attempt, base=0.05, cap=2.0))
                    continue
                self._breaker.record_failure(probe=probe)
                if successes_at_first_error is None:
                    successes_at_first_error = self._breaker.successes
                if exc.retriable:
                    server_errors += 1
                    serving_others = self._breaker.successes > successes_at_first_error
                    if server_errors >= self._settings.backend.max_attempts and serving_others:
                        raise GaveUp(exc.code, attempt) from exc
                else:
                    log.error("backend unavailable (%s); waiting, not dead-lettering", exc)
                await asyncio.sleep(full_jitter(attempt, base=0.1, cap=20.0))
                continue
            self._breaker.record_success()
            return result, attempt, loop_refused

    async def _call(
        self, image: S3Image | bytes, min_confidence: float, human_loop: HumanLoopRequest | None
    ) -> ModerationResult:
        """One backend call, counted by outcome and timed (without any backoff around it)."""
        outcome = "error"
        started = time.monotonic()
        try:
            result = await self._backend.moderate(image, min_confidence, human_loop)
        except InputError:
            outcome = "rejected"
            raise
        except BackendError as exc:
            outcome = "throttled" if exc.throttled else "error"
            raise
        else:
            outcome = "ok"
            return result
        finally:
            backend = self._backend_name
            elapsed = time.monotonic() - started
            self._budget.observe(elapsed)
            self._metrics.backend_latency.labels(backend=backend).observe(elapsed)
            self._metrics.backend_calls.labels(backend=backend, outcome=outcome).inc()

    async def dead_letter(
        self,
        record: InputRecord,
        request: ModerationRequest | None,
        reason: str,
        message: str,
        attempts: int,
    ) -> None:
        if request is not None:
            request_id: str | None = request.id
        else:
            request_id = id_of_invalid(record.value, self._settings.kafka.max_input_bytes)
        log.info(
            "dead-lettering %s: %s (%s)",
            request_id or "<unparsed>",
            reason,
            message,
            extra={
                "message_id": request_id,
                "topic": record.source.topic,
                "partition": record.source.partition,
                "offset": record.source.offset,
                "reason": str(reason),
            },
        )
        letter = DeadLetter(
            source=record.source,
            key=record.key,
            value=record.value,
            headers=record.headers,
            reason=reason,
            message=message,
            attempts=attempts,
            request_id=request_id,
            consumer="pipeline",
        )
        await publish_dead_letter(
            self._sink,
            self._settings.kafka.dlq_topic,
            letter,
            max_record_bytes=self._settings.safety.dlq_max_record_bytes,
        )
        self._metrics.dead_letters.labels(reason=reason).inc()


def _json_or_text(value: object) -> object:
    """Rekognition returns the evaluation results as a JSON string; keep them structured."""
    if isinstance(value, str):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value
