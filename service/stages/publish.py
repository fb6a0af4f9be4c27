"""Publish: the verdict record to its topic (approved, rejected or review), acknowledged.

A verdict the broker refuses (an input's attributes can make it too large) raises RecordRefused,
so the pipeline dead-letters the input instead.
"""

from __future__ import annotations

from service.kafka.publisher import SupportsPublish
from service.messages import ModerationRequest, RawHeaders, Source, output_headers, verdict_record
from service.settings import KafkaSettings
from service.stages.analyze import Analysis
from service.stages.decide import Outcome


class VerdictPublisher:
    def __init__(self, sink: SupportsPublish, kafka: KafkaSettings) -> None:
        self._sink = sink
        self._topics = {
            "approved": kafka.approved_topic,
            "rejected": kafka.rejected_topic,
            "review": kafka.review_topic,
        }

    async def publish(
        self,
        request: ModerationRequest,
        analysis: Analysis,
        outcome: Outcome,
        *,
        source: Source,
        headers: RawHeaders,
        received_at: str,
    ) -> None:
        value = verdict_record(
            request,
            verdict=outcome.verdict,
            decided_by="model",
            labels=analysis.labels,
            model_version=analysis.model_version,
            reasons=outcome.reasons,
            source=source,
            received_at=received_at,
            review=outcome.review,
            analyzed=analysis.image.describe(),
        )
        out_headers = output_headers(
            headers, verdict=outcome.verdict, decided_by="model", id=request.id
        )
        await self._sink.publish(
            self._topics[outcome.verdict], request.id.encode(), value, out_headers
        )
