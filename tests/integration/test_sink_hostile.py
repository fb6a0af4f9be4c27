"""The completion sink against hostile and broken input, as a real process: real broker, real S3
protocol (moto behind a small proxy that can answer 503), events in EventBridge's exact shape.

One sink process serves every case here (start-up is the slow part); each case uses its own loop
names, and the last one stops the process with SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from aiokafka.structs import ConsumerRecord

from service.kafka.embedded import free_port
from service.review.events import completion_event
from tests.integration.test_review_sink import (
    BUCKET,
    FLOW,
    output_json,
    put_output,
    review_record,
    sink_env,
    sink_process,
)
from tests.kafka_helpers import (
    Topics,
    collect,
    create_topics,
    produce,
    raw_header_name,
    send_records_with_raw_headers,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PREFIX = "moderation/2026/11/21/00/00/00"  # <flow-definition-name>/YYYY/MM/DD/hh/mm/ss
BY_LOOP_PARTITIONS = 4  # the sink's internal re-keyed topic
EXPLICIT = [{"name": "Explicit Nudity", "parentName": "Explicit"}]
TTL_S = 6
MAX_EARLY = 6
RETRY_S = 5


def uri_of(loop: str, prefix: str = PREFIX) -> str:
    return f"s3://{BUCKET}/{prefix}/{loop}/output.json"


def completion(loop: str, uri: str | None = None, **detail: Any) -> bytes:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body = completion_event(
        loop_name=loop,
        status="Completed",
        output_uri=uri or uri_of(loop),
        flow_definition_arn=FLOW,
        event_id=str(uuid.uuid4()),
        time=now,
        created=now,
    )
    body["detail"].update(detail)
    return orjson.dumps(body)


def same_partition(loop: str, count: int, stem: str) -> list[str]:
    """``count`` loop names the sink decides in the same partition as ``loop``."""

    def partition(name: str) -> int:
        return int(murmur2(name.encode()) & 0x7FFFFFFF) % BY_LOOP_PARTITIONS

    names = (f"{stem}-{i}" for i in range(1000))
    return [name for name in names if partition(name) == partition(loop)][:count]


class S3Proxy:
    """A real HTTP hop in front of moto: keys with ``unavailable-`` always answer 503 SlowDown,
    keys with ``flaky-`` answer 503 twice, then the real object."""

    def __init__(self, upstream: str) -> None:
        self._upstream = upstream
        self._failures: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    def failures(self, loop: str) -> int:
        """503s answered so far for ``loop``'s output.json."""
        return sum(n for path, n in self._failures.items() if f"/{loop}/" in path)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        flaky = "/flaky-" in path and self._failures[path] < 2
        if "/unavailable-" in path or flaky:
            self._failures[path] += 1
            body = (
                b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"
            )
            return web.Response(status=503, body=body, content_type="application/xml")
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        async with self._session.request(
            request.method,
            self._upstream + request.path_qs,
            headers=headers,
            data=await request.read(),
        ) as upstream:
            body = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
            return web.Response(status=upstream.status, body=body, headers=out)


_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "content-encoding"}


@dataclass
class Sink:
    bootstrap: str
    topics: Topics
    completions: str
    s3: str
    http: str
    log: Path
    proc: asyncio.subprocess.Process
    proxy: S3Proxy

    @property
    def outputs(self) -> list[str]:
        return [self.topics.approved, self.topics.rejected, self.topics.dlq]

    async def reviews(self, *loops: str) -> None:
        await produce(
            self.bootstrap,
            self.topics.review,
            [(f"req-{loop}".encode(), review_record(f"req-{loop}", loop), []) for loop in loops],
        )

    async def events(self, *values: bytes) -> None:
        await produce(self.bootstrap, self.completions, [(None, value, []) for value in values])

    async def wait(self, done: Callable[[Outputs], bool], timeout_s: float = 40.0) -> Outputs:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            outputs = Outputs(await collect(self.bootstrap, self.outputs, 10**9, timeout_s=1))
            if done(outputs) or self.proc.returncode is not None:
                return outputs
            if asyncio.get_running_loop().time() > deadline:
                return outputs
            await asyncio.sleep(0.3)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


class Outputs:
    """What the sink wrote, by request id (verdicts) and by loop name (dead letters)."""

    def __init__(self, records: list[ConsumerRecord]) -> None:
        self.verdicts: dict[str, Counter[tuple[str, str]]] = {}
        self.dead: list[dict[str, Any]] = []
        for record in records:
            value = orjson.loads(record.value)
            if "verdict" in value:
                self.verdicts.setdefault(value["id"], Counter())[
                    (value["verdict"], value["decided_by"])
                ] += 1
            else:
                self.dead.append(value)

    def verdict_of(self, loop: str) -> Counter[tuple[str, str]] | None:
        return self.verdicts.get(f"req-{loop}")

    def dead_for(self, loop: str) -> list[dict[str, Any]]:
        """Dead letters whose original event is about ``loop`` (matched on its quoted name)."""
        needle = f'"humanLoopName":"{loop}"'
        return [d for d in self.dead if needle in str(d["original"].get("value") or "")]

    def reasons_for(self, loop: str) -> list[str]:
        return [d["error"]["reason"] for d in self.dead_for(loop)]


@pytest.fixture(scope="module")
async def sink(
    kafka_bootstrap: str, moto_s3: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Sink]:
    topics = Topics.unique(uuid.uuid4().hex[:10])
    completions = f"{topics.input}.completions"
    await create_topics(
        kafka_bootstrap,
        [topics.review, completions, topics.approved, topics.rejected, topics.dlq],
        2,
    )
    proxy = S3Proxy(moto_s3)
    await proxy.start()
    port = free_port()
    env = sink_env(kafka_bootstrap, topics, completions, proxy.url) | {
        "MODERATION_HTTP_PORT": str(port),
        "MODERATION_SINK_LIVENESS_S": "5",
        "MODERATION_SINK_ORPHAN_TTL_S": str(TTL_S),
        "MODERATION_SINK_MAX_EARLY": str(MAX_EARLY),
        "MODERATION_SINK_OUTPUT_RETRY_S": str(RETRY_S),
        # Completions up to 4 MiB pass the size check, but the producer takes at most ~2.1 MiB
        # (what the pipeline can write for 1 MiB inputs): a 3 MiB event tests a refused send.
        "MODERATION_SINK_MAX_EVENT_BYTES": str(4 * 1024 * 1024),
        "MODERATION_MAX_INPUT_BYTES": str(1024 * 1024),
    }
    log = tmp_path_factory.mktemp("sink") / "sink.log"
    try:
        async with sink_process(env, log) as proc:
            running = Sink(
                kafka_bootstrap,
                topics,
                completions,
                moto_s3,
                f"http://127.0.0.1:{port}",
                log,
                proc,
                proxy,
            )
            await put_output(moto_s3, "warm-up", output_json("warm-up", [[]]))
            await running.reviews("warm-up")
            await running.events(completion("warm-up"))
            ready = await running.wait(lambda out: out.verdict_of("warm-up") is not None, 60)
            assert ready.verdict_of("warm-up"), running.tail()
            yield running
    finally:
        await proxy.stop()


async def probe(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def test_healthz_stays_up_while_the_sink_is_idle(sink: Sink) -> None:
    await asyncio.sleep(7)  # longer than MODERATION_SINK_LIVENESS_S (5) without any traffic
    status, text = await probe(f"{sink.http}/healthz")
    assert (status, text.strip()) == (200, "ok"), sink.tail()


async def test_malformed_output_uris_are_dead_lettered_and_block_nothing(sink: Sink) -> None:
    poison = "bad-uri-passwd"
    bad = {
        poison: "s3:///etc/passwd",
        "bad-uri-bucket": f"s3://Not_A_Bucket/{PREFIX}/bad-uri-bucket/output.json",
        "bad-uri-nokey": f"s3://{BUCKET}",
        "bad-uri-scheme": f"https://{BUCKET}.s3.amazonaws.com/{PREFIX}/bad-uri-scheme/output.json",
    }
    good = same_partition(poison, 2, "uri-ok")
    for loop in good:
        await put_output(sink.s3, loop, output_json(loop, [EXPLICIT]))
    await sink.reviews(*bad, *good)
    await sink.events(*(completion(loop, uri) for loop, uri in bad.items()))
    await sink.events(*(completion(loop) for loop in good))

    out = await sink.wait(
        lambda o: all(o.verdict_of(x) for x in good) and all(o.dead_for(x) for x in bad), 30
    )
    for loop in good:  # decided in the poison event's own partition, right after it
        assert out.verdict_of(loop) == Counter({("rejected", "human"): 1}), sink.tail()
    for loop in bad:
        assert out.reasons_for(loop) == ["malformed_event"], (loop, sink.tail())
        assert out.verdict_of(loop) is None  # the review stays pending for its SLA


async def test_transient_store_errors_retry_with_a_deadline_and_block_nothing(sink: Sink) -> None:
    down = "unavailable-1"  # the proxy answers 503 SlowDown for it, always
    flaky = "flaky-1"  # 503 twice, then the real answer
    good = same_partition(down, 2, "retry-ok")
    for loop in (down, flaky, *good):
        await put_output(sink.s3, loop, output_json(loop, [[]]))
    await sink.reviews(down, flaky, *good)
    await sink.events(completion(down), completion(flaky))
    await sink.events(*(completion(loop) for loop in good))

    # The others are decided while the store still fails for ``down``.
    out = await sink.wait(lambda o: all(o.verdict_of(x) for x in good), 15)
    for loop in good:
        assert out.verdict_of(loop) == Counter({("approved", "human"): 1}), sink.tail()
    assert not out.dead_for(down)

    out = await sink.wait(lambda o: bool(o.dead_for(down)) and bool(o.verdict_of(flaky)), 30)
    assert out.verdict_of(flaky) == Counter({("approved", "human"): 1}), sink.tail()
    (dead,) = out.dead_for(down)
    assert dead["error"]["reason"] == "unreadable_output"
    assert "output store unavailable" in dead["error"]["message"]
    assert dead["attempts"] > 1
    assert out.verdict_of(down) is None  # still pending: the SLA fallback will decide it


async def test_forged_events_are_dead_lettered_and_decide_nothing(sink: Sink) -> None:
    victim = "victim"
    other_flow = FLOW.replace("flow-definition/moderation", "flow-definition/other")
    await put_output(sink.s3, victim, output_json(victim, [EXPLICIT]))
    # Someone else's answers copied under this loop's own prefix.
    await put_output(sink.s3, "forged-copy", output_json(victim, [[]]))
    # A consistent event, path and output, but for another flow than the review record's.
    forged_flow = orjson.loads(output_json("forged-flow", [[]]))
    forged_flow["flowDefinitionArn"] = other_flow
    await _put(
        sink.s3, "other/2026/11/21/00/00/00/forged-flow/output.json", orjson.dumps(forged_flow)
    )
    # The console writes A2I's layout under its own output prefix: accepted.
    await _put(
        sink.s3,
        f"console-out/{PREFIX}/console-loop/output.json",
        output_json("console-loop", [EXPLICIT]),
    )
    forged = {
        "forged-path": completion("forged-path", uri_of(victim)),
        "forged-copy": completion("forged-copy"),
        "forged-flow": completion(
            "forged-flow",
            f"s3://{BUCKET}/other/2026/11/21/00/00/00/forged-flow/output.json",
            flowDefinitionArn=other_flow,
        ),
        "forged-arn": completion(
            "forged-arn",
            humanLoopArn=f"arn:aws:sagemaker:us-east-1:000000000000:human-loop/{victim}",
        ),
    }
    await sink.reviews(victim, "console-loop", *forged)
    await sink.events(*forged.values())
    await sink.events(
        completion(victim),
        completion("console-loop", uri_of("console-loop", f"console-out/{PREFIX}")),
    )

    out = await sink.wait(
        lambda o: (
            bool(o.verdict_of(victim) and o.verdict_of("console-loop"))
            and all(o.dead_for(x) for x in forged)
        ),
        30,
    )
    assert out.verdict_of(victim) == Counter({("rejected", "human"): 1}), sink.tail()
    assert out.verdict_of("console-loop") == Counter({("rejected", "human"): 1})
    for loop in forged:
        assert out.reasons_for(loop) == ["forged_event"], (loop, sink.tail())
        assert out.verdict_of(loop) is None  # the review stays pending


async def test_a_forged_event_cannot_drop_a_genuine_one_waiting_for_the_store(
    sink: Sink,
) -> None:
    """The genuine answer waits for a flaky store; a forged event for the same loop (another
    flow's answers, in a path of the right shape, so only reading it tells) arrives meanwhile.
    Once, it took over the genuine one's retry and was then dead-lettered: the loop was left to
    its SLA fallback."""
    loop = "flaky-queued"  # the proxy answers 503 twice for any path of this loop
    other_flow = FLOW.replace("flow-definition/moderation", "flow-definition/other")
    await put_output(sink.s3, loop, output_json(loop, [EXPLICIT]))
    forged_output = orjson.loads(output_json(loop, [[]]))
    forged_output["flowDefinitionArn"] = other_flow
    forged_key = f"other/2026/11/21/00/00/00/{loop}/output.json"
    await _put(sink.s3, forged_key, orjson.dumps(forged_output))
    await sink.reviews(loop)
    forged = completion(loop, f"s3://{BUCKET}/{forged_key}", flowDefinitionArn=other_flow)
    # One key, so one partition: the genuine event is read first, the forged one right after.
    key = loop.encode()
    await produce(
        sink.bootstrap, sink.completions, [(key, completion(loop), []), (key, forged, [])]
    )

    out = await sink.wait(lambda o: bool(o.verdict_of(loop)), 30)
    assert out.verdict_of(loop) == Counter({("rejected", "human"): 1}), sink.tail()
    assert sink.proxy.failures(loop) >= 2  # it did wait for the store
    assert out.reasons_for(loop) == []  # decided first: the forged one is only a duplicate


async def _put(endpoint: str, key: str, body: bytes) -> None:
    import aioboto3

    session = aioboto3.Session()
    async with session.client("s3", region_name="us-east-1", endpoint_url=endpoint) as s3:
        await s3.put_object(Bucket=BUCKET, Key=key, Body=body)


async def test_oversized_events_are_dead_lettered_and_the_agents_live_on(sink: Sink) -> None:
    huge = orjson.loads(completion("huge-event"))
    huge["detail"]["padding"] = "x" * (5 * 1024 * 1024)  # over MODERATION_SINK_MAX_EVENT_BYTES
    big = orjson.loads(completion("big-event"))
    big["detail"]["padding"] = "x" * (3 * 1024 * 1024)  # under it, over the producer's limit
    after = "after-big"
    await put_output(sink.s3, after, output_json(after, [[]]))
    await sink.reviews("huge-event", "big-event", after)
    await sink.events(orjson.dumps(huge), orjson.dumps(big))
    await sink.events(completion(after))

    def sized(out: Outputs, low: int, high: int) -> list[dict[str, Any]]:
        # Their dead letters keep a base64 prefix of the event, with its size and sha256.
        return [d for d in out.dead if low < (d["original"].get("value_size") or 0) < high]

    mib = 1024 * 1024
    out = await sink.wait(
        lambda o: bool(
            o.verdict_of(after) and sized(o, 5 * mib, 6 * mib) and sized(o, 3 * mib, 4 * mib)
        ),
        30,
    )
    assert out.verdict_of(after) == Counter({("approved", "human"): 1}), sink.tail()
    huge_dead = sized(out, 5 * mib, 6 * mib)
    big_dead = sized(out, 3 * mib, 4 * mib)
    assert [d["error"]["reason"] for d in huge_dead] == ["record_too_large"], sink.tail()
    assert [d["error"]["reason"] for d in big_dead] == ["record_too_large"], sink.tail()
    assert "could not re-key" in big_dead[0]["error"]["message"]


async def test_orphan_completions_are_bounded_and_expire(sink: Sink) -> None:
    orphans = [f"orphan-{i}" for i in range(MAX_EARLY + 4)]
    await sink.events(*(completion(loop) for loop in orphans))  # no review record, ever

    out = await sink.wait(lambda o: all(o.dead_for(x) for x in orphans), TTL_S + 30)
    for loop in orphans:
        assert out.reasons_for(loop) == ["orphan_completion"], (loop, sink.tail())
    messages = [out.dead_for(loop)[0]["error"]["message"] for loop in orphans]
    assert sum("MODERATION_SINK_MAX_EARLY" in m for m in messages) >= 1
    assert sum("MODERATION_SINK_ORPHAN_TTL_S" in m for m in messages) >= 1
    _, metrics = await probe(f"{sink.http}/metrics")
    series = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("moderation_review_")
    }
    assert series["moderation_review_early_completions"] == 0
    evicted = series['moderation_review_orphan_completions_total{why="evicted"}']
    expired = series['moderation_review_orphan_completions_total{why="expired"}']
    assert evicted >= 1 and expired >= 1 and evicted + expired == len(orphans)


async def test_undecodable_header_names_are_dead_lettered_and_the_sink_goes_on(sink: Sink) -> None:
    """Once, one such record on either topic stopped faust's consumer and with it every review."""
    poisoned, good = "raw-header-review", "raw-header-good"
    await put_output(sink.s3, good, output_json(good, [EXPLICIT]))
    bad_name = [(raw_header_name(b"\xff\xfe"), b"x"), ("trace-id", b"t")]
    producer = AIOKafkaProducer(bootstrap_servers=sink.bootstrap, linger_ms=0)
    await producer.start()
    try:
        for partition in (0, 1):
            await send_records_with_raw_headers(
                producer,
                sink.topics.review,
                partition,
                [(b"raw", review_record(f"req-{poisoned}", poisoned), bad_name)],
            )
            await send_records_with_raw_headers(
                producer, sink.completions, partition, [(None, completion(poisoned), bad_name)]
            )
    finally:
        await producer.stop()
    await sink.reviews(good)
    await sink.events(completion(good))

    out = await sink.wait(
        lambda o: bool(o.verdict_of(good)) and len(o.dead_for(poisoned)) >= 2
        and len([d for d in o.dead if d["error"]["reason"] == "undecodable_record"]) >= 4,
        40,
    )  # fmt: skip
    assert out.verdict_of(good) == Counter({("rejected", "human"): 1}), sink.tail()
    undecodable = [d for d in out.dead if d["error"]["reason"] == "undecodable_record"]
    assert len(undecodable) == 4, sink.tail()
    assert {d["source"]["topic"] for d in undecodable} == {sink.topics.review, sink.completions}
    for dead in undecodable:
        assert dead["consumer"] == "sink"
        assert dead["original"]["headers"][0]["key_encoding"] == "base64"
        # A review record's request id travels with its dead letter, as the console's intake
        # writes it; an event has none.
        review_topic = dead["source"]["topic"] == sink.topics.review
        assert dead["id"] == (f"req-{poisoned}" if review_topic else None), dead
    assert out.verdict_of(poisoned) is None  # neither record was taken as a review or an answer
    assert sink.proc.returncode is None


async def test_sigterm_exits_in_time_while_the_store_is_failing(sink: Sink) -> None:
    down = "unavailable-2"
    await sink.reviews(down)
    await sink.events(completion(down))
    for _ in range(100):
        if sink.proxy.failures(down):
            break  # a read for it failed: it is being retried now
        await asyncio.sleep(0.2)
    else:
        pytest.fail(sink.tail())
    sink.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(sink.proc.wait(), 25) == 0, sink.tail()
