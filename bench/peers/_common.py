"""What every peer shares, so a comparison measures their loops and nothing else."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aioboto3
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from botocore.config import Config

REJECT_THRESHOLD = 80.0
REVIEW_THRESHOLD = 50.0
# Tansu makes a group's first member wait about half its session timeout before assigning it.
SESSION_TIMEOUT_MS = 6_000
HEARTBEAT_INTERVAL_MS = 2_000
# After SIGTERM, unfinished work gets this long before it is cancelled (and, uncommitted, redone).
SHUTDOWN_GRACE_S = 10.0

log = logging.getLogger("bench.peers")
_failures = 0


@dataclass(frozen=True, slots=True)
class PeerArgs:
    bootstrap: str
    input: str
    output: str
    group: str
    endpoint: str
    concurrency: int


def parse_args(description: str, argv: Sequence[str] | None, default_concurrency: int) -> PeerArgs:
    """The one CLI all peers accept, so a harness can start any of them the same way."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bootstrap", required=True, help="HOST:PORT of the Kafka broker")
    parser.add_argument("--input", required=True, help="request topic")
    parser.add_argument("--output", required=True, help="verdict topic")
    parser.add_argument("--group", required=True, help="consumer group id")
    parser.add_argument("--endpoint", required=True, help="Rekognition endpoint URL")
    parser.add_argument("--concurrency", type=int, default=default_concurrency)
    ns = parser.parse_args(argv)
    if ns.concurrency < 1:
        parser.error("--concurrency must be >= 1")
    return PeerArgs(ns.bootstrap, ns.input, ns.output, ns.group, ns.endpoint, ns.concurrency)


def region() -> str:
    """botocore reads only AWS_DEFAULT_REGION; the service (and the bench env) use AWS_REGION."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def boto_config(concurrency: int) -> Config:
    """Standard retries as a typical user configures them.

    The pool is raised to the peer's concurrency: botocore's default of 10 connections would
    otherwise cap every peer at 10 calls in flight and the comparison would measure that.
    """
    return Config(
        retries={"mode": "standard", "max_attempts": 10},
        max_pool_connections=max(10, concurrency),
    )


def parse_request(value: bytes | None) -> tuple[str, bytes]:
    """``(id, image bytes)`` of a ``{"id", "image": {"bytes": base64}}`` request (ValueError)."""
    if value is None:
        raise ValueError("tombstone")
    request = orjson.loads(value)
    if not isinstance(request, dict) or not isinstance(request.get("id"), str):
        raise TypeError("request needs a string id")
    return request["id"], base64.b64decode(request["image"]["bytes"], validate=True)


def request_id(value: bytes | None) -> str | None:
    """Best-effort id of a request that failed to parse, so its error verdict keeps the key."""
    try:
        request = orjson.loads(value or b"")
    except ValueError:
        return None
    rid = request.get("id") if isinstance(request, dict) else None
    return rid if isinstance(rid, str) else None


def verdict(response: Mapping[str, Any]) -> str:
    """rejected if any label reaches 80, review if any reaches 50, else approved."""
    top = max((float(x["Confidence"]) for x in response.get("ModerationLabels", ())), default=0.0)
    if top >= REJECT_THRESHOLD:
        return "rejected"
    if top >= REVIEW_THRESHOLD:
        return "review"
    return "approved"


async def moderate(client: Any, value: bytes | None) -> tuple[str | None, str]:
    """``(id, verdict)`` for one request; any failure left after botocore's retries is "error"."""
    try:
        rid, image = parse_request(value)
    except (ValueError, KeyError, TypeError):
        return request_id(value), "error"
    try:
        response = await client.detect_moderation_labels(Image={"Bytes": image})
    except Exception as exc:
        _log_failure(exc)
        return rid, "error"
    return rid, verdict(response)


def _log_failure(exc: Exception) -> None:
    """Say why calls end as "error" (under throttling botocore's retry quota runs dry) sparingly.

    Standard mode spends 5 of 500 quota units per retry, throttles included, and gives up at once
    while it is empty, so a peer offering more than the TPS quota turns most calls into errors.
    """
    global _failures  # noqa: PLW0603 - a process-wide count is the point
    _failures += 1
    if _failures <= 5 or _failures % 100 == 0:
        log.warning("call failed (%d so far): %s: %s", _failures, type(exc).__name__, exc)


def encode_verdict(rid: str | None, outcome: str) -> tuple[bytes | None, bytes]:
    """Kafka key and value of a verdict record."""
    key = None if rid is None else rid.encode()
    return key, orjson.dumps({"id": rid, "verdict": outcome})


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT, so the loop can finish its work and exit 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def announce_ready() -> None:
    """The one stdout line a harness waits for."""
    print("ready", flush=True)


class ReadyOnAssignment(ConsumerRebalanceListener):  # type: ignore[misc]
    """Prints ``ready`` the first time the group gives this consumer partitions."""

    def __init__(self) -> None:
        self._announced = False

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if assigned and not self._announced:
            self._announced = True
            announce_ready()


@contextlib.asynccontextmanager
async def plain_clients(
    args: PeerArgs, pool: int
) -> AsyncIterator[tuple[AIOKafkaConsumer, AIOKafkaProducer, Any]]:
    """The hand-written peers' setup: a manual-commit consumer subscribed to the input (announcing
    ``ready`` on assignment), a producer, and a Rekognition client with ``pool`` connections;
    started in order and stopped in reverse."""
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
        "rekognition", region_name=region(), endpoint_url=args.endpoint, config=boto_config(pool)
    ) as client:
        await producer.start()
        try:
            await consumer.start()
            try:
                yield consumer, producer, client
            finally:
                await consumer.stop()
        finally:
            await producer.stop()


async def serve(loop: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``loop(stop)`` until it returns; after SIGTERM/SIGINT give it SHUTDOWN_GRACE_S.

    The loops check ``stop`` between units of work, so a signal normally ends them cleanly; the
    grace only bounds a unit stuck in botocore's retry backoff (it is cancelled, not committed).
    """
    stop = stop_event()
    work = asyncio.ensure_future(loop(stop))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            done, _ = await asyncio.wait({work}, timeout=SHUTDOWN_GRACE_S)
            if not done:
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
                return
        await work
    finally:
        stopped.cancel()
