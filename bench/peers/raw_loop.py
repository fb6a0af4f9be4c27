"""The overhead ceiling: a bare aiokafka batch loop with no framework, no limiter, no bookkeeping.

getmany(max_records=N) -> gather the N Rekognition calls -> produce N verdicts -> await the acks ->
commit -> repeat. Same messages, same endpoint and SDK settings as the service; whatever the service
spends beyond this loop (rate limiting, offset tracking, routing, metrics) is its overhead. The
batch barrier (the slowest call holds up the next batch) is this loop's own cost, not hidden.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from bench.peers._common import PeerArgs, encode_verdict, moderate, parse_args, plain_clients, serve


async def run(args: PeerArgs, stop: asyncio.Event) -> None:
    """Batch loop until ``stop``; a batch is committed after all its verdicts were acknowledged."""
    async with plain_clients(args, pool=args.concurrency) as (consumer, producer, client):
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


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args("raw aiokafka batch loop peer", argv, default_concurrency=64)
    asyncio.run(serve(lambda stop: run(args, stop)))


if __name__ == "__main__":
    main()
