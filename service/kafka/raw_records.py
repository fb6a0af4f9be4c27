"""Kafka record batches split into records without decoding anything.

aiokafka decodes header names as UTF-8 while it iterates a fetched batch, so a single record with
a non-UTF-8 header name raises out of ``getmany()``; retried as is, it wedges its partition for
good. This reader splits the same bytes (message format v2, the one brokers have written since
Kafka 0.11) into records whose header names stay bytes, so that record can be dead-lettered like
any other bad input and the partition can go on. Older formats carry no headers: aiokafka reads
them without trouble, and so does :func:`split_records`, through aiokafka's own legacy reader.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from aiokafka.codec import gzip_decode, lz4_decode, snappy_decode, zstd_decode
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c

RawHeaders = tuple[tuple[bytes, bytes | None], ...]

_BATCH_HEAD = struct.Struct(">qiib")  # base offset, batch length, leader epoch, magic
_V2_HEAD = struct.Struct(">IhiqqqhiI")  # crc, attributes, last offset delta, timestamps, ...
_V2_RECORDS_AT = _BATCH_HEAD.size + _V2_HEAD.size  # 61
_LOG_APPEND_TIME = 1
_DECOMPRESS: dict[int, Callable[[bytes], bytes]] = {
    1: gzip_decode,
    2: snappy_decode,
    3: lz4_decode,
    4: zstd_decode,
}


class CorruptBatch(ValueError):
    """The bytes are not a well-formed record batch (a CRC or length that does not add up)."""


@dataclass(frozen=True, slots=True)
class RawRecord:
    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: RawHeaders


def split_records(data: bytes) -> Iterator[RawRecord]:
    """The records of a fetch response's record set, in offset order, control batches skipped.

    A partial batch at the end (a fetch cut short by its byte limit) is ignored, as clients do.
    """
    pos = 0
    while pos + _BATCH_HEAD.size <= len(data):
        base_offset, length, _, magic = _BATCH_HEAD.unpack_from(data, pos)
        end = pos + 12 + length
        if length < _BATCH_HEAD.size - 12 or end > len(data):
            return
        if magic == 2:
            yield from _v2_batch(data[pos:end], base_offset)
        else:
            yield from _legacy_batch(data[pos:end])
        pos = end


def _v2_batch(batch: bytes, base_offset: int) -> Iterator[RawRecord]:
    if len(batch) < _V2_RECORDS_AT:
        raise CorruptBatch(f"batch at offset {base_offset} is shorter than its header")
    crc, attributes, _, first_ts, max_ts, _, _, _, count = _V2_HEAD.unpack_from(
        batch, _BATCH_HEAD.size
    )
    if calc_crc32c(batch[21:]) != crc:
        raise CorruptBatch(f"batch at offset {base_offset} fails its CRC")
    if attributes & 0x20:  # a control batch (transaction markers): not a record of ours
        return
    payload = batch[_V2_RECORDS_AT:]
    codec = attributes & 0x07
    if codec:
        if codec not in _DECOMPRESS:
            raise CorruptBatch(f"batch at offset {base_offset} has unknown codec {codec}")
        try:
            payload = _DECOMPRESS[codec](payload)
        except Exception as exc:  # each codec library raises its own types
            raise CorruptBatch(f"batch at offset {base_offset}: {exc!r}") from exc
    ts_type = (attributes >> 3) & 1
    reader = _Reader(payload)
    for _ in range(count):
        length = reader.varint()
        end = reader.pos + length
        reader.pos += 1  # record attributes: unused
        ts_delta = reader.varint()
        offset_delta = reader.varint()
        key = reader.blob()
        value = reader.blob()
        headers = []
        for _ in range(reader.varint()):
            name = reader.blob()
            headers.append((name or b"", reader.blob()))
        if reader.pos != end:
            raise CorruptBatch(f"record at offset {base_offset + offset_delta} has a bad length")
        yield RawRecord(
            offset=base_offset + offset_delta,
            timestamp=max_ts if ts_type == _LOG_APPEND_TIME else first_ts + ts_delta,
            timestamp_type=ts_type,
            key=key,
            value=value,
            headers=tuple(headers),
        )


def _legacy_batch(batch: bytes) -> Iterator[RawRecord]:
    records = MemoryRecords(batch)
    while records.has_next():
        legacy = records.next_batch()
        if legacy is None:
            return
        for record in legacy:
            yield RawRecord(
                offset=record.offset,
                timestamp=record.timestamp,
                timestamp_type=record.timestamp_type,
                key=record.key,
                value=record.value,
                headers=(),
            )


class _Reader:
    """Zig-zag varints and length-prefixed byte strings, as record bodies encode them."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def varint(self) -> int:
        shift = 0
        result = 0
        while True:
            if self.pos >= len(self.data) or shift > 63:
                raise CorruptBatch("varint runs past the end of the batch")
            byte = self.data[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return (result >> 1) ^ -(result & 1)
            shift += 7

    def blob(self) -> bytes | None:
        length = self.varint()
        if length < 0:
            return None
        end = self.pos + length
        if end > len(self.data):
            raise CorruptBatch("field runs past the end of the batch")
        data = self.data[self.pos : end]
        self.pos = end
        return data
