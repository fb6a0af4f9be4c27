"""Analyze: the backend's labels for each frame of one image, through the limiter, the breaker and
retries (each frame is one call and counts against the quota).

Backend trouble never dead-letters healthy input: Throttled slows the shared limiter and
retries; BackendUnavailable (an outage) opens the circuit breaker and the call waits (which, with
the in-flight cap, pauses intake); HumanLoopQuotaExceeded holds or decides without the managed
loop. Only an input the backend keeps failing on while it serves others gives up (GaveUp).
Calls beyond the backend's own ``max_concurrency`` wait for a free slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from service.backends.base import (
    BackendImage,
    HumanLoopRequest,
    ManagedReviewBackend,
    ModerationBackend,
    ModerationResult,
)
from service.capacity import ConcurrencyBudget
from service.errors import BackendError, GaveUp, HumanLoopQuotaExceeded, InputError, Throttled
from service.messages import Label, ModerationRequest
from service.metrics import PipelineMetrics
from service.ratelimit import AdaptiveRateLimiter
from service.retry import CircuitBreaker, full_jitter
from service.settings import BackendSettings, ReviewSettings
from service.stages.normalize import PreparedImage

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class FrameResult:
    index: int  # the frame's position in the source (0 for a still image)
    result: ModerationResult


@dataclass(frozen=True, slots=True)
class Analysis:
    image: PreparedImage
    frames: tuple[FrameResult, ...]  # one per frame analyzed, in the source's order
    attempts: int  # backend calls it took, every frame's
    review_refused: bool  # A2I's quota refused the managed loop: decided without it

    @property
    def labels(self) -> list[Label]:
        """Every frame's labels; an animation's carry their frame's index."""
        if not self.image.animated:
            return [label for frame in self.frames for label in frame.result.labels]
        return [
            dataclasses.replace(label, frame=frame.index)
            for frame in self.frames
            for label in frame.result.labels
        ]

    @property
    def model_version(self) -> str | None:
        return self.frames[0].result.model_version


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

    async def analyze(
        self, request: ModerationRequest, image: PreparedImage, loop: str
    ) -> Analysis:
        """The backend's answer for every frame; InputError for the image's problems, GaveUp
        for a lost cause.

        Each frame is one call through the limiter, all of an image's frames at once. A managed
        review is asked for with a single frame's call only: for an animation, the pipeline
        re-sends the frame that decided a review with :meth:`review_frame`.
        """
        min_confidence = self._min_confidence(request)
        review = self.managed_review(loop) if len(image.frames) == 1 else None
        calls = [self._moderate(frame.image, min_confidence, review) for frame in image.frames]
        answers = await _all(calls)
        frames = tuple(
            FrameResult(frame.index, result)
            for frame, (result, _, _) in zip(image.frames, answers, strict=True)
        )
        attempts = sum(tries for _, tries, _ in answers)
        refused = any(refused for _, _, refused in answers)
        return Analysis(image, frames, attempts, refused)

    async def review_frame(
        self, request: ModerationRequest, analysis: Analysis, index: int, loop: str
    ) -> Analysis:
        """The analysis with frame ``index`` analyzed again, this time asking for the managed
        review (A2I then decides whether people look at it); unchanged without managed review."""
        review = self.managed_review(loop)
        if review is None:
            return analysis
        (frame,) = (frame for frame in analysis.image.frames if frame.index == index)
        result, tries, refused = await self._moderate(
            frame.image, self._min_confidence(request), review
        )
        frames = tuple(
            FrameResult(index, result) if done.index == index else done for done in analysis.frames
        )
        return Analysis(
            analysis.image, frames, analysis.attempts + tries, analysis.review_refused or refused
        )

    def _min_confidence(self, request: ModerationRequest) -> float:
        if request.min_confidence is None:
            return self._settings.default_min_confidence
        return request.min_confidence

    async def _moderate(
        self, image: BackendImage, min_confidence: float, review: HumanLoopRequest | None
    ) -> tuple[ModerationResult, int, bool]:
        """One frame's answer with the calls it took and whether A2I refused the loop."""
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
                    result = await self._call(image, min_confidence, review)
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
            self._metrics.frames_analyzed.inc()
            return result, attempt, review_refused

    async def _call(
        self, image: BackendImage, min_confidence: float, review: HumanLoopRequest | None
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


async def _all(calls: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Every call's result, run together; the first failure cancels the others and is raised
    as itself (an InputError or GaveUp for the whole image)."""
    if len(calls) == 1:
        return [await calls[0]]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(call) for call in calls]
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]
