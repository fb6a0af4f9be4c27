"""Every metric the review console exports, defined in one place; a registry is injected so tests
read their own.

Only what the console sets: its own ``moderation_console_*`` metrics, plus the dead-letter and
publish counters of :class:`~service.metrics.PublishMetrics` (its intake dead-letters records
that are not review records). None of the pipeline's gauges: a console exporting them as zeros
would pull sums and per-replica panels down.

The gauges read from the store (items waiting, overdue, claimed, undelivered) describe the store
all replicas share, so every replica reports the same value: aggregate them with ``max()``,
never ``sum()``. Reviews started and not yet answered are the sink's
``moderation_reviews_pending``; the console does not export that name. Label values come from
small fixed sets only.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.errors import Reason
from service.metrics import PublishMetrics

_DECISION_BUCKETS = (5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

CLAIM_OUTCOMES = ("claimed", "taken", "gone", "empty")
VERDICTS = ("approved", "rejected")
DELIVERY_OUTCOMES = ("delivered", "failed")
INTAKE_OUTCOMES = ("stored", "unchanged", "skipped_managed", "dead_lettered")
LOGIN_OUTCOMES = ("ok", "failed", "locked", "trusted_header")
REFUSALS = ("unauthenticated", "forbidden", "csrf")
# What the console's intake dead-letters (see service.console.intake).
DEAD_LETTER_REASONS = (
    Reason.INVALID_REVIEW_RECORD,
    Reason.UNDECODABLE_RECORD,
    Reason.INTERNAL_ERROR,
)


class ConsoleMetrics(PublishMetrics):
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.console_pending = Gauge(
            "moderation_console_items_pending",
            "Items in the console's shared store waiting for a reviewer, before their deadline "
            "(every replica reports the same store: aggregate with max()).",
            registry=r,
        )
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

    def initialise(self) -> None:
        """Create every known label set at zero, so each series exists from the first scrape
        (``rate()`` over a series that appears at its first increment misses that increment)."""
        for outcome in CLAIM_OUTCOMES:
            self.console_claims.labels(outcome=outcome)
        for verdict in VERDICTS:
            self.console_decisions.labels(verdict=verdict)
        for outcome in DELIVERY_OUTCOMES:
            self.console_deliveries.labels(outcome=outcome)
        for outcome in INTAKE_OUTCOMES:
            self.console_intake.labels(outcome=outcome)
        for outcome in LOGIN_OUTCOMES:
            self.console_logins.labels(outcome=outcome)
        for reason in REFUSALS:
            self.console_refused.labels(reason=reason)
        for dead in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason=dead.value)
