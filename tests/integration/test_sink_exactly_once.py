"""The completion sink under MODERATION_PROCESSING_GUARANTEE=exactly_once.

On noida-db (transactions, read_committed): review records (written in transactions, one of them
aborted) and A2I completion events in; the real ``python -m service sink`` SIGKILLed mid-run and
restarted; a read_committed reader must see exactly one final verdict per loop, every dead
letter once, and nothing of the aborted review. On the embedded Tansu it must refuse to start.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from service.errors import ConfigError
from service.review.sink import CompletionSink
from service.settings import Settings
from tests.integration.test_exactly_once import read_all
from tests.integration.test_review_sink import event, output_json, put_output, review_record
from tests.kafka_helpers import Topics, create_topics, produce
from tests.processes import exit_output, local_settings, process_env

LOOPS = 60
KILLS = 3
EXPLICIT = [{"name": "Explicit Nudity", "parentName": "Explicit"}]


def sink_env(
    bootstrap: str, topics: Topics, completions: str, s3: str, data_dir: Path, guarantee: str
) -> dict[str, str]:
    return process_env(
        local_settings(bootstrap, topics)
        | {
            "KAFKA_ENABLE_IDEMPOTENCE": "true",
            "KAFKA_GROUP_INSTANCE_ID": "sink-0",  # noida never expires a killed member
            "MODERATION_PROCESSING_GUARANTEE": guarantee,
            "MODERATION_SINK_DATA_DIR": str(data_dir),
            "S3_ENDPOINT_URL": s3,
            "MODERATION_COMPLETIONS_TOPIC": completions,
            "LOG_FORMAT": "text",
        }
    )


def loop_name(topics: Topics, i: int) -> str:
    return f"l{topics.group}-{i}"  # A2I's loop names: lower-case letters, digits and dashes


async def produce_in_transaction(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], *, commit: bool, tid: str
) -> None:
    """As the pipeline writes review records under exactly_once: in a transaction."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=tid)
    await producer.start()
    try:
        await producer.begin_transaction()
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key)
        if commit:
            await producer.commit_transaction()
        else:
            await producer.abort_transaction()
    finally:
        await producer.stop()


async def sink_kill_restart_run(
    bootstrap: str, topics: Topics, s3: str, tmp_path: Path, guarantee: str
) -> tuple[dict[str, Counter[str]], Counter[str], int]:
    """(loop -> verdict topics seen, DLQ reasons seen, records an uncommitted reader sees)."""
    completions = f"{topics.input}.completions"
    outputs = [topics.approved, topics.rejected, topics.dlq]
    await create_topics(bootstrap, [topics.review, completions, *outputs], 2)
    loops = [loop_name(topics, i) for i in range(LOOPS)]
    for i, loop in enumerate(loops):
        await put_output(s3, loop, output_json(loop, [EXPLICIT if i % 2 else []]))
    reviews = [(f"req-{loop}".encode(), review_record(f"req-{loop}", loop)) for loop in loops]
    await produce_in_transaction(
        bootstrap, topics.review, reviews, commit=True, tid=f"{topics.group}-pipeline"
    )
    # A review the pipeline aborted (its transaction failed): it must never be decided.
    ghost = f"l{topics.group}-ghost"
    await put_output(s3, ghost, output_json(ghost, [[]]))
    ghost_review = [(b"req-ghost", review_record("req-ghost", ghost))]
    await produce_in_transaction(
        bootstrap, topics.review, ghost_review, commit=False, tid=f"{topics.group}-aborted"
    )
    env = sink_env(bootstrap, topics, completions, s3, tmp_path / "sink-data", guarantee)
    log = tmp_path / f"sink-{guarantee}.log"
    argv = [sys.executable, "-m", "service", "sink"]

    async def feed() -> None:
        """Completions trickle in for the whole run, so every kill lands mid-run."""
        await produce(bootstrap, completions, [(ghost.encode(), event(ghost), [])])
        for start in range(0, LOOPS, 4):
            batch: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = [
                (loop.encode(), event(loop), []) for loop in loops[start : start + 4]
            ]
            if start % 20 == 0:  # now and then one the sink must dead-letter
                batch.append((b"junk", b'{"not": "an event"}', []))
            await produce(bootstrap, completions, batch)
            await asyncio.sleep(0.4)

    async def written() -> int:
        return len(await read_all(bootstrap, outputs, expected=0, isolation="read_uncommitted"))

    feeder = asyncio.create_task(feed())
    proc: asyncio.subprocess.Process | None = None
    try:
        for _ in range(KILLS):
            before = await written()
            with log.open("ab") as out:
                proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=out, stderr=out)
            until = asyncio.get_running_loop().time() + 60
            while asyncio.get_running_loop().time() < until:  # kill once this run wrote some
                if await written() > before or proc.returncode is not None:
                    break
                await asyncio.sleep(0.1)
            assert proc.returncode is None, log.read_text()[-3000:]
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        with log.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=out, stderr=out)
        await asyncio.wait_for(feeder, 120)
        loop_time = asyncio.get_running_loop().time
        deadline = loop_time() + 90
        while loop_time() < deadline:  # every loop decided, as a read_committed reader sees it
            records = await read_all(bootstrap, outputs, expected=0, isolation="read_committed")
            verdicts = {r.key for r in records if r.topic != topics.dlq}
            if len(verdicts) >= LOOPS or proc.returncode is not None:
                break
            await asyncio.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0, log.read_text()[-3000:]
    finally:
        feeder.cancel()
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
    records = await read_all(bootstrap, outputs, expected=LOOPS, isolation="read_committed")
    seen: dict[str, Counter[str]] = {}
    reasons: Counter[str] = Counter()
    for record in records:
        value = orjson.loads(record.value)
        if record.topic == topics.dlq:
            reasons[value["error"]["reason"]] += 1
        else:
            loop = value["human_review"]["human_loop_name"]
            seen.setdefault(loop, Counter())[record.topic] += 1
    raw = await written()
    duplicates = sum(sum(c.values()) - 1 for c in seen.values())
    lost = LOOPS - len(set(seen) & set(loops))
    print(f"\nsink {guarantee}: {LOOPS} loops, {KILLS} SIGKILLs: {duplicates} duplicate verdicts, ")
    print(f"{lost} lost, DLQ {dict(reasons)} ({raw} records uncommitted readers see)")
    return seen, reasons, raw


@pytest.mark.noida
@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_sink_sigkilled_mid_run_emits_one_verdict_per_loop(
    noida_bootstrap: str, topics: Topics, moto_s3: str, tmp_path: Path
) -> None:
    seen, reasons, _ = await sink_kill_restart_run(
        noida_bootstrap, topics, moto_s3, tmp_path, "exactly_once"
    )
    expected = {
        loop_name(topics, i): Counter({topics.rejected if i % 2 else topics.approved: 1})
        for i in range(LOOPS)
    }
    assert not list(Path.cwd().glob("*-review-sink-data"))
    assert reasons == Counter({"malformed_event": LOOPS // 20})  # each dead letter once
    assert set(seen) <= set(expected)  # nothing of the aborted review
    for loop, topics_seen in seen.items():
        assert topics_seen == expected[loop], loop  # one verdict each, the right one
    lost = sorted(set(expected) - set(seen))
    if lost:  # see test_noida_drops_committed_records_after_an_abort_in_an_earlier_fetch
        pytest.xfail(f"{len(lost)} of {LOOPS} loops lost to noida-db's stale abort index: {lost}")


@pytest.mark.noida
async def test_noida_drops_committed_records_after_an_abort_in_an_earlier_fetch(
    noida_bootstrap: str, topics: Topics
) -> None:
    """The broker bug the sink's exactly_once meets on noida-db 0.2.3, with plain clients.

    A transactional producer aborts, then commits; a restarted one (same transactional id, same
    producer id, a new epoch) commits again. A read_committed consumer that starts after the
    abort marker gets *nothing*: noida-db lists every aborted transaction of the partition in each
    fetch response (Kafka lists only those overlapping the fetched range), so aiokafka treats the
    producer's later batches as aborted until an abort marker it never sees. The sink resumes
    from committed offsets after a SIGKILL, past such markers (its per-loop topic, its table
    changelogs): records are lost there. Apache Kafka does not do this; when this test fails,
    noida-db is fixed.
    """
    topic = topics.review
    await create_topics(noida_bootstrap, [topic], 1)
    for values, abort_first in (([b"committed-1"], True), ([b"committed-2"], False)):
        producer = AIOKafkaProducer(bootstrap_servers=noida_bootstrap, transactional_id=topic)
        await producer.start()
        try:
            if abort_first:
                await producer.begin_transaction()
                await producer.send_and_wait(topic, b"aborted", partition=0)
                await producer.abort_transaction()
            await producer.begin_transaction()
            for value in values:
                await producer.send_and_wait(topic, value, partition=0)
            await producer.commit_transaction()
        finally:
            await producer.stop()
    whole = await read_all(noida_bootstrap, [topic], expected=2, isolation="read_committed")
    assert [r.value for r in whole] == [b"committed-1", b"committed-2"]  # from 0: abort seen
    consumer = AIOKafkaConsumer(bootstrap_servers=noida_bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, whole[0].offset + 1)  # past the abort marker, as after a restart
        later: list[bytes] = []
        for _ in range(10):
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                later += [r.value for r in batch]
    finally:
        await consumer.stop()
    assert later == []  # Kafka would return [b"committed-2"]


@pytest.mark.kafka
async def test_exactly_once_sink_refuses_a_broker_without_transactions(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    env = local_settings(kafka_bootstrap, topics) | {
        "MODERATION_PROCESSING_GUARANTEE": "exactly_once",
        "MODERATION_SINK_DATA_DIR": str(tmp_path),
    }
    sink = CompletionSink(Settings.from_env(env), kafka_bootstrap)
    with pytest.raises(ConfigError) as raised:
        await asyncio.wait_for(sink.probe(), 60)
    assert raised.value.variable == "MODERATION_PROCESSING_GUARANTEE"
    assert kafka_bootstrap in str(raised.value)


@pytest.mark.kafka
@pytest.mark.slow
async def test_the_sink_process_exits_with_the_error_on_a_broker_without_transactions(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    """``python -m service sink`` exits 2 naming the variable and the broker, before joining."""
    env = process_env(
        local_settings(kafka_bootstrap, topics)
        | {
            "MODERATION_PROCESSING_GUARANTEE": "exactly_once",
            "MODERATION_SINK_DATA_DIR": str(tmp_path / "sink-data"),
        }
    )
    code, text = await exit_output("sink", env)
    assert code == 2, text[-3000:]
    assert "configuration error: MODERATION_PROCESSING_GUARANTEE" in text, text[-3000:]
    assert kafka_bootstrap in text


def test_the_sink_data_dir_is_validated_and_never_the_working_directory(tmp_path: Path) -> None:
    base = {"AWS_REGION": "us-east-1"}
    default = Settings.from_env(base).sink_data_dir
    assert default.is_absolute() and Path.cwd() not in default.parents
    chosen = Settings.from_env(base | {"MODERATION_SINK_DATA_DIR": str(tmp_path)})
    assert chosen.sink_data_dir == tmp_path
    with pytest.raises(ConfigError, match="MODERATION_SINK_DATA_DIR"):
        Settings.from_env(base | {"MODERATION_SINK_DATA_DIR": "relative/dir"})
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="MODERATION_SINK_DATA_DIR"):
        Settings.from_env(base | {"MODERATION_SINK_DATA_DIR": str(afile)})
    sink = CompletionSink(chosen, "127.0.0.1:9")
    assert Path(str(sink.app.conf.datadir)).parent == tmp_path
