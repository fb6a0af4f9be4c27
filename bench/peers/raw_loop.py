"""The overhead ceiling: a bare aiokafka batch loop with no framework, no limiter, no bookkeeping.

getmany(max_records=N) -> gather the N Rekognition calls -> produce N verdicts -> await the acks ->
commit -> repeat. Same messages, same endpoint and SDK settings as the service; whatever the service
spends beyond this loop (rate limiting, offset tracking, routing, metrics) is its overhead. The
batch barrier (the slowest call holds up the next batch) is this loop's own cost, not hidden.
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
    """Batch loop until ``stop``; a batch is committed after all its verdicts were acknowledged."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
    )
    consumer.subscribe([args.input], listener=ReadyOnAssignment())
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap, acks="all", enable_idempotence=False
    )
    session = aioboto3.Session()
    async with session.client(
        "rekognition",
        region_name=region(),
        endpoint_url=args.endpoint,
        config=boto_config(args.concurrency),
    ) as client:
        await producer.start()
        try:
            await consumer.start()
            try:
                while not stop.is_set():
                    batch = await consumer.getmany(timeout_ms=200, max_records=args.concurrency)
                    records = [record for part in batch.values() for record in part]
                    if not records:
                        continue
                    outcomes = await asyncio.gather(*(moderate(client, r.value) for r in records))
                    acks = []
                    for rid, outcome in outcomes:
                        key, value = encode_verdict(rid, outcome)
                        acks.append(await producer.send(args.output, value, key=key))
                    await asyncio.gather(*acks)
                    await consumer.commit({tp: part[-1].offset + 1 for tp, part in batch.items()})
            finally:
                await consumer.stop()
        finally:
            await producer.stop()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args("raw aiokafka batch loop peer", argv, default_concurrency=64)
    asyncio.run(serve(lambda stop: run(args, stop)))


if __name__ == "__main__":
    main()
