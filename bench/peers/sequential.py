"""The naive baseline: one message at a time, one Rekognition call at a time.

What most people write first: consume, decode, call, produce, await the ack, commit, next. Its
throughput is 1 / (call latency + produce round trip + commit round trip) whatever the quota, which
is the point of including it. ``--concurrency`` is accepted for a uniform CLI and ignored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aioboto3
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.peers._common import (
    HEARTBEAT_INTERVAL_MS,
    SESSION_TIMEOUT_MS,
    PeerArgs,
    ReadyOnAssignment,
    boto_config,
    encode_verdict,
    moderate,
    parse_args,
    region,
    serve,
)


async def run(args: PeerArgs, stop: asyncio.Event) -> None:
    """Consume until ``stop``; each record is committed only after its verdict was acknowledged."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
    )
    consumer.subscribe([args.input], listener=ReadyOnAssignment())
    # Tansu refuses idempotent producers (InitProducerId), so idempotence stays off.
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap, acks="all", enable_idempotence=False
    )
    session = aioboto3.Session()
    async with session.client(
        "rekognition", region_name=region(), endpoint_url=args.endpoint, config=boto_config(1)
    ) as client:
        await producer.start()
        try:
            await consumer.start()
            try:
                while not stop.is_set():
                    # A timeout rather than getone(), so a signal is noticed while idle.
                    batch = await consumer.getmany(timeout_ms=200, max_records=1)
                    for tp, records in batch.items():
                        for record in records:
                            rid, outcome = await moderate(client, record.value)
                            key, value = encode_verdict(rid, outcome)
                            await producer.send_and_wait(args.output, value, key=key)
                            await consumer.commit({tp: record.offset + 1})
            finally:
                await consumer.stop()
        finally:
            await producer.stop()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(
        "sequential peer: one message, one call at a time", argv, default_concurrency=1
    )
    asyncio.run(serve(lambda stop: run(args, stop)))


if __name__ == "__main__":
    main()
