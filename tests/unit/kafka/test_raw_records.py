"""The raw record reader against batches built by aiokafka's own builders (every codec)."""

from __future__ import annotations

import contextlib

import pytest
from aiokafka.codec import has_lz4, has_snappy, has_zstd
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy
from aiokafka.record.legacy_records import LegacyRecordBatchBuilder
from hypothesis import given
from hypothesis import strategies as st

from service.kafka.raw_records import CorruptBatch, RawRecord, split_records
from tests.kafka_helpers import raw_header_name


def v2_batch(
    base_offset: int,
    records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]],
    codec: int = 0,
) -> bytes:
    builder = _DefaultRecordBatchBuilderPy(
        2,
        codec,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 30,
    )
    for delta, (key, value, headers) in enumerate(records):
        builder.append(
            delta, timestamp=1_700_000_000_000 + delta, key=key, value=value, headers=headers
        )
    data = bytearray(builder.build())
    data[0:8] = base_offset.to_bytes(8, "big")
    return bytes(data)


CODECS = [
    pytest.param(0, id="none"),
    pytest.param(1, id="gzip"),
    pytest.param(2, id="snappy", marks=pytest.mark.skipif(not has_snappy(), reason="no snappy")),
    pytest.param(3, id="lz4", marks=pytest.mark.skipif(not has_lz4(), reason="no lz4")),
    pytest.param(4, id="zstd", marks=pytest.mark.skipif(not has_zstd(), reason="no zstd")),
]


@pytest.mark.parametrize("codec", CODECS)
def test_reads_every_codec_and_keeps_undecodable_header_names(codec: int) -> None:
    records = [
        (b"k0", b"v0", [("trace", b"t")]),
        (None, b"v1", [(raw_header_name(b"\xff\xfe"), b"x"), ("ok", None)]),
        (b"k2", None, []),
    ]
    got = list(split_records(v2_batch(40, records, codec)))
    assert [r.offset for r in got] == [40, 41, 42]
    assert got[0] == RawRecord(40, 1_700_000_000_000, 0, b"k0", b"v0", ((b"trace", b"t"),))
    assert got[1].headers == ((b"\xff\xfe", b"x"), (b"ok", None))
    assert got[2].key == b"k2"
    assert got[2].value is None


def test_several_batches_and_a_partial_tail() -> None:
    first = v2_batch(0, [(None, b"a", []), (None, b"b", [])])
    second = v2_batch(2, [(None, b"c", [])])
    got = list(split_records(first + second + second[:20]))
    assert [(r.offset, r.value) for r in got] == [(0, b"a"), (1, b"b"), (2, b"c")]


def test_legacy_batches_are_read_too() -> None:
    builder = LegacyRecordBatchBuilder(magic=1, compression_type=0, batch_size=1 << 20)
    builder.append(0, timestamp=5, key=b"k", value=b"v")
    got = list(split_records(bytes(builder.build())))
    assert [(r.offset, r.key, r.value, r.headers) for r in got] == [(0, b"k", b"v", ())]


def test_a_flipped_byte_fails_the_crc() -> None:
    data = bytearray(v2_batch(0, [(None, b"value", [])]))
    data[-1] ^= 0xFF
    with pytest.raises(CorruptBatch):
        list(split_records(bytes(data)))


@given(st.binary(max_size=300))
def test_garbage_never_raises_anything_but_corrupt_batch(data: bytes) -> None:
    with contextlib.suppress(CorruptBatch):
        list(split_records(data))
