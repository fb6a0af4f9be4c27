"""One input record, end to end: parse, load, normalize, match, analyze, decide, publish.

The stages (:mod:`service.stages`) each do one step with typed input and output; this module runs
them in order and accounts for every input: it ends in exactly one verdict topic or, with its
reason, in the DLQ. ``handle`` never raises for a bad message, and backend trouble never
dead-letters healthy input (the analyze stage waits it out); only an input the backend keeps
failing on while it serves others is given up.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from service.activation import ActivationConditions
from service.backends.base import ModerationBackend
from service.capacity import ConcurrencyBudget, InFlightBytes
from service.clock import utc_now
from service.errors import GaveUp, InputError, Reason, RecordRefused
from service.kafka.publisher import SupportsPublish, publish_dead_letter
from service.messages import DeadLetter, ModerationRequest, RawHeaders, Source, id_of_invalid
from service.metrics import PipelineMetrics
from service.policy import RoutingPolicy
from service.ratelimit import AdaptiveRateLimiter
from service.retry import CircuitBreaker
from service.review.loops import loop_name
from service.settings import Settings
from service.stages.analyze import Analyzer
from service.stages.decide import Decider
from service.stages.load import ImageLoader, SupportsFetch
from service.stages.match import Matcher
from service.stages.normalize import Normalizer, SupportsObjectRead
from service.stages.parse import RequestParser
from service.stages.publish import VerdictPublisher

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InputRecord:
    """The parts of a consumed Kafka record the pipeline needs (decoupled from aiokafka)."""

    source: Source
    key: bytes | None
    value: bytes | None
    headers: RawHeaders


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        *,
        backend: ModerationBackend,
        fetcher: SupportsFetch,
        limiter: AdaptiveRateLimiter,
        breaker: CircuitBreaker,
        policy: RoutingPolicy,
        sink: SupportsPublish,
        metrics: PipelineMetrics,
        budget: ConcurrencyBudget,
        conditions: ActivationConditions | None = None,
        backend_name: str = "rekognition",
        objects: SupportsObjectRead | None = None,
        in_flight: InFlightBytes | None = None,
    ) -> None:
        """``objects``: reads S3 objects (None: S3 references go to a backend that reads S3 as
        they are, and are refused by one that cannot); ``in_flight``: the byte budget that
        downloaded originals count against."""
        self._settings = settings
        self._in_flight = in_flight or InFlightBytes()
        self._sink = sink
        self._metrics = metrics
        self._parser = RequestParser(
            max_record_bytes=settings.kafka.max_input_bytes,
            max_image_bytes=settings.fetch.max_bytes,
        )
        self._loader = ImageLoader(fetcher)
        self._normalizer = Normalizer(
            backend.input,
            settings.images,
            metrics=metrics,
            objects=objects,
            max_download_bytes=settings.fetch.max_bytes,
            in_flight=self._in_flight,
        )
        self._matcher = Matcher()
        self._analyzer = Analyzer(
            backend,
            backend_name=backend_name,
            settings=settings.backend,
            review=settings.review,
            limiter=limiter,
            breaker=breaker,
            budget=budget,
            metrics=metrics,
        )
        self._decider = Decider(policy, settings.review, conditions)
        self._publisher = VerdictPublisher(sink, settings.kafka)

    async def handle(self, record: InputRecord) -> str:
        """Process one record and publish its single outcome; returns the output's kind."""
        received_at = utc_now()
        started = time.monotonic()
        request: ModerationRequest | None = None
        attempts = 0
        body = _UrlBody(self._in_flight)  # a URL's body, held from before it is read until done
        try:
            request = self._parser.parse(record.value)
            loaded = await self._loader.load(request, body.reserve)
            attempts = loaded.attempts
            if isinstance(loaded.content, bytes):
                body.shrink(len(loaded.content))
            image = await self._normalizer.normalize(loaded)
            image = await self._matcher.match(image)
            loop = loop_name(request)
            analysis = await self._analyzer.analyze(request, image, loop)
            outcome = self._decider.decide(loop, analysis)
            if (
                outcome.verdict == "review"
                and outcome.review_mode != "managed"
                and len(analysis.frames) > 1
                and self._analyzer.managed_review(loop) is not None
            ):
                # Animations are analyzed without a managed loop; the deciding frame goes
                # again with one, so A2I (and its conditions) decide whether people look.
                analysis = await self._analyzer.review_frame(request, analysis, outcome.frame, loop)
                outcome = self._decider.decide(loop, analysis)
        except InputError as exc:
            tries = max(attempts, exc.attempts)
            return await self._dead_lettered(
                record, request, exc.reason, exc.message, tries, started=started
            )
        except GaveUp as exc:
            message = f"backend kept failing with {exc.code} while serving other requests"
            return await self._dead_lettered(
                record, request, Reason.BACKEND_ERROR, message, exc.attempts, started=started
            )
        finally:
            body.release()

        if outcome.review_mode is not None:
            self._metrics.reviews_started.labels(mode=outcome.review_mode).inc()
        try:
            await self._publisher.publish(
                request,
                analysis,
                outcome,
                source=record.source,
                headers=record.headers,
                received_at=received_at,
            )
        except RecordRefused as exc:
            # The verdict itself is refused (an input's attributes can make it too large): the
            # message still ends somewhere, with the reason, instead of wedging its partition.
            return await self._dead_lettered(
                record,
                request,
                Reason.OUTPUT_TOO_LARGE,
                str(exc),
                analysis.attempts,
                started=started,
            )
        self._metrics.verdicts.labels(verdict=outcome.verdict, decided_by="model").inc()
        self._metrics.count_labels([label.name for label in analysis.labels])
        self._observe_done(record, started)
        return outcome.verdict

    async def close(self) -> None:
        """Shut the decode pool down (after in-flight work drained or was cancelled)."""
        await self._normalizer.close()

    async def _dead_lettered(
        self,
        record: InputRecord,
        request: ModerationRequest | None,
        reason: Reason,
        message: str,
        attempts: int,
        *,
        started: float,
    ) -> str:
        await self.dead_letter(record, request, reason, message, attempts)
        self._observe_done(record, started)
        return reason.value

    def _observe_done(self, record: InputRecord, started: float) -> None:
        self._metrics.processing.observe(time.monotonic() - started)
        if record.source.timestamp_ms is not None:
            age = time.time() - record.source.timestamp_ms / 1000
            self._metrics.end_to_end.observe(max(0.0, age))

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


class _UrlBody:
    """The in-flight bytes held for one message's URL download: reserved before the body is
    read (each attempt anew), cut to its size once it is in, released when the message is done."""

    def __init__(self, in_flight: InFlightBytes) -> None:
        self._in_flight = in_flight
        self.held = 0

    async def reserve(self, size: int) -> None:
        self.release()  # what an earlier attempt held
        await self._in_flight.reserve(size)
        self.held = size

    def shrink(self, size: int) -> None:
        if size < self.held:
            self._in_flight.release(self.held - size)
            self.held = size

    def release(self) -> None:
        if self.held:
            self._in_flight.release(self.held)
            self.held = 0
