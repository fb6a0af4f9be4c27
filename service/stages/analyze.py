"""Analyze: the backend's labels for one image, through the limiter, the breaker and retries.

Backend trouble never dead-letters healthy input: Throttled slows the shared limiter and
retries; BackendUnavailable (an outage) opens the circuit breaker and the call waits (which, with
the in-flight cap, pauses intake); HumanLoopQuotaExceeded holds or decides without the managed
loop. Only an input the backend keeps failing on while it serves others gives up (GaveUp).
Calls beyond the backend's own ``max_concurrency`` wait for a free slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Literal

from service.backends.base import (
    HumanLoopRequest,
    ManagedReviewBackend,
    ModerationBackend,
    ModerationResult,
)
from service.capacity import ConcurrencyBudget
from service.errors import BackendError, GaveUp, HumanLoopQuotaExceeded, InputError, Throttled
from service.messages import ModerationRequest, S3Image
from service.metrics import PipelineMetrics
from service.ratelimit import AdaptiveRateLimiter
from service.retry import CircuitBreaker, full_jitter
from service.settings import BackendSettings, ReviewSettings
from service.stages.load import LoadedImage

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Analysis:
    result: ModerationResult
    attempts: int  # backend calls it took
    review_refused: bool  # A2I's quota refused the managed loop: decided without it


class Analyzer:
    def __init__(
        self,
        backend: ModerationBackend,
        *,
        backend_name: str,
        settings: BackendSettings,
        review: ReviewSettings,
        limiter: AdaptiveRateLimiter,
        breaker: CircuitBreaker,
        budget: ConcurrencyBudget,
        metrics: PipelineMetrics,
    ) -> None:
        self._backend = backend
        self._backend_name = backend_name
        self._settings = settings
        self._review = review
        self._limiter = limiter
        self._breaker = breaker
        self._budget = budget
        self._metrics = metrics
        # Managed review is a capability: asked for only when configured and the backend has it.
        self._reviewer = backend if isinstance(backend, ManagedReviewBackend) else None
        if review.flow_definition_arn is not None and self._reviewer is None:
            log.warning(
                "the %s backend cannot start managed reviews; reviews are self-hosted",
                backend_name,
            )
        slots = backend.max_concurrency
        self._slots = asyncio.Semaphore(slots) if slots is not None else None

    def managed_review(self, loop: str) -> HumanLoopRequest | None:
        """The managed review to ask for with this image's call, when there is one to ask for."""
        arn = self._review.flow_definition_arn
        if arn is None or self._reviewer is None:
            return None
        return HumanLoopRequest(loop, arn, self._review.content_classifiers)

    async def analyze(self, request: ModerationRequest, image: LoadedImage, loop: str) -> Analysis:
        """The backend's answer; InputError for the image's problems, GaveUp for a lost cause."""
        min_confidence = request.min_confidence
        if min_confidence is None:
            min_confidence = self._settings.default_min_confidence
        review = self.managed_review(loop)
        attempt = 0
        server_errors = 0
        successes_at_first_error: int | None = None
        review_refused = False
        while True:
            probe = await self._breaker.admit()
            attempt += 1
            issued_at = 0.0
            try:
                async with self._slots or contextlib.nullcontext():
                    issued_at = await self._limiter.acquire()
                    result = await self._call(image.content, min_confidence, review)
            except HumanLoopQuotaExceeded:
                # Too many reviews in progress: hold (retry later, gently) or decide now
                # without a managed loop and let the self-hosted path take the review.
                if self._review.quota_fallback == "policy":
                    review, review_refused = None, True
                    continue
                await asyncio.sleep(full_jitter(attempt, base=1.0, cap=60.0))
                continue
            except Throttled:
                self._limiter.on_throttled(issued_at)
                await asyncio.sleep(full_jitter(attempt, base=0.05, cap=2.0))
                continue
            except BackendError as exc:
                self._breaker.record_failure(probe=probe)
                if successes_at_first_error is None:
                    successes_at_first_error = self._breaker.successes
                if exc.retriable:
                    server_errors += 1
                    serving_others = self._breaker.successes > successes_at_first_error
                    if server_errors >= self._settings.max_attempts and serving_others:
                        raise GaveUp(exc.code, attempt) from exc
                else:
                    log.error("backend unavailable (%s); waiting, not dead-lettering", exc)
                await asyncio.sleep(full_jitter(attempt, base=0.1, cap=20.0))
                continue
            self._breaker.record_success()
            return Analysis(result, attempt, review_refused)

    async def _call(
        self, image: S3Image | bytes, min_confidence: float, review: HumanLoopRequest | None
    ) -> ModerationResult:
        """One backend call, counted by outcome and timed (without any backoff around it)."""
        outcome: Literal["ok", "throttled", "error", "rejected"] = "error"
        started = time.monotonic()
        try:
            if review is not None and self._reviewer is not None:
                result = await self._reviewer.moderate_with_review(image, min_confidence, review)
            else:
                result = await self._backend.moderate(image, min_confidence)
        except InputError:
            outcome = "rejected"
            raise
        except Throttled:
            outcome = "throttled"
            raise
        else:
            outcome = "ok"
            return result
        finally:
            elapsed = time.monotonic() - started
            self._budget.observe(elapsed)
            self._metrics.backend_latency.labels(backend=self._backend_name).observe(elapsed)
            self._metrics.backend_calls.labels(backend=self._backend_name, outcome=outcome).inc()
