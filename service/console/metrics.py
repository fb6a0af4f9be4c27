"""The console's metrics, on the service's :class:`~service.metrics.Metrics` registry.

``moderation_reviews_pending`` is the shared gauge (items waiting for a reviewer, before their
deadline); the rest are the console's own. Label values come from small fixed sets only.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.metrics import Metrics

_DECISION_BUCKETS = (5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class ConsoleMetrics(Metrics):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.console_overdue = Gauge(
            "moderation_console_reviews_overdue",
            "Items past their deadline that no reviewer decided (the sink applies the fallback).",
            registry=r,
        )
        self.console_claimed = Gauge(
            "moderation_console_claims_active", "Items a reviewer holds right now.", registry=r
        )
        self.console_unpublished = Gauge(
            "moderation_console_decisions_undelivered",
            "Decisions whose output.json or completion event is not delivered yet (outbox).",
            registry=r,
        )
        self.console_claims = Counter(
            "moderation_console_claims",
            "Claim attempts by outcome: claimed, taken (someone else holds it), gone, empty.",
            ["outcome"],
            registry=r,
        )
        self.console_decisions = Counter(
            "moderation_console_decisions",
            "Reviewer decisions recorded, by verdict (rejected: labels chosen).",
            ["verdict"],
            registry=r,
        )
        self.console_decision_time = Histogram(
            "moderation_console_decision_seconds",
            "From claiming an item to submitting the decision.",
            buckets=_DECISION_BUCKETS,
            registry=r,
        )
        self.console_deliveries = Counter(
            "moderation_console_deliveries",
            "Attempts to deliver a decision (output.json + completion event), by outcome.",
            ["outcome"],
            registry=r,
        )
        self.console_intake = Counter(
            "moderation_console_intake_records",
            "Review-topic records seen by the console, by outcome: stored, unchanged, "
            "skipped_managed, dead_lettered (not a review record: sent to the DLQ).",
            ["outcome"],
            registry=r,
        )
        self.console_logins = Counter(
            "moderation_console_logins",
            "Login attempts by outcome: ok, failed, locked, trusted_header.",
            ["outcome"],
            registry=r,
        )
        self.console_refused = Counter(
            "moderation_console_refused_requests",
            "Requests refused: unauthenticated, forbidden, csrf.",
            ["reason"],
            registry=r,
        )
