"""A plain aiokafka consumer-group member for the chaos bench (bench/chaos.py, ``--plain``).

Same churn, a different client: if this group stalls too, the broker's coordinator is to blame;
if only the service stalls, the service is. So it does what a careful hand-written consumer does
and nothing more: batch loop (getmany, one Rekognition call per record, produce, await the acks,
commit), backend trouble retried with full-jitter backoff until it succeeds (the quota is shared
with the other members and only the fake knows it), permanent errors published as ``dlq``, a lost
commit after a rebalance shrugged off (the new owner redoes the batch), optional static
membership. Verdicts go to one topic as ``{"id", "verdict"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from typing import Any

import aioboto3
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import CommitFailedError, KafkaError
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from bench.peers._common import (
    ReadyOnAssignment,
    encode_verdict,
    parse_request,
    region,
    request_id,
    serve,
    verdict,
)

log = logging.getLogger("bench.peers.churn")

# Answers that will never succeed for this image: publish it as a dead letter, as the service does.
_PERMANENT = frozenset(
    {
        "InvalidImageFormatException",
        "InvalidParameterException",
        "ImageTooLargeException",
        "InvalidS3ObjectException",
    }
)
_BACKOFF_BASE_S = 0.05
_BACKOFF_CAP_S = 2.0


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--instance-id", default=None, help="static membership (KIP-345)")
    parser.add_argument("--session-timeout-ms", type=int, default=6000)
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


async def _moderate(
    client: Any, value: bytes | None, stop: asyncio.Event
) -> tuple[str | None, str] | None:
    """``(id, verdict)``; retries throttling and server errors until they pass (None: ``stop``
    came first, the record is left to the next owner)."""
    try:
        rid, image = parse_request(value)
    except (ValueError, KeyError, TypeError):
        return request_id(value), "dlq"
    attempt = 0
    while True:
        try:
            response = await client.detect_moderation_labels(Image={"Bytes": image})
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _PERMANENT:
                return rid, "dlq"
        except (BotoCoreError, OSError):
            pass
        else:
            return rid, verdict(response)
        if stop.is_set():
            return None
        attempt += 1
        await asyncio.sleep(random.uniform(0, min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2**attempt)))


async def run(ns: argparse.Namespace, stop: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=ns.bootstrap,
        group_id=ns.group,
        group_instance_id=ns.instance_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=ns.session_timeout_ms,
        heartbeat_interval_ms=max(100, ns.session_timeout_ms // 3),
    )
    consumer.subscribe([ns.input], listener=ReadyOnAssignment())
    producer = AIOKafkaProducer(
        bootstrap_servers=ns.bootstrap, acks="all", enable_idempotence=False
    )
    config = Config(retries={"max_attempts": 1}, max_pool_connections=max(10, ns.concurrency))
    session = aioboto3.Session()
    async with session.client(
        "rekognition", region_name=region(), endpoint_url=ns.endpoint, config=config
    ) as client:
        await producer.start()
        try:
            await consumer.start()
            try:
                while not stop.is_set():
                    batch = await consumer.getmany(timeout_ms=200, max_records=ns.concurrency)
                    records = [record for part in batch.values() for record in part]
                    if not records:
                        continue
                    outcomes = await asyncio.gather(
                        *(_moderate(client, r.value, stop) for r in records)
                    )
                    if any(outcome is None for outcome in outcomes):
                        break  # stopped with a call still failing: the batch stays uncommitted
                    acks = []
                    for rid, outcome in filter(None, outcomes):
                        key, value = encode_verdict(rid, outcome)
                        acks.append(await producer.send(ns.output, value, key=key))
                    await asyncio.gather(*acks)
                    offsets = {tp: part[-1].offset + 1 for tp, part in batch.items()}
                    try:
                        await consumer.commit(offsets)
                    except (CommitFailedError, KafkaError) as exc:
                        log.warning("commit failed (%s); the next owner redoes the batch", exc)
            finally:
                with contextlib.suppress(KafkaError):
                    await consumer.stop()
        finally:
            await producer.stop()


def main(argv: Sequence[str] | None = None) -> None:
    ns = _parse(argv)
    logging.basicConfig(level=ns.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(lambda stop: run(ns, stop)))


if __name__ == "__main__":
    main()
