"""Every Prometheus metric the service exports, defined in one place.

Naming follows Prometheus conventions: ``moderation_`` prefix, base units, ``_total`` counters.
Label values come from small fixed sets only (verdicts, reasons, outcomes, top-level taxonomy
categories, partition numbers), never ids or URLs. A registry is injected so tests read their own.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.errors import Reason
from service.imaging.formats import SUPPORTED_FORMATS
from service.taxonomy import TOP_LEVEL_CATEGORIES, top_level_of

REVIEW_OUTCOMES = (
    "approved",
    "rejected",
    "fallback_approved",
    "fallback_rejected",
    "requeued",
    "duplicate",
)

# Backend calls take 50 ms to seconds; end-to-end adds queueing, so its buckets reach further.
_CALL_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
_NORMALIZE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0)
_REVIEW_BUCKETS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0)


class PublishMetrics:
    """What publishing records counts: the pipeline's and the console's intake both publish dead
    letters through :class:`~service.kafka.publisher.Publisher`, so both export these."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.dead_letters = Counter(
            "moderation_dlq",
            "Records sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.publish_retries = Counter(
            "moderation_publish_retries",
            "Output publishes retried after a broker error.",
            registry=r,
        )
        self.publish_refused = Counter(
            "moderation_publish_refused",
            "Output records the broker refused for good (too large, invalid); each was replaced "
            "by a dead letter.",
            registry=r,
        )


class StreamMetrics(PublishMetrics):
    """What every consume-decide-publish worker counts: the pipeline and the review sink both
    publish verdicts and commit offsets (transactionally under exactly_once)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.verdicts = Counter(
            "moderation_verdicts",
            "Verdicts published, by verdict and by who decided.",
            ["verdict", "decided_by"],
            registry=r,
        )
        self.commit_failures = Counter(
            "moderation_commit_failures",
            "Offset commits that failed (records redelivered).",
            registry=r,
        )


class PipelineMetrics(StreamMetrics):
    """The pipeline's own metrics (``python -m service run``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.consumed = Counter(
            "moderation_messages_consumed", "Input records taken from Kafka.", registry=r
        )
        self.labels = Counter(
            "moderation_labels",
            "Moderation labels seen in verdicts, by top-level v7 category.",
            ["category"],
            registry=r,
        )
        self.backend_calls = Counter(
            "moderation_backend_calls",
            "Moderation backend calls by outcome: ok, throttled, error (server/outage), rejected "
            "(the backend refused the image).",
            ["backend", "outcome"],
            registry=r,
        )
        self.backend_latency = Histogram(
            "moderation_backend_call_duration_seconds",
            "Duration of one backend call, whatever its outcome.",
            ["backend"],
            buckets=_CALL_BUCKETS,
            registry=r,
        )
        self.end_to_end = Histogram(
            "moderation_end_to_end_seconds",
            "From the input record's timestamp to the broker's acknowledgement of its outcome.",
            buckets=_E2E_BUCKETS,
            registry=r,
        )
        self.processing = Histogram(
            "moderation_processing_seconds",
            "From taking the record off the consumer to the acknowledgement of its outcome.",
            buckets=_E2E_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "moderation_in_flight", "Records being processed right now.", registry=r
        )
        self.max_in_flight = Gauge(
            "moderation_max_in_flight",
            "In-flight budget now: limiter rate x call latency x headroom, at most "
            "MODERATION_MAX_IN_FLIGHT.",
            registry=r,
        )
        self.intake_paused = Gauge(
            "moderation_intake_paused",
            "1 while intake is paused because the pipeline is full.",
            registry=r,
        )
        self.limiter_rate = Gauge(
            "moderation_limiter_rate",
            "Backend calls per second the adaptive limiter allows now.",
            registry=r,
        )
        self.limiter_max_rate = Gauge(
            "moderation_limiter_max_rate",
            "Configured backend calls per second for this replica (MODERATION_TPS).",
            registry=r,
        )
        self.circuit_open = Gauge(
            "moderation_circuit_open", "1 while the backend circuit breaker is open.", registry=r
        )
        self.consumer_lag = Gauge(
            "moderation_consumer_lag",
            "Records behind the partition's high watermark (from fetch responses).",
            ["partition"],
            registry=r,
        )
        self.partitions_assigned = Gauge(
            "moderation_partitions_assigned",
            "Input partitions assigned to this replica.",
            registry=r,
        )
        self.undecodable_recoveries = Counter(
            "moderation_undecodable_recoveries",
            "Polls that hit a record the Kafka client cannot decode and read it raw instead.",
            registry=r,
        )
        self.oldest_in_flight = Gauge(
            "moderation_oldest_in_flight_seconds",
            "Age of the oldest message still being processed, by input partition (0 when idle).",
            ["partition"],
            registry=r,
        )
        self.stuck = Gauge(
            "moderation_stuck_partitions",
            "Input partitions whose oldest in-flight message is older than "
            "MODERATION_STUCK_AFTER_S.",
            registry=r,
        )
        self.group_unsettled = Gauge(
            "moderation_group_unsettled_seconds",
            "How long the consumer group has been rebalancing without settling (0 when settled).",
            registry=r,
        )
        self.group_recoveries = Counter(
            "moderation_group_recoveries",
            "Attempts to free a group wedged on a departed leader, by what each found.",
            ["outcome"],
            registry=r,
        )
        self.group_stalled = Gauge(
            "moderation_group_stalled",
            "1 while the group has not settled for longer than KAFKA_REBALANCE_STALL_S.",
            registry=r,
        )
        self.dlq_guard_tripped = Gauge(
            "moderation_dlq_guard_tripped",
            "1 while intake is stopped because too many recent messages were dead-lettered, "
            "by kind (input: bad input; internal: this service's bugs).",
            ["kind"],
            registry=r,
        )
        self.reviews_started = Counter(
            "moderation_reviews_started", "Human reviews started.", ["mode"], registry=r
        )
        self.images_normalized = Counter(
            "moderation_images_normalized",
            "Images made ready for the backend, by source format and action: passthrough (sent "
            "as uploaded, or as its S3 reference) or converted (decoded and re-encoded, or "
            "reduced to pixels).",
            ["format", "action"],
            registry=r,
        )
        self.normalize_duration = Histogram(
            "moderation_normalize_duration_seconds",
            "Time a decode worker spent on one image (from when it took it), by action.",
            ["action"],
            buckets=_NORMALIZE_BUCKETS,
            registry=r,
        )
        self.frames_analyzed = Counter(
            "moderation_frames_analyzed",
            "Frames the backend analyzed (a still image is one; an animation up to "
            "MODERATION_MAX_FRAMES), each one backend call.",
            registry=r,
        )

    def initialise(self, backend: str) -> None:
        """Create every known label set at zero, so each series exists from the first scrape.

        A counter whose series appears only at its first increment is invisible to ``rate()``
        and ``increase()`` for that first step, so alerts on bursts would miss them.
        """
        for verdict in ("approved", "rejected", "review"):
            self.verdicts.labels(verdict=verdict, decided_by="model")
        for reason in Reason:
            self.dead_letters.labels(reason=reason.value)
        for outcome in ("ok", "throttled", "error", "rejected"):
            self.backend_calls.labels(backend=backend, outcome=outcome)
        self.backend_latency.labels(backend=backend)
        for category in (*TOP_LEVEL_CATEGORIES, "other"):
            self.labels.labels(category=category)
        for mode in ("managed", "self_hosted"):
            self.reviews_started.labels(mode=mode)
        for kind in ("input", "internal"):
            self.dlq_guard_tripped.labels(kind=kind).set(0)
        for outcome in ("released", "leader_alive", "refused", "failed"):
            self.group_recoveries.labels(outcome=outcome)
        for action in ("passthrough", "converted"):
            self.normalize_duration.labels(action=action)
            for fmt in SUPPORTED_FORMATS:
                self.images_normalized.labels(format=fmt, action=action)

    def count_labels(self, names: list[str]) -> None:
        """Count each top-level category once per verdict (a verdict often has parent + child)."""
        for category in {top_level_of(name) or "other" for name in names}:
            self.labels.labels(category=category).inc()


class SinkMetrics(StreamMetrics):
    """The review sink's metrics (``python -m service sink``): reviews it waits for and ends."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.reviews_pending = Gauge(
            "moderation_reviews_pending", "Human reviews started and not yet answered.", registry=r
        )
        self.reviews_completed = Counter(
            "moderation_reviews_completed",
            "Human reviews finished, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.reviews_timed_out = Counter(
            "moderation_reviews_timed_out",
            "Reviews past their SLA, given the fallback.",
            registry=r,
        )
        self.review_early = Gauge(
            "moderation_review_early_completions",
            "Completion events the sink holds for loops whose review record has not arrived.",
            registry=r,
        )
        self.review_orphans = Counter(
            "moderation_review_orphan_completions",
            "Completion events dead-lettered because no review record came for their loop: "
            "expired (older than MODERATION_SINK_ORPHAN_TTL_S) or evicted (over "
            "MODERATION_SINK_MAX_EARLY).",
            ["why"],
            registry=r,
        )
        self.review_duration = Histogram(
            "moderation_review_duration_seconds",
            "From the review request to the reviewers' answer.",
            buckets=_REVIEW_BUCKETS,
            registry=r,
        )

    def initialise(self) -> None:
        """Create every known label set at zero (see PipelineMetrics.initialise)."""
        for verdict in ("approved", "rejected"):
            for decided_by in ("human", "fallback"):
                self.verdicts.labels(verdict=verdict, decided_by=decided_by)
        for reason in Reason:
            self.dead_letters.labels(reason=reason.value)
        for outcome in REVIEW_OUTCOMES:
            self.reviews_completed.labels(outcome=outcome)
        for why in ("expired", "evicted", "overflow"):
            self.review_orphans.labels(why=why)
