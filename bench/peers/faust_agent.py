"""faust-streaming written as its docs recommend for I/O-bound work: an agent with concurrency=N.

N actors share one stream; each awaits its own Rekognition call, so up to N calls are in flight.
The aioboto3 client is opened once when the app starts (``App.on_start``, before the agents run)
and closed in ``on_shutdown`` (after they stopped). Offsets are acknowledged by faust when an actor
takes its next event and committed by faust's own commit timer, as in any faust app.

Settings for the embedded Tansu broker: 6 s sessions (Tansu holds a group's first join for about
half the session timeout; faust's default 60 s would mean 30 s), no web server, in-memory store.
Input values are read raw and decoded by the same code as the other peers, so every peer does the
same per-message work.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Sequence
from typing import Any

import aioboto3
import faust
from aiokafka import AIOKafkaConsumer
from faust.types import TP

from bench.peers._common import (
    PeerArgs,
    announce_ready,
    boto_config,
    encode_verdict,
    moderate,
    parse_args,
    region,
)


class ModerationApp(faust.App):
    """A faust app that owns one Rekognition client for the life of the worker."""

    rekognition: Any = None

    def configure_rekognition(self, endpoint: str, concurrency: int) -> None:
        self._rekognition_args = (endpoint, concurrency)
        self._rekognition_stack = contextlib.AsyncExitStack()

    async def on_start(self) -> None:
        await super().on_start()
        endpoint, concurrency = self._rekognition_args
        session = aioboto3.Session()
        self.rekognition = await self._rekognition_stack.enter_async_context(
            session.client(
                "rekognition",
                region_name=region(),
                endpoint_url=endpoint,
                config=boto_config(concurrency),
            )
        )

    async def on_shutdown(self) -> None:
        # mode stops children (agents, consumer, producer) before on_shutdown, after on_stop.
        await self._rekognition_stack.aclose()
        await super().on_shutdown()


async def input_partitions(bootstrap: str, topic: str) -> int:
    """Partition count of the input topic, so faust's ``topic_partitions`` matches it."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        await consumer.topics()  # refreshes metadata for every topic
        partitions = consumer.partitions_for_topic(topic)
    finally:
        await consumer.stop()
    if not partitions:
        raise SystemExit(f"input topic {topic!r} does not exist on {bootstrap}")
    return len(partitions)


def build_app(args: PeerArgs, partitions: int, loop: asyncio.AbstractEventLoop) -> ModerationApp:
    app = ModerationApp(
        args.group,  # the app id is the consumer group id
        broker=f"kafka://{args.bootstrap}",
        loop=loop,
        broker_session_timeout=6,
        broker_heartbeat_interval=2,
        web_enabled=False,
        store="memory://",
        topic_partitions=partitions,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
    )
    app.configure_rekognition(args.endpoint, args.concurrency)
    requests = app.topic(args.input, key_serializer="raw", value_serializer="raw")
    verdicts = app.topic(args.output, key_serializer="raw", value_serializer="raw")

    @app.agent(requests, concurrency=args.concurrency)
    async def moderate_images(stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            rid, outcome = await moderate(app.rekognition, value)
            key, verdict = encode_verdict(rid, outcome)
            await verdicts.send(key=key, value=verdict)

    announced = False

    # mode calls receiver(sender, assigned, signal=...); its handler alias does not type-check.
    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def _ready(_app: Any, assigned: set[TP], **_: Any) -> None:
        nonlocal announced
        if not announced and any(tp.topic == args.input for tp in assigned):
            announced = True
            announce_ready()

    return app


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args("faust agent peer", argv, default_concurrency=32)
    # One loop for the metadata lookup and the worker: asyncio.run() would leave none behind.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    partitions = loop.run_until_complete(input_partitions(args.bootstrap, args.input))
    app = build_app(args, partitions, loop)
    # stdout is kept for the single "ready" line: faust's own output goes to stderr, and it must
    # not swap sys.stdout for a logger (worker_redirect_stdouts).
    worker = faust.Worker(
        app,
        loop=loop,
        loglevel="warning",
        quiet=True,
        stdout=sys.stderr,
        redirect_stdouts=False,
    )
    worker.spinner = None  # it writes terminal control codes even when stderr is a file
    worker.execute_from_commandline()  # handles SIGTERM/SIGINT and exits 0


if __name__ == "__main__":
    main()
