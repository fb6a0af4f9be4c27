"""The pipeline's stages in order, in memory: every input ends in one verdict topic or the DLQ.

A scripted backend (our ModerationBackend protocol), a scripted fetcher and a sink that keeps
what it was given stand in for the model, the web and the broker; the limiter, the breaker and
the budget are the real ones.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry

from service.activation import parse_conditions
from service.backends.base import BackendImage, HumanLoopRequest, ManagedReview, ModerationResult
from service.capacity import ConcurrencyBudget, InFlightBytes
from service.errors import (
    BackendError,
    BackendUnavailable,
    HumanLoopQuotaExceeded,
    InputError,
    Reason,
    RecordRefused,
    Throttled,
)
from service.imaging.spec import REKOGNITION_INPUT, BackendInput
from service.messages import Headers, Label, S3Image, Source
from service.metrics import PipelineMetrics
from service.pipeline import InputRecord, Pipeline
from service.policy import RoutingPolicy, Thresholds
from service.ratelimit import AdaptiveRateLimiter
from service.retry import CircuitBreaker
from service.settings import Settings
from tests import image_files

SETTINGS = Settings.from_env({"MODERATION_MAX_ATTEMPTS": "2"})
TOPICS = SETTINGS.kafka
FLOW = "arn:aws:sagemaker:us-east-1:000000000000:flow-definition/moderation"
POLICY = RoutingPolicy(Thresholds(reject=80.0, review=50.0))
MILD = Label("Alcohol", "", 20.0, 1)
BORDERLINE = Label("Swimwear or Underwear", "", 65.0, 1)
EXPLICIT = Label("Explicit", "", 97.0, 1)

Answer = list[Label] | ManagedReview | BaseException


class Backend:
    """Answers each call with the next scripted answer (labels, or an error to raise)."""

    def __init__(self, *answers: Answer, max_concurrency: int | None = None) -> None:
        self.answers = list(answers)
        self.max_concurrency = max_concurrency
        self.input: BackendInput = REKOGNITION_INPUT
        self.calls: list[BackendImage] = []
        self.reviews: list[HumanLoopRequest] = []
        self.inside = 0
        self.most_inside = 0
        self.on_call: Callable[[], None] = lambda: None

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def moderate(self, image: BackendImage, min_confidence: float) -> ModerationResult:
        self.calls.append(image)
        self.on_call()
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        try:
            for _ in range(3):  # let other calls run meanwhile, as a real call would
                await asyncio.sleep(0)
            answer = self.answers.pop(0) if self.answers else [MILD]
        finally:
            self.inside -= 1
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, ManagedReview):
            return ModerationResult([BORDERLINE], "test-model", answer)
        return ModerationResult(answer, "test-model")


class ReviewingBackend(Backend):
    """A backend with the managed-review capability."""

    async def moderate_with_review(
        self, image: BackendImage, min_confidence: float, review: HumanLoopRequest
    ) -> ModerationResult:
        self.reviews.append(review)
        return await self.moderate(image, min_confidence)


class Fetcher:
    """Answers each fetch with the next scripted body or error; like ImageFetcher, it reserves
    a body's size (``declared``, else the body's own) before handing it over."""

    def __init__(self, *answers: bytes | InputError, declared: int | None = None) -> None:
        self.answers = list(answers)
        self.urls: list[str] = []
        self.declared = declared
        self.on_reserved: Callable[[], None] = lambda: None

    async def fetch(
        self, url: str, *, reserve: Callable[[int], Awaitable[None]] | None = None
    ) -> bytes:
        self.urls.append(url)
        answer = self.answers.pop(0)
        if reserve is not None:
            size = len(answer) if isinstance(answer, bytes) else 0
            await reserve(self.declared if self.declared is not None else size)
            self.on_reserved()
        if isinstance(answer, InputError):
            raise answer
        return answer


class Sink:
    """Keeps every published record; refuses the topics in ``refuse`` as the broker would."""

    def __init__(self, refuse: frozenset[str] = frozenset()) -> None:
        self.records: list[tuple[str, bytes | None, dict[str, Any], Headers]] = []
        self.refuse = refuse

    async def publish(self, topic: str, key: bytes | None, value: bytes, headers: Headers) -> None:
        if topic in self.refuse:
            raise RecordRefused(topic, "MessageSizeTooLargeError", "too large")
        self.records.append((topic, key, orjson.loads(value), headers))

    def only(self) -> tuple[str, dict[str, Any]]:
        assert len(self.records) == 1, self.records
        topic, _, value, _ = self.records[0]
        return topic, value


@dataclasses.dataclass
class Harness:
    pipeline: Pipeline
    sink: Sink
    breaker: CircuitBreaker
    registry: CollectorRegistry

    async def handle(self, value: bytes | None, offset: int = 0) -> str:
        return await self.pipeline.handle(
            InputRecord(Source("input", 0, offset), b"key", value, [])
        )

    def counter(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(f"moderation_{name}_total", labels) or 0.0


def harness(
    backend: Backend,
    *,
    fetcher: Fetcher | None = None,
    sink: Sink | None = None,
    settings: Settings = SETTINGS,
    conditions: str | None = None,
    in_flight: InFlightBytes | None = None,
) -> Harness:
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    limiter = AdaptiveRateLimiter(1000.0, 1000.0)
    breaker = CircuitBreaker(threshold=2, cooldown_s=0.01)
    sink = sink or Sink()
    pipeline = Pipeline(
        settings,
        backend=backend,
        fetcher=fetcher or Fetcher(),
        limiter=limiter,
        breaker=breaker,
        policy=POLICY,
        sink=sink,
        metrics=metrics,
        budget=ConcurrencyBudget(limiter, ceiling=16),
        conditions=parse_conditions(conditions, source="test") if conditions else None,
        backend_name="test",
        in_flight=in_flight,
    )
    return Harness(pipeline, sink, breaker, registry)


def request(request_id: str = "r1", image: dict[str, Any] | None = None) -> bytes:
    body = {"id": request_id, "image": image or {"s3": {"bucket": "b", "key": "k.jpg"}}}
    return orjson.dumps(body)


def with_review(settings: Settings, **changes: Any) -> Settings:
    return settings.model_copy(update={"review": settings.review.model_copy(update=changes)})


@pytest.mark.parametrize(
    ("labels", "verdict", "topic"),
    [
        ([MILD], "approved", TOPICS.approved_topic),
        ([EXPLICIT, BORDERLINE], "rejected", TOPICS.rejected_topic),
        ([BORDERLINE], "review", TOPICS.review_topic),
    ],
)
async def test_labels_route_to_one_verdict_topic(
    labels: list[Label], verdict: str, topic: str
) -> None:
    h = harness(Backend(labels))
    assert await h.handle(request()) == verdict
    published, record = h.sink.only()
    assert published == topic
    assert record["verdict"] == verdict
    assert record["id"] == "r1"
    assert record["model_version"] == "test-model"
    assert record["labels"] == [label.as_json() for label in labels]
    assert h.counter("verdicts", verdict=verdict, decided_by="model") == 1


async def test_a_self_hosted_review_says_which_labels_sent_it() -> None:
    h = harness(Backend([BORDERLINE]))
    await h.handle(request())
    _, record = h.sink.only()
    review = record["review"]
    assert review["mode"] == "self_hosted"
    assert review["human_loop_arn"] is None
    assert review["activation_reasons"] == [
        "Swimwear or Underwear confidence 65.0 >= review threshold 50"
    ]
    assert h.counter("reviews_started", mode="self_hosted") == 1


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, Reason.MALFORMED_JSON),
        (b"{not json", Reason.MALFORMED_JSON),
        (b'{"image": {"s3": {"bucket": "b", "key": "k"}}}', Reason.MISSING_FIELD),
        (b'{"id": "r1", "image": {"bytes": "%%%"}}', Reason.INVALID_BASE64),
    ],
)
async def test_unparsable_input_goes_to_the_dlq_unanalysed(
    value: bytes | None, reason: Reason
) -> None:
    backend = Backend()
    h = harness(backend)
    assert await h.handle(value) == reason.value
    topic, letter = h.sink.only()
    assert topic == TOPICS.dlq_topic
    assert letter["error"]["reason"] == reason.value
    assert letter["consumer"] == "pipeline"
    assert backend.calls == []
    assert h.counter("dlq", reason=reason.value) == 1


async def test_an_image_the_backend_refuses_goes_to_the_dlq() -> None:
    h = harness(Backend(InputError(Reason.INVALID_IMAGE_FORMAT, "not a JPEG or PNG")))
    assert await h.handle(request()) == "invalid_image_format"
    topic, letter = h.sink.only()
    assert topic == TOPICS.dlq_topic
    assert letter["id"] == "r1"
    assert letter["error"] == {"reason": "invalid_image_format", "message": "not a JPEG or PNG"}
    assert h.counter("backend_calls", backend="test", outcome="rejected") == 1


async def test_a_forbidden_url_is_not_retried() -> None:
    fetcher = Fetcher(InputError(Reason.FORBIDDEN_URL, "loopback"))
    h = harness(Backend(), fetcher=fetcher)
    assert await h.handle(request(image={"url": "http://127.0.0.1/a.png"})) == "forbidden_url"
    _, letter = h.sink.only()
    assert letter["attempts"] == 1
    assert fetcher.urls == ["http://127.0.0.1/a.png"]


async def test_an_unreachable_url_is_retried_then_dead_lettered() -> None:
    unreachable = InputError(Reason.UNREACHABLE_URL, "connection refused")
    fetcher = Fetcher(unreachable, unreachable, unreachable)
    h = harness(Backend(), fetcher=fetcher)
    assert await h.handle(request(image={"url": "http://example.com/a.png"})) == "unreachable_url"
    _, letter = h.sink.only()
    assert letter["attempts"] == 3
    assert letter["error"]["message"] == "connection refused (after 3 attempts)"


async def test_a_url_image_is_fetched_and_analysed() -> None:
    fetched = image_files.png()
    fetcher = Fetcher(InputError(Reason.UNREACHABLE_URL, "reset"), fetched)
    backend = Backend([MILD])
    h = harness(backend, fetcher=fetcher)
    assert await h.handle(request(image={"url": "http://example.com/a.png"})) == "approved"
    assert backend.calls == [fetched]  # within Rekognition's limits: passed through untouched


async def test_a_url_body_is_held_from_before_it_is_read_until_the_message_is_done() -> None:
    mib = 1024 * 1024
    in_flight = InFlightBytes(64 * mib)
    body = image_files.png(120, 90)
    # No Content-Length: each attempt holds the download limit while the body arrives.
    fetcher = Fetcher(InputError(Reason.UNREACHABLE_URL, "reset"), body, declared=50 * mib)
    held: list[int] = []
    fetcher.on_reserved = lambda: held.append(in_flight.total)
    backend = Backend([MILD])
    backend.on_call = lambda: held.append(in_flight.total)
    h = harness(backend, fetcher=fetcher, in_flight=in_flight)
    assert await h.handle(request(image={"url": "http://example.com/a.png"})) == "approved"
    # The retry holds no more than the first attempt did; once read, the body holds its size.
    assert held == [50 * mib, 50 * mib, len(body)]
    assert in_flight.total == 0


async def test_a_verdict_the_broker_refuses_is_dead_lettered_instead() -> None:
    h = harness(Backend([MILD]), sink=Sink(refuse=frozenset({TOPICS.approved_topic})))
    assert await h.handle(request()) == "output_too_large"
    topic, letter = h.sink.only()
    assert topic == TOPICS.dlq_topic
    assert letter["error"]["reason"] == "output_too_large"
    assert h.counter("verdicts", verdict="approved", decided_by="model") == 0


async def test_throttled_calls_are_retried_not_dead_lettered() -> None:
    backend = Backend(
        Throttled("ThrottlingException", "slow down"), Throttled("T", "again"), [MILD]
    )
    h = harness(backend)
    assert await h.handle(request()) == "approved"
    assert len(backend.calls) == 3
    assert h.counter("backend_calls", backend="test", outcome="throttled") == 2
    assert h.counter("backend_calls", backend="test", outcome="ok") == 1


async def test_an_outage_is_waited_out_behind_the_breaker() -> None:
    # More failures than MODERATION_MAX_ATTEMPTS: an outage is never the input's fault.
    outage = [BackendUnavailable("AccessDeniedException", "no") for _ in range(3)]
    backend = Backend(*outage, [MILD])
    h = harness(backend)
    breaker_open: list[bool] = []
    backend.on_call = lambda: breaker_open.append(h.breaker.is_open)
    assert await h.handle(request()) == "approved"
    assert breaker_open == [False, False, True, True]  # the last calls were the breaker's probes
    assert not h.breaker.is_open
    assert [topic for topic, *_ in h.sink.records] == [TOPICS.approved_topic]


class FailsOneImage(Backend):
    """Fails ``bad.jpg`` ``failures`` times, each retry only once another image was served."""

    def __init__(self, error: BackendError, failures: int) -> None:
        super().__init__()
        self.error = error
        self.failures = failures
        self.failed = 0
        self.served_other = asyncio.Event()

    async def moderate(self, image: BackendImage, min_confidence: float) -> ModerationResult:
        if isinstance(image, S3Image) and image.key == "bad.jpg" and self.failed < self.failures:
            if self.failed:
                await self.served_other.wait()
            self.failed += 1
            raise self.error
        result = await super().moderate(image, min_confidence)
        self.served_other.set()
        return result


BAD = request("bad", {"s3": {"bucket": "b", "key": "bad.jpg"}})


async def test_an_input_the_backend_keeps_failing_while_serving_others_is_given_up() -> None:
    h = harness(FailsOneImage(BackendError("InternalServerError", "boom"), failures=5))
    outcomes = await asyncio.gather(h.handle(BAD, 0), h.handle(request("good"), 1))
    assert list(outcomes) == ["backend_error", "approved"]
    letters = [value for topic, _, value, _ in h.sink.records if topic == TOPICS.dlq_topic]
    assert [letter["id"] for letter in letters] == ["bad"]
    assert letters[0]["attempts"] == 2  # MODERATION_MAX_ATTEMPTS
    assert "InternalServerError" in letters[0]["error"]["message"]


async def test_an_unavailable_backend_is_never_given_up_on() -> None:
    # Even while other images are served: credentials or permissions are not the input's fault.
    h = harness(FailsOneImage(BackendUnavailable("AccessDeniedException", "no"), failures=3))
    outcomes = await asyncio.gather(h.handle(BAD, 0), h.handle(request("good"), 1))
    assert list(outcomes) == ["approved", "approved"]


async def test_calls_wait_for_a_free_slot_of_the_backend() -> None:
    backend = Backend(max_concurrency=1)
    h = harness(backend)
    outcomes = await asyncio.gather(*(h.handle(request(f"r{n}"), n) for n in range(4)))
    assert outcomes == ["approved"] * 4
    assert backend.most_inside == 1


async def test_a_managed_review_is_published_as_the_backend_typed_it() -> None:
    started = ManagedReview(
        loop_arn="arn:aws:sagemaker:us-east-1:000000000000:human-loop/m1",
        activation_reasons=("ConditionsEvaluation",),
        conditions_evaluation={"Conditions": [{"EvaluationResult": True}]},
    )
    backend = ReviewingBackend(started)
    settings = with_review(SETTINGS, flow_definition_arn=FLOW, content_classifiers=())
    h = harness(backend, settings=settings)
    assert await h.handle(request()) == "review"
    topic, record = h.sink.only()
    assert topic == TOPICS.review_topic
    assert record["reasons"][0] == {
        "rule": "human_loop_started",
        "policy": "a2i",
        "human_loop_arn": started.loop_arn,
    }
    review = record["review"]
    assert review["mode"] == "managed"
    assert review["flow_definition_arn"] == FLOW
    assert review["human_loop_arn"] == started.loop_arn
    assert review["activation_reasons"] == ["ConditionsEvaluation"]
    assert review["activation_results"] == {"Conditions": [{"EvaluationResult": True}]}
    (asked,) = backend.reviews
    assert asked.name == review["human_loop_name"]
    assert asked.flow_definition_arn == FLOW
    assert h.counter("reviews_started", mode="managed") == 1


async def test_without_the_capability_reviews_are_self_hosted() -> None:
    backend = Backend([BORDERLINE])  # no moderate_with_review
    settings = with_review(SETTINGS, flow_definition_arn=FLOW)
    h = harness(backend, settings=settings)
    assert await h.handle(request()) == "review"
    _, record = h.sink.only()
    assert record["review"]["mode"] == "self_hosted"


async def test_a_refused_managed_loop_falls_back_to_the_policy_when_asked() -> None:
    backend = ReviewingBackend(HumanLoopQuotaExceeded("HumanLoopQuotaExceededException", "full"))
    backend.answers.append([BORDERLINE])
    settings = with_review(SETTINGS, flow_definition_arn=FLOW, quota_fallback="policy")
    h = harness(backend, settings=settings)
    assert await h.handle(request()) == "review"
    _, record = h.sink.only()
    assert record["review"]["mode"] == "self_hosted"
    assert record["review"]["fallback_reason"] == "human_loop_quota_exceeded"
    assert len(backend.reviews) == 1  # the second call asked for no managed loop


ALCOHOL_OVER_10 = orjson.dumps(
    {
        "Conditions": [
            {
                "ConditionType": "ModerationLabelConfidenceCheck",
                "ConditionParameters": {
                    "ModerationLabelName": "Alcohol",
                    "ConfidenceGreaterThan": 10,
                },
            }
        ]
    }
).decode()


async def test_activation_conditions_send_an_image_to_review() -> None:
    h = harness(Backend([MILD]), conditions=ALCOHOL_OVER_10)
    assert await h.handle(request()) == "review"
    _, record = h.sink.only()
    assert record["reasons"][0]["rule"] == "activation_conditions"
    review = record["review"]
    assert review["mode"] == "self_hosted"
    assert review["activation_reasons"] == record["reasons"][0]["conditions"]
    assert review["activation_reasons"]
    assert review["activation_results"]["Conditions"][0]["EvaluationResult"] is True


async def test_activation_conditions_that_do_not_hold_leave_the_thresholds_to_decide() -> None:
    h = harness(Backend([Label("Alcohol", "", 5.0, 1)]), conditions=ALCOHOL_OVER_10)
    assert await h.handle(request()) == "approved"


# -- normalization: formats, frames, the worst frame ------------------------------------------


class ByFrame(ReviewingBackend):
    """Answers each frame by its colour (``image_files.frame_colour``): ``labels[frame]``, else
    MILD; with a managed review asked for, A2I starts one."""

    def __init__(self, labels: dict[int, list[Label]]) -> None:
        super().__init__()
        self.by_frame = labels
        self.frames: list[int] = []
        self.reviewed_frames: list[int] = []

    @staticmethod
    def frame_of(image: BackendImage) -> int:
        assert isinstance(image, bytes), image
        with Image.open(io.BytesIO(image)) as decoded:
            assert decoded.format in ("JPEG", "PNG")
            return image_files.nearest_frame(image_files.centre_colour(decoded))

    async def moderate(self, image: BackendImage, min_confidence: float) -> ModerationResult:
        frame = self.frame_of(image)
        self.frames.append(frame)
        self.calls.append(image)
        await asyncio.sleep(0)  # let the other frames' calls run meanwhile
        return ModerationResult(self.by_frame.get(frame, [MILD]), "test-model")

    async def moderate_with_review(
        self, image: BackendImage, min_confidence: float, review: HumanLoopRequest
    ) -> ModerationResult:
        self.reviews.append(review)
        self.reviewed_frames.append(self.frame_of(image))
        result = await self.moderate(image, min_confidence)
        arn = "arn:aws:sagemaker:us-east-1:000000000000:human-loop/" + review.name
        return dataclasses.replace(result, managed_review=ManagedReview(arn))


def inline(data: bytes, request_id: str = "r1") -> bytes:
    return request(request_id, {"bytes": base64.b64encode(data).decode()})


async def test_each_frame_of_an_animation_is_analyzed_and_the_worst_decides() -> None:
    backend = ByFrame({4: [EXPLICIT]})
    h = harness(backend)
    assert await h.handle(inline(image_files.gif_animated(frames=6))) == "rejected"
    assert sorted(backend.frames) == [0, 1, 2, 4, 5]  # 5 of 6, spread, ends included
    _, record = h.sink.only()
    assert record["analyzed"] == {
        "format": "gif",
        "converted": True,
        "frames_analyzed": 5,
        "frame_count": 6,
    }
    assert sorted((label["frame"], label["name"]) for label in record["labels"]) == [
        (0, "Alcohol"),
        (1, "Alcohol"),
        (2, "Alcohol"),
        (4, "Explicit"),
        (5, "Alcohol"),
    ]
    assert record["reasons"][0]["label"] == "Explicit"
    assert h.registry.get_sample_value("moderation_frames_analyzed_total") == 5
    assert h.counter("images_normalized", format="gif", action="converted") == 1


async def test_a_still_image_within_the_limits_passes_untouched_and_labels_carry_no_frame() -> None:
    data = image_files.png()
    backend = ByFrame({0: [BORDERLINE]})
    h = harness(backend)
    assert await h.handle(inline(data)) == "review"
    assert backend.calls == [data]
    _, record = h.sink.only()
    assert record["analyzed"] == {
        "format": "png",
        "converted": False,
        "frames_analyzed": 1,
        "frame_count": 1,
    }
    assert "frame" not in record["labels"][0]
    assert h.counter("images_normalized", format="png", action="passthrough") == 1


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (image_files.webp_lossy(), "webp"),
        (image_files.tiny("PNG", 40), "png"),
        (image_files.bmp(), "bmp"),
        (image_files.heic(), "heif"),
    ],
)
async def test_what_the_backend_cannot_read_is_converted_to_a_jpeg_it_can(
    data: bytes, fmt: str
) -> None:
    backend = Backend([MILD])
    h = harness(backend)
    assert await h.handle(inline(data)) == "approved"
    (sent,) = backend.calls
    assert isinstance(sent, bytes)
    with Image.open(io.BytesIO(sent)) as decoded:
        assert decoded.format == "JPEG"
        assert min(decoded.size) >= 80
    _, record = h.sink.only()
    assert record["analyzed"]["format"] == fmt
    assert record["analyzed"]["converted"] is True


async def test_an_animation_asks_for_the_managed_review_with_its_deciding_frame_only() -> None:
    backend = ByFrame({2: [BORDERLINE]})
    settings = with_review(SETTINGS, flow_definition_arn=FLOW, content_classifiers=())
    h = harness(backend, settings=settings)
    assert await h.handle(inline(image_files.gif_animated(frames=4))) == "review"
    assert sorted(backend.frames) == [0, 1, 2, 2, 3]  # every frame, then frame 2 again
    assert backend.reviewed_frames == [2]
    _, record = h.sink.only()
    assert record["review"]["mode"] == "managed"
    assert h.registry.get_sample_value("moderation_frames_analyzed_total") == 5


async def test_an_approved_animation_asks_for_no_managed_review() -> None:
    backend = ByFrame({})
    settings = with_review(SETTINGS, flow_definition_arn=FLOW, content_classifiers=())
    h = harness(backend, settings=settings)
    assert await h.handle(inline(image_files.gif_animated(frames=3))) == "approved"
    assert backend.reviewed_frames == []


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"%PDF-1.7\n" + bytes(200), Reason.NOT_AN_IMAGE),
        (image_files.truncated(image_files.jpeg_baseline()), Reason.TRUNCATED_IMAGE),
        (image_files.jpeg_coefficient_bomb(12_000, 12_000), Reason.IMAGE_TOO_MANY_PIXELS),
    ],
)
async def test_what_cannot_be_decoded_is_dead_lettered_unanalyzed(
    data: bytes, reason: Reason
) -> None:
    backend = Backend()
    h = harness(backend)
    assert await h.handle(inline(data)) == reason.value
    topic, letter = h.sink.only()
    assert topic == TOPICS.dlq_topic
    assert letter["error"]["reason"] == reason.value
    assert backend.calls == []


async def test_a_backend_that_cannot_read_s3_refuses_references_without_s3_reads() -> None:
    backend = Backend()
    backend.input = BackendInput("encoded", s3_max_bytes=None)
    h = harness(backend)
    assert await h.handle(request()) == "invalid_s3_object"
    assert backend.calls == []
