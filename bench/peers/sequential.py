"""The naive baseline: one message at a time, one Rekognition call at a time.

What most people write first: consume, decode, call, produce, await the ack, commit, next. Its
throughput is 1 / (call latency + produce round trip + commit round trip) whatever the quota, which
is the point of including it. ``--concurrency`` is accepted for a uniform CLI and ignored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from bench.peers._common import PeerArgs, encode_verdict, moderate, parse_args, plain_clients, serve


async def run(args: PeerArgs, stop: asyncio.Event) -> None:
    """Consume until ``stop``; each record is committed only after its verdict was acknowledged."""
    async with plain_clients(args, pool=1) as (consumer, producer, client):
        while not stop.is_set():
            # A timeout rather than getone(), so a signal is noticed while idle.
            batch = await consumer.getmany(timeout_ms=200, max_records=1)
            for tp, records in batch.items():
                for record in records:
                    rid, outcome = await moderate(client, record.value)
                    key, value = encode_verdict(rid, outcome)
                    await producer.send_and_wait(args.output, value, key=key)
                    await consumer.commit({tp: record.offset + 1})


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(
        "sequential peer: one message, one call at a time", argv, default_concurrency=1
    )
    asyncio.run(serve(lambda stop: run(args, stop)))


if __name__ == "__main__":
    main()
