"""Seeded hostile Kafka records for the fuzz suite (issue 11): one seed, one fixed list.

Why our own generator and not hypothesis: a system run needs the whole list up front (it is
produced before the process starts, and every record's outcome is checked afterwards), and a
failure must be replayable from the seed alone. ``random.Random(seed)`` gives both.

Each record carries the class it was generated for (``kind``) and the outcomes it may end in
(``expect``): a verdict topic (``approved``, ``rejected``, ``review``) or ``dlq:<reason>``.
Decorator classes (huge keys, many or large headers, binary header values, odd timestamps) wrap
a record of a cheap base class and keep its expectation: the key and headers must never change
where a record ends.

:func:`pipeline_records` feeds ``python -m service run``; :func:`review_topic_records` and
:func:`completion_events` feed the completion sink and the console's intake (their expectation
is what the service's parsers say at the door: ``accepted`` or ``dlq:<reason>``).
"""

from __future__ import annotations

import base64
import dataclasses
import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import orjson

from tests.images import (
    BORDERLINE,
    EXPLICIT,
    EXPLICIT_NUDITY,
    MILD,
    b64,
    cut,
    label,
    png,
    png_image,
    short_stream_png,
    solid_png,
    zlib_bomb_png,
)
from tests.kafka_helpers import raw_header_name

DEFAULT_SEED = 11  # the issue's number; any seed must pass
MIB = 1024 * 1024
S3_BUCKET = "fuzz-bucket"
APPROVED, REJECTED, REVIEW = "approved", "rejected", "review"
ACCEPTED = "accepted"  # review records and completion events: parsed at the door

Header = tuple[str, bytes | None]


def dlq(reason: str) -> str:
    return f"dlq:{reason}"


@dataclass(frozen=True, slots=True)
class FuzzRecord:
    """One Kafka record to produce, where it goes, and the outcomes it may end in."""

    kind: str
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]
    expect: frozenset[str]
    partition: int = 0
    #: Records with the same batch id are sent as ONE batch by aiokafka's pure-Python builder
    #: (needed for header names that are not UTF-8, and for a record with neither key nor value;
    #: the others in the batch are its neighbours).
    batch: int | None = None
    timestamp_ms: int | None = None

    @property
    def raw(self) -> bool:
        """Whether it must go through the pure-Python builder."""
        return self.batch is not None


@dataclass
class Corpus:
    """The records in produce order, plus what the fakes must know for the valid ones to pass."""

    records: list[FuzzRecord]
    #: The moderation backend the expectations are for: ``rekognition`` (the fake) or ``local``.
    backend: str = "rekognition"
    #: (bucket, key) -> labels for the fake Rekognition's ``set_object``.
    s3_objects: dict[tuple[str, str], list[dict[str, object]]] = field(default_factory=dict)
    #: path -> (HTTP status, headers, body) served at the ``origin`` given to the generator.
    url_routes: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)

    def kinds(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.records:
            counts[record.kind] = counts.get(record.kind, 0) + 1
        return dict(sorted(counts.items()))


# -- the pipeline's input topic -------------------------------------------------------------

_Unit = list[FuzzRecord]  # records that stay together (one raw batch), in order
_Base = tuple[str, bytes | None, frozenset[str]]  # kind, value, expect

#: Few, because each is megabytes: the run must stay fast.
PIPELINE_FIXED: dict[str, int] = {
    "poison_3mib": 3,  # 3 MiB of 0x01: escaped, ~19 MB of JSON (the record that once wedged)
    "image_too_large": 1,  # 5 MiB + 1 decoded, ~7 MB of base64
    "record_too_large": 1,  # over MODERATION_MAX_INPUT_BYTES (8 MiB)
    "bomb_zlib": 2,  # 12,000 x 10,000 RGBA, ~480 KB compressed
    "bomb_pixel_flood": 20,  # a ~100-byte 12,000 x 10,000 16-bit PNG
    "bomb_short_stream": 20,  # zlib stream ends after one row
    "bomb_cut": 20,  # a real PNG cut in half
    "large_headers": 12,  # one header value of 64-256 KiB
    "deep_attributes": 6,  # attributes nested deeper than the verdict encoder goes
}

#: Weights of the cheap classes that fill the rest of the run.
PIPELINE_WEIGHTS: dict[str, int] = {
    "valid_bytes": 14,
    "valid_s3": 6,
    "valid_url": 4,
    "valid_real_png": 2,
    "valid_odd_id": 2,
    "malformed_json": 8,
    "random_bytes": 8,
    "wrong_shape": 4,
    "tombstone": 3,
    "missing_field": 4,
    "invalid_field": 8,
    "invalid_base64": 4,
    "not_an_image": 4,
    "broken_image": 4,
    "forbidden_url": 5,
    "invalid_url": 4,
    "url_http_error": 2,
    "url_not_an_image": 1,
    "redirect_to_forbidden": 1,
    "invalid_s3_object": 2,
    "undecodable_header": 3,  # a raw batch of 2-5 records, 1-2 of them poison
    "huge_key": 3,
    "many_headers": 2,
    "binary_header_values": 3,
    "odd_timestamp": 2,
}

#: The local backend's mix (issue 11 item 3 through the real process): the bombs it must refuse
#: before decoding, real images it decodes, and a few record-level classes. Four zlib bombs,
#: as in the issue (four at once once reached 4.2 GB).
LOCAL_FIXED: dict[str, int] = {
    "bomb_zlib": 4,
    "bomb_pixel_flood": 20,
    "bomb_short_stream": 20,
    "bomb_cut": 20,
    "valid_real_png": 60,
    "poison_3mib": 1,
}
LOCAL_WEIGHTS: dict[str, int] = {
    "malformed_json": 1,
    "tombstone": 1,
    "not_an_image": 1,
    "undecodable_header": 1,
    "huge_key": 1,
}
#: What each bomb ends as, per backend. Over MODERATION_MAX_IMAGE_PIXELS (100 MP by default) is
#: refused from the header, before decoding, for both; so is a file cut short. A PNG within the
#: pixel bound and Rekognition's limits passes to Rekognition untouched (it decodes it itself; the
#: fake answers with no labels); the local backend must refuse the rest from their streams,
#: before any pixel is allocated.
_BOMB_OUTCOMES: dict[str, dict[str, str]] = {
    "rekognition": {
        "bomb_zlib": dlq("image_too_many_pixels"),
        "bomb_pixel_flood": dlq("image_too_many_pixels"),
        "bomb_short_stream": APPROVED,
        "bomb_cut": dlq("truncated_image"),
    },
    "local": {
        "bomb_zlib": dlq("image_too_many_pixels"),
        "bomb_pixel_flood": dlq("image_too_many_pixels"),
        "bomb_short_stream": dlq("truncated_image"),  # at most 16 MP: under the limit
        "bomb_cut": dlq("truncated_image"),
    },
}
ANY_VERDICT = frozenset({APPROVED, REJECTED, REVIEW})
BROKEN_IMAGE = frozenset(
    dlq(reason) for reason in ("invalid_image_format", "truncated_image", "not_an_image")
)

_VERDICT_IMAGES: tuple[tuple[tuple[dict[str, object], ...], str], ...] = (
    ((), APPROVED),
    ((MILD,), APPROVED),  # 20 %: under the default min confidence of 50
    ((EXPLICIT,), REJECTED),
    ((EXPLICIT_NUDITY, EXPLICIT), REJECTED),
    ((BORDERLINE,), REVIEW),
    ((BORDERLINE, MILD), REVIEW),
)


#: Bombs just over the default pixel bound (100 MP): 12,000 x 10,000.
BOMB_SIZE = (12_000, 10_000)


@cache
def _zlib_bomb() -> bytes:
    return zlib_bomb_png(*BOMB_SIZE)


@cache
def _pixel_flood() -> bytes:
    """Issue 11's pixel flood (16-bit grey, one row of data), at the bomb size."""
    return png_image(*BOMB_SIZE, bit_depth=16, colour_type=0, rows=1)


class _PipelineGen:
    def __init__(self, seed: int, origin: str, backend: str = "rekognition") -> None:
        self.rng = random.Random(seed)
        self.origin = origin.rstrip("/")
        self.backend = backend
        self.n = 0
        self.corpus = Corpus(records=[], backend=backend)
        self._batches = 0
        self._s3_keys: list[tuple[str, str]] = []
        self._url_paths: list[tuple[str, str]] = []
        for i in range(8):
            labels, outcome = _VERDICT_IMAGES[i % len(_VERDICT_IMAGES)]
            key = f"objects/{i}.jpg"
            self.corpus.s3_objects[(S3_BUCKET, key)] = list(labels)
            self._s3_keys.append((key, outcome))
            path = f"/img/{i}.png"
            self.corpus.url_routes[path] = (
                200,
                {"Content-Type": "image/png"},
                png(*labels, salt=f"url{i}"),
            )
            self._url_paths.append((path, outcome))
        self.corpus.url_routes["/page.html"] = (200, {"Content-Type": "image/png"}, b"<html/>")
        self.corpus.url_routes["/to-metadata"] = (
            302,
            {"Location": "http://169.254.169.254/latest/meta-data/"},
            b"",
        )
        self.corpus.url_routes["/to-private"] = (307, {"Location": "http://10.1.2.3/x.png"}, b"")

    # -- small pieces ----------------------------------------------------------------------

    def next_id(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}-{self.n}"

    def text(self, low: int, high: int) -> str:
        alphabet = string.ascii_letters + string.digits + " -_./é日本\u200b🙂"
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(low, high)))

    def key_for(self, request_id: str | None) -> bytes | None:
        roll = self.rng.random()
        if roll < 0.6 and request_id is not None:
            return request_id.encode()
        if roll < 0.75:
            return None
        if roll < 0.8:
            return b""
        return self.rng.randbytes(self.rng.randint(1, 64))

    def headers(self) -> tuple[Header, ...]:
        if self.rng.random() < 0.5:
            return ()
        return (("trace-id", self.rng.randbytes(8).hex().encode()),)

    def attributes(self) -> dict[str, Any] | None:
        if self.rng.random() < 0.5:
            return None
        return {
            "user": self.text(1, 12),
            "n": self.rng.randint(-(2**53), 2**53),
            "tags": [self.text(0, 5) for _ in range(self.rng.randint(0, 4))],
            "nested": {"a": {"b": [None, True, 1.5]}},
        }

    def request(self, request_id: object, image: object, **extra: object) -> bytes:
        body: dict[str, object] = {"id": request_id, "image": image}
        attributes = self.attributes()
        if attributes is not None:
            body["attributes"] = attributes
        body.update(extra)
        return orjson.dumps(body)

    def record(
        self,
        kind: str,
        value: bytes | None,
        expect: str | frozenset[str],
        *,
        request_id: str | None = None,
        key: bytes | None = None,
        headers: tuple[Header, ...] | None = None,
    ) -> FuzzRecord:
        key = key if key is not None else self.key_for(request_id)
        batch = None
        if key is None and value is None:
            # aiokafka's send() refuses a record with neither (other clients write them): the
            # pure-Python builder does not.
            self._batches += 1
            batch = self._batches
        return FuzzRecord(
            kind=kind,
            key=key,
            value=value,
            headers=self.headers() if headers is None else headers,
            expect=frozenset({expect}) if isinstance(expect, str) else expect,
            batch=batch,
        )

    # -- valid requests ----------------------------------------------------------------------

    def valid_bytes(self) -> _Base:
        labels, outcome = self.rng.choice(_VERDICT_IMAGES)
        request_id = self.next_id("bytes")
        encoded = b64(png(*labels, salt=request_id))
        if self.rng.random() < 0.2:  # line-wrapped base64 is accepted
            encoded = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
        extra: dict[str, object] = {}
        if self.rng.random() < 0.2:
            # A request's own min confidence: above every label's, nothing is returned.
            extra["min_confidence"] = self.rng.choice([99, 99.5, 100])
            outcome = APPROVED
        return "valid_bytes", self.request(request_id, {"bytes": encoded}, **extra), _one(outcome)

    def valid_s3(self) -> _Base:
        key, outcome = self.rng.choice(self._s3_keys)
        s3: dict[str, object] = {"bucket": S3_BUCKET, "key": key}
        return "valid_s3", self.request(self.next_id("s3"), {"s3": s3}), _one(outcome)

    def valid_url(self) -> _Base:
        path, outcome = self.rng.choice(self._url_paths)
        url = self.origin + path
        if self.rng.random() < 0.3:
            url += f"?cache={self.rng.randint(0, 10**6)}#frag"
        return "valid_url", self.request(self.next_id("url"), {"url": url}), _one(outcome)

    def valid_real_png(self) -> _Base:
        rgb = (self.rng.randrange(256), self.rng.randrange(256), self.rng.randrange(256))
        image = solid_png(self.rng.randint(80, 200), self.rng.randint(80, 200), rgb)
        value = self.request(self.next_id("real"), {"bytes": b64(image)})
        # The local model judges real pixels (any verdict is right); the fake has no labels.
        return "valid_real_png", value, ANY_VERDICT if self.backend == "local" else _one(APPROVED)

    def valid_odd_id(self) -> _Base:
        self.n += 1
        request_id = self.rng.choice(
            [
                f"nul\x00{self.n}",
                f"{self.n}" + "🙂" * 120,  # 1-128 characters, not bytes
                f"rtl\u202e{self.n}",
                f" {self.n} ",
                f"{self.n}" + "x" * (128 - len(str(self.n))),
                f"quote\"'\\{self.n}",
            ]
        )
        labels, outcome = self.rng.choice(_VERDICT_IMAGES)
        value = self.request(request_id, {"bytes": b64(png(*labels, salt=str(self.n)))})
        return "valid_odd_id", value, _one(outcome)

    # -- bad values ----------------------------------------------------------------------------

    def malformed_json(self) -> _Base:
        good = self.request(self.next_id("mj"), {"bytes": b64(png())})
        value = self.rng.choice(
            [
                good[: self.rng.randint(0, len(good) - 1)],  # cut short
                b"\xef\xbb\xbf" + good,  # a byte order mark
                good.replace(b'"id"', b"'id'"),
                b'{"id": "x", "image": {"bytes": "\xff\xfe"}}',  # not UTF-8 inside a string
                b'{"id": "\\ud800", "image": {}}',  # a lone surrogate
                b'{"id": "x", "min_confidence": NaN}',
                b'{"id": "x", "min_confidence": 1e400}',
                b"[" * 2000 + b"]" * 2000,  # deeper than the parser goes
                b'{"id": "x",}',
                self.text(1, 200).encode(),
            ]
        )
        return "malformed_json", value, _one(dlq("malformed_json"))

    def random_bytes(self) -> _Base:
        value = self.rng.randbytes(self.rng.choice([0, 1, 2, 16, 300, 4000]))
        if value.lstrip(b" \t\r\n").startswith(b"{"):
            value = b"\x00" + value  # not an accidental JSON object
        return "random_bytes", value, _one(dlq("malformed_json"))

    def wrong_shape(self) -> _Base:
        shape: object = self.rng.choice(
            [[], [{"id": "x", "image": {}}], "a string", 42, 1.5, None, True, False]
        )
        return "wrong_shape", orjson.dumps(shape), _one(dlq("malformed_json"))

    def tombstone(self) -> _Base:
        return "tombstone", None, _one(dlq("malformed_json"))

    def missing_field(self) -> _Base:
        image = {"bytes": b64(png())}
        value = self.rng.choice(
            [
                orjson.dumps({"image": image}),
                orjson.dumps({"id": None, "image": image}),
                orjson.dumps({"id": self.next_id("mf")}),
                orjson.dumps({}),
                orjson.dumps({"id": self.next_id("mf"), "image": {"s3": {"key": "k"}}}),
                orjson.dumps({"id": self.next_id("mf"), "image": {"s3": {"bucket": "b"}}}),
            ]
        )
        return "missing_field", value, _one(dlq("missing_field"))

    def invalid_field(self) -> _Base:
        ok = {"bytes": b64(png())}
        request_id = self.next_id("if")
        bodies: list[dict[str, object]] = [
            {"id": 42, "image": ok},
            {"id": "", "image": ok},
            {"id": "x" * 129, "image": ok},
            {"id": ["x"], "image": ok},
            {"id": request_id, "image": "https://example.com/a.png"},
            {"id": request_id, "image": []},
            {"id": request_id, "image": {}},
            {"id": request_id, "image": {"bytes": ok["bytes"], "url": "https://e.com/a.png"}},
            {"id": request_id, "image": {"gif": "x"}},
            {"id": request_id, "image": {"s3": "bucket/key"}},
            {"id": request_id, "image": {"s3": {"bucket": "", "key": "k"}}},
            {"id": request_id, "image": {"s3": {"bucket": ["b"], "key": "k"}}},
            {"id": request_id, "image": {"s3": {"bucket": "b", "key": "k", "version": 3}}},
            {"id": request_id, "image": {"url": ""}},
            {"id": request_id, "image": {"url": 7}},
            {"id": request_id, "image": {"bytes": 12}},
            {"id": request_id, "image": {"bytes": None}},
            {"id": request_id, "image": ok, "attributes": ["a"]},
            {"id": request_id, "image": ok, "attributes": "a"},
            {"id": request_id, "image": ok, "min_confidence": -1},
            {"id": request_id, "image": ok, "min_confidence": 100.5},
            {"id": request_id, "image": ok, "min_confidence": "50"},
            {"id": request_id, "image": ok, "min_confidence": True},
        ]
        return "invalid_field", orjson.dumps(self.rng.choice(bodies)), _one(dlq("invalid_field"))

    def invalid_base64(self) -> _Base:
        good = b64(png())
        text = self.rng.choice(
            [
                "!!!!",
                "data:image/png;base64," + good,
                good + "A",  # a length that is not a multiple of 4
                good.replace("+", "-").replace("/", "_") + "-_-_",  # URL-safe alphabet
                good[:8] + "é" + good[8:],
                good[:12] + "*" + good[12:],
            ]
        )
        value = self.request(self.next_id("b64"), {"bytes": text})
        return "invalid_base64", value, _one(dlq("invalid_base64"))

    def not_an_image(self) -> _Base:
        data = self.rng.choice(
            [
                b"",
                b"%PDF-1.7\n",
                b"\x89PNX\r\n\x1a\n" + self.rng.randbytes(20),
                b"<svg xmlns='http://www.w3.org/2000/svg'/>",
                b"\x00\x00\x00\x18ftypmp42" + self.rng.randbytes(30),  # ISO-BMFF, not HEIF/AVIF
            ]
        )
        value = self.request(self.next_id("nai"), {"bytes": b64(data)})
        return "not_an_image", value, _one(dlq("not_an_image"))

    def broken_image(self) -> _Base:
        """The magic of a supported format, then noise: the decoder's typed refusal (a BMP whose
        header size is not one of BMP's is not recognised as one at all)."""
        data = self.rng.choice(
            [
                b"GIF89a" + self.rng.randbytes(30),
                b"BM" + self.rng.randbytes(60),
                b"RIFF\x00\x00\x00\x00WEBPVP8 " + self.rng.randbytes(30),
                b"II*\x00" + self.rng.randbytes(40),
            ]
        )
        value = self.request(self.next_id("broken"), {"bytes": b64(data)})
        return "broken_image", value, BROKEN_IMAGE

    def forbidden_url(self) -> _Base:
        url = self.rng.choice(
            [
                f"http://10.{self.rng.randrange(256)}.{self.rng.randrange(256)}.7/x.png",
                "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
                "http://localhost/x.png",
                f"http://localhost:{self.rng.randint(1, 65535)}/admin",
                "http://127.0.0.1:8080/metrics",
                "http://[::1]/x.png",
                "http://[::ffff:10.0.0.1]/x.png",
                "http://0x7f000001/x.png",  # 127.0.0.1 in hex: a host name the resolver maps
                "http://[::ffff:169.254.169.254]/",
                "http://0.0.0.0/x.png",
                "http://192.168.1.1/x.png",
                "http://172.16.0.1/x.png",
                "http://100.64.0.1/x.png",
                "http://224.0.0.1/x.png",
                "https://[fd00:ec2::254]/latest/meta-data/",
            ]
        )
        value = self.request(self.next_id("ssrf"), {"url": url})
        return "forbidden_url", value, _one(dlq("forbidden_url"))

    def invalid_url(self) -> _Base:
        url = self.rng.choice(
            [
                "ftp://example.com/a.png",
                "file:///etc/passwd",
                "javascript:alert(1)",
                "gopher://127.0.0.1:6379/_INFO",
                "http://user:secret@example.com/a.png",
                "http://2130706433/x.png",  # 127.0.0.1 as one decimal number
                "http://010.0.0.1/x.png",  # octal, to some parsers
                "http:///x.png",
                "not a url at all",
                "https://exa mple.com/a.png",
                "https://example.com/" + "a" * 2100,  # over 2048 characters
            ]
        )
        value = self.request(self.next_id("badurl"), {"url": url})
        return "invalid_url", value, _one(dlq("invalid_url"))

    def url_http_error(self) -> _Base:
        url = f"{self.origin}/missing/{self.rng.randint(0, 10**6)}.png"
        value = self.request(self.next_id("404"), {"url": url})
        return "url_http_error", value, _one(dlq("url_http_error"))

    def url_not_an_image(self) -> _Base:
        value = self.request(self.next_id("html"), {"url": self.origin + "/page.html"})
        return "url_not_an_image", value, _one(dlq("not_an_image"))

    def redirect_to_forbidden(self) -> _Base:
        path = self.rng.choice(["/to-metadata", "/to-private"])
        value = self.request(self.next_id("redir"), {"url": self.origin + path})
        return "redirect_to_forbidden", value, _one(dlq("forbidden_url"))

    def invalid_s3_object(self) -> _Base:
        s3: dict[str, object] = {
            "bucket": S3_BUCKET,
            "key": f"gone/{self.rng.randint(0, 10**6)}.jpg",
        }
        if self.rng.random() < 0.3:  # an object that exists, at a version that does not
            s3 = {"bucket": S3_BUCKET, "key": self.rng.choice(self._s3_keys)[0]}
            s3["version"] = self.text(1, 20)
        value = self.request(self.next_id("gone"), {"s3": s3})
        return "invalid_s3_object", value, _one(dlq("invalid_s3_object"))

    # -- the big and the bombs (fixed counts) --------------------------------------------------

    def poison_3mib(self) -> FuzzRecord:
        # No headers: with them the dead letter would also drop its header list to fit.
        return self.record(
            "poison_3mib",
            b"\x01" * (3 * MIB),
            dlq("malformed_json"),
            key=f"poison-{self.n}".encode(),
            headers=(),
        )

    def image_too_large(self) -> FuzzRecord:
        """Over Rekognition's 5 MiB for inline bytes: converted to a JPEG within it (the labels
        marker does not survive), so approved, not dead-lettered."""
        value = self.request(self.next_id("big"), {"bytes": b64(png(salt="x" * (5 * MIB)))})
        return self.record("image_too_large", value, APPROVED, headers=())

    def record_too_large(self) -> FuzzRecord:
        body = {"id": self.next_id("huge"), "image": {"bytes": b64(png())}}
        value = orjson.dumps({**body, "attributes": {"pad": "p" * (8 * MIB + 1024)}})
        return self.record("record_too_large", value, dlq("record_too_large"), headers=())

    def bomb(self, kind: str) -> FuzzRecord:
        """An image bomb from tests/images.py; where it ends depends on the backend."""
        builders: dict[str, Callable[[], bytes]] = {
            "bomb_zlib": _zlib_bomb,
            "bomb_pixel_flood": _pixel_flood,
            "bomb_short_stream": lambda: short_stream_png(
                self.rng.randint(100, 4000), self.rng.randint(100, 4000)
            ),
            "bomb_cut": lambda: cut(solid_png(160, 120), self.rng.uniform(0.2, 0.9)),
        }
        value = self.request(self.next_id(kind), {"bytes": b64(builders[kind]())})
        return self.record(kind, value, _BOMB_OUTCOMES[self.backend][kind])

    def deep_attributes(self) -> FuzzRecord:
        """Attributes nested 260-1000 deep: the parser takes them (up to 1024), the verdict
        encoder does not (254). Whatever the fix, never ``internal_error``: either a verdict or
        ``invalid_field`` at the door."""
        depth = self.rng.randint(260, 1000)
        attributes = b'{"a":' * depth + b"1" + b"}" * depth
        request_id = self.next_id("deep")
        value = (
            b'{"id":' + orjson.dumps(request_id) + b',"image":{"bytes":"'
            + b64(png(salt=request_id)).encode() + b'"},"attributes":' + attributes + b"}"
        )  # fmt: skip
        return self.record(
            "deep_attributes",
            value,
            frozenset({APPROVED, dlq("invalid_field")}),
            request_id=request_id,
        )

    # -- decorators: the key and the headers never decide the outcome -------------------------

    def base(self) -> _Base:
        cheap = [
            self.valid_bytes,
            self.valid_s3,
            self.malformed_json,
            self.random_bytes,
            self.tombstone,
            self.invalid_field,
            self.not_an_image,
            self.forbidden_url,
        ]
        if self.backend == "local":  # the fake's labelled blobs and S3 objects are not images
            cheap = [self.valid_real_png, self.malformed_json, self.tombstone, self.not_an_image]
        return self.rng.choice(cheap)()

    def decorated(self, kind: str) -> FuzzRecord:
        _, value, expect = self.base()
        key: bytes | None = None
        headers: tuple[Header, ...] | None = None
        timestamp: int | None = None
        if kind == "huge_key":
            size = self.rng.randint(4 * 1024 + 1, 64 * 1024)
            key = self.rng.choice([b"k" * size, self.rng.randbytes(size)])
        elif kind == "many_headers":
            headers = tuple(
                (self.text(0, 20), self.rng.randbytes(self.rng.randint(0, 100)))
                for _ in range(self.rng.randint(100, 600))
            )
        elif kind == "large_headers":
            big = self.rng.randint(64 * 1024, 256 * 1024)
            headers = (
                ("trace-id", b"t" * 16),
                ("blob", self.rng.randbytes(big)),
                ("after", b"a"),
            )
        elif kind == "binary_header_values":
            headers = (
                ("bin", self.rng.randbytes(self.rng.randint(1, 40)) + b"\xff"),
                ("none", None),
                ("", b"empty name"),
                ("\u00e9t\u00e9 🙂", b"unicode name"),
                ("moderation-verdict", b"approved"),  # a stale copy of ours: replaced
            )
        elif kind == "odd_timestamp":
            timestamp = self.rng.choice([0, 1, 2**41, 4_102_444_800_000])  # 1970 ... 2100
        record = self.record(kind, value, expect, key=key, headers=headers)
        if timestamp is not None:
            record = _replace(record, timestamp_ms=timestamp)
        return record

    def undecodable_batch(self) -> _Unit:
        """2-5 records in one batch, 1-2 of them with a header name that is not UTF-8."""
        size = self.rng.randint(2, 5)
        poison = set(self.rng.sample(range(size), self.rng.randint(1, min(2, size))))
        self._batches += 1
        unit: _Unit = []
        for position in range(size):
            kind, value, expect = self.base()
            headers: tuple[Header, ...] = self.headers()
            if position in poison:
                name = self.rng.choice([b"\xff\xfe", b"\xc3\x28", b"ok-\x80", b"\xed\xa0\x80"])
                headers = ((raw_header_name(name), b"x"), *headers)
                kind, expect = "undecodable_header", _one(dlq("undecodable_record"))
            record = self.record(kind, value, expect, headers=headers)
            unit.append(_replace(record, batch=self._batches))
        return unit

    # -- the whole run -------------------------------------------------------------------------

    def unit(self, kind: str) -> _Unit:
        if kind == "undecodable_header":
            return self.undecodable_batch()
        if kind in ("huge_key", "many_headers", "large_headers", "binary_header_values",
                    "odd_timestamp"):  # fmt: skip
            return [self.decorated(kind)]
        if kind.startswith("bomb_"):
            return [self.bomb(kind)]
        special: dict[str, Callable[[], FuzzRecord]] = {
            "poison_3mib": self.poison_3mib,
            "image_too_large": self.image_too_large,
            "record_too_large": self.record_too_large,
            "deep_attributes": self.deep_attributes,
        }
        if kind in special:
            return [special[kind]()]
        made: _Base = getattr(self, kind)()
        made_kind, value, expect = made
        request_id = _id_of(value)
        return [self.record(made_kind, value, expect, request_id=request_id)]


def pipeline_records(
    seed: int = DEFAULT_SEED, *, origin: str, count: int = 10_000, partitions: int = 3
) -> Corpus:
    """``count`` records (a raw batch may add up to four) for the pipeline's input topic.

    ``origin`` is the base URL of a local HTTP server that serves ``Corpus.url_routes`` and is
    allow-listed for fetching (MODERATION_FETCH_ALLOWED_NETWORKS); nothing else on loopback is.
    """
    return _assemble(
        _PipelineGen(seed, origin), PIPELINE_FIXED, PIPELINE_WEIGHTS, count, partitions
    )


def local_backend_records(
    seed: int = DEFAULT_SEED, *, count: int = 200, partitions: int = 3
) -> Corpus:
    """A small mix for ``MODERATION_BACKEND=local``: bombs, real images, record-level classes."""
    gen = _PipelineGen(seed, "http://127.0.0.2:1", backend="local")  # no URLs in this mix
    return _assemble(gen, LOCAL_FIXED, LOCAL_WEIGHTS, count, partitions)


def _assemble(
    gen: _PipelineGen,
    fixed: dict[str, int],
    weighted: dict[str, int],
    count: int,
    partitions: int,
) -> Corpus:
    """The fixed-count classes, then weighted draws up to ``count``, shuffled (a raw batch
    stays together), each unit on a random partition."""
    units: list[_Unit] = []
    for kind, times in fixed.items():
        units.extend(gen.unit(kind) for _ in range(times))
    kinds, weights = zip(*weighted.items(), strict=True)
    total = sum(len(unit) for unit in units)
    while total < count:
        unit = gen.unit(gen.rng.choices(kinds, weights)[0])
        units.append(unit)
        total += len(unit)
    gen.rng.shuffle(units)
    records: list[FuzzRecord] = []
    for unit in units:
        partition = gen.rng.randrange(partitions)
        records.extend(_replace(record, partition=partition) for record in unit)
    gen.corpus.records = records
    return gen.corpus


# -- the review topic and completion events (the sink's and the console's intake) -----------

FLOW_ARN = "arn:aws:sagemaker:us-east-1:000000000000:flow-definition/fuzz-flow"
#: A2I's layout: <prefix>/<flow-definition>/YYYY/MM/DD/hh/mm/ss/<loop>/output.json
OUTPUT_PREFIX = "s3://fuzz-outputs/a2i/fuzz-flow/2026/12/01/10/00/00"


def _review_record(rng: random.Random, n: int) -> dict[str, Any]:
    """A review record as the pipeline writes it (verdict ``review`` plus a ``review`` object)."""
    loop = f"m{rng.randbytes(31).hex()}"
    return {
        "schema_version": 1,
        "id": f"review-{n}",
        "verdict": "review",
        "decided_by": "model",
        "labels": [
            {
                "name": "Swimwear or Underwear",
                "parent": "",
                "confidence": 65.0,
                "taxonomy_level": 1,
            },
        ],
        "model_version": "7.0",
        "reasons": [],
        "attributes": {"user": f"u{n}"},
        "image": rng.choice(
            [
                {"s3": {"bucket": S3_BUCKET, "key": f"objects/{n}.jpg"}},
                {"url": f"https://images.example.com/{n}.png"},
                {"bytes": {"sha256": rng.randbytes(32).hex(), "size": rng.randint(1, MIB)}},
            ]
        ),
        "source": {"topic": "moderation.requests", "partition": 0, "offset": n},
        "received_at": "2026-12-01T10:00:00.000Z",
        "decided_at": "2026-12-01T10:00:00.100Z",
        "review": {
            "human_loop_name": loop,
            "mode": "self_hosted",
            "flow_definition_arn": None,
            "human_loop_arn": None,
            "activation_reasons": ["Swimwear or Underwear confidence 65.0 >= review threshold 50"],
            "activation_results": None,
            "created_at": "2026-12-01T10:00:00.100Z",
            # Far ahead: the sink's SLA sweep must not decide them by fallback mid-run.
            "deadline": "2099-12-02T10:00:00.100Z",
        },
    }


_REVIEW_BREAKERS: tuple[Callable[[dict[str, Any]], object], ...] = (
    lambda r: r["labels"][0].__setitem__("confidence", "abc"),  # the 500 for every reviewer
    lambda r: r["labels"][0].__setitem__("confidence", 1000),
    lambda r: r["labels"][0].__setitem__("taxonomy_level", "1"),
    lambda r: r["labels"].append("not an object"),
    lambda r: r.__setitem__("labels", {"a": 1}),
    lambda r: r["image"].clear() or r["image"].__setitem__("s3", {"bucket": ["b"], "key": "k"}),
    lambda r: r["image"].clear() or r["image"].__setitem__("url", ""),
    lambda r: r["image"].clear() or r["image"].__setitem__("bytes", {"sha256": "xyz", "size": 1}),
    lambda r: r.__setitem__("verdict", "approved"),
    lambda r: r.__setitem__("schema_version", 2),
    lambda r: r.__setitem__("id", ""),
    lambda r: r.__setitem__("attributes", ["a"]),
    lambda r: r.pop("review"),
    lambda r: r["review"].__setitem__("human_loop_name", "../../etc/passwd"),
    lambda r: r["review"].__setitem__("human_loop_name", "M" + "a" * 70),
    lambda r: r["review"].__setitem__("mode", "robot"),
    lambda r: r["review"].__setitem__("deadline", "tomorrow"),
    lambda r: r["review"].__setitem__("created_at", "2026-12-01T10:00:00"),  # no timezone
    lambda r: r["review"].__setitem__("requeued", -1),
)


def review_topic_records(
    seed: int = DEFAULT_SEED, *, count: int = 1_000, partitions: int = 3
) -> list[FuzzRecord]:
    """Review-topic records: valid ones (``accepted``) and every way one can be broken
    (``dlq:invalid_review_record``), plus the record-level classes every intake must survive."""
    rng = random.Random(seed)
    records: list[FuzzRecord] = []
    batches = 0
    for n in range(count):
        roll = rng.random()
        headers: tuple[Header, ...] = ()
        batch: int | None = None
        record = _review_record(rng, n)
        key: bytes | None = record["review"]["human_loop_name"].encode()
        value: bytes | None
        if roll < 0.4:
            kind, value, expect = "review_valid", orjson.dumps(record), ACCEPTED
        elif roll < 0.75:
            rng.choice(_REVIEW_BREAKERS)(record)
            kind, value, expect = "review_invalid", orjson.dumps(record), INVALID_REVIEW
        elif roll < 0.85:
            kind, expect = "review_malformed", INVALID_REVIEW
            value = rng.choice([None, b"", rng.randbytes(200), b"[1,2]", b'{"review":'])
        elif roll < 0.9:
            batches += 1
            kind, value, expect = "undecodable_header", orjson.dumps(record), UNDECODABLE
            headers, batch = ((raw_header_name(b"\xff\xfe"), b"x"),), batches
        elif roll < 0.95:
            kind, value, expect = "huge_key", orjson.dumps(record), ACCEPTED
            key = rng.randbytes(rng.randint(4097, 32 * 1024))
        else:
            kind, value, expect = "many_headers", orjson.dumps(record), ACCEPTED
            headers = tuple((f"h{i}", rng.randbytes(50)) for i in range(rng.randint(50, 300)))
        records.append(
            FuzzRecord(
                kind=kind,
                key=key,
                value=value,
                headers=headers,
                expect=frozenset({expect}),
                partition=rng.randrange(partitions),
                batch=batch,
            )
        )
    return records


INVALID_REVIEW = dlq("invalid_review_record")
UNDECODABLE = dlq("undecodable_record")


def _event(
    rng: random.Random, loop: str, *, status: str = "Completed", uri: str | None = None
) -> dict[str, Any]:
    output = uri if uri is not None else f"{OUTPUT_PREFIX}/{loop}/output.json"
    detail: dict[str, Any] = {
        "creationTime": "2026-12-01T10:00:00.000Z",
        "humanLoopName": loop,
        "humanLoopArn": f"arn:aws:sagemaker:us-east-1:000000000000:human-loop/{loop}",
        "flowDefinitionArn": FLOW_ARN,
        "humanLoopStatus": status,
        "humanLoopOutput": {"outputS3Uri": output},
    }
    return {
        "version": "0",
        "id": str(rng.getrandbits(64)),
        "detail-type": "SageMaker A2I HumanLoop Status Change",
        "source": "aws.sagemaker",
        "account": "000000000000",
        "time": "2026-12-01T10:05:00Z",
        "region": "us-east-1",
        "resources": [detail["humanLoopArn"]],
        "detail": detail,
    }


def _forged_uris(loop: str, other: str) -> list[str]:
    """Well-formed output URIs outside ``loop``'s own prefix (``forged_event`` at the door)."""
    return [
        f"s3://fuzz-outputs/a2i/fuzz-flow/2026/12/01/10/00/00/{other}x/output.json",
        f"s3://fuzz-outputs/a2i/other-flow/2026/12/01/10/00/00/{loop}/output.json",
        f"s3://fuzz-outputs/{loop}/output.json",
        f"s3://fuzz-outputs/a2i/fuzz-flow/2026/12/01/10/00/xx/{loop}/output.json",
    ]


#: Output URIs that could only fail at the store (``malformed_event`` at the door).
BAD_OUTPUT_URIS: tuple[str, ...] = (
    "s3:///etc/passwd",
    "s3://Bad_Bucket/a2i/fuzz-flow/2026/12/01/10/00/00/x/output.json",
    "s3://10.0.0.1/a2i/fuzz-flow/2026/12/01/10/00/00/x/output.json",
    "http://fuzz-outputs/output.json",
    "s3://fuzz-outputs/a/../../output.json?x=1",
    "s3://fuzz-outputs:99/a2i/output.json",
    "file://remote-host/etc/passwd",
    "s3://fuzz-outputs/" + "k" * 3000,
)

_EVENT_BREAKERS: tuple[Callable[[dict[str, Any]], object], ...] = (
    lambda e: e.__setitem__("detail-type", "Something Else"),
    lambda e: e.__setitem__("detail", "x"),
    lambda e: e["detail"].__setitem__("humanLoopStatus", "InProgress"),
    lambda e: e["detail"].__setitem__("humanLoopName", ""),
    lambda e: e["detail"].pop("humanLoopOutput"),
    lambda e: e["detail"].__setitem__("flowDefinitionArn", "arn:nope"),
)


def completion_events(
    seed: int = DEFAULT_SEED,
    *,
    loops: list[str],
    count: int = 1_000,
    partitions: int = 3,
    max_event_bytes: int = 256 * 1024,
) -> list[FuzzRecord]:
    """Completion events for ``loops`` (the review records' loop names) and hostile ones:
    malformed, forged (another loop's answers, the wrong flow), bad URIs, oversized."""
    if not loops:
        raise ValueError("completion events need at least one loop name")
    rng = random.Random(seed)
    records: list[FuzzRecord] = []
    oversized = 0
    for _ in range(count):
        loop = rng.choice(loops)
        other = rng.choice(loops)
        roll = rng.random()
        kind, expect = "event_valid", ACCEPTED
        event = _event(rng, loop)
        value: bytes | None
        if roll < 0.3:
            status = rng.choice(["Completed", "Failed", "Stopped"])
            event = _event(rng, loop, status=status)
            if status != "Completed" and rng.random() < 0.5:
                event["detail"].pop("humanLoopOutput")
            value = orjson.dumps(event)
        elif roll < 0.45:
            kind, expect = "event_forged", dlq("forged_event")
            forged = rng.choice(_forged_uris(loop, other))
            event = _event(rng, loop, uri=forged)
            if rng.random() < 0.3:
                event = _event(rng, loop)
                event["detail"]["humanLoopArn"] = event["detail"]["humanLoopArn"] + "x"
            value = orjson.dumps(event)
        elif roll < 0.6:
            kind, expect = "event_bad_uri", dlq("malformed_event")
            bad = rng.choice(BAD_OUTPUT_URIS)
            event = _event(rng, loop, uri=bad)
            value = orjson.dumps(event)
        elif roll < 0.75:
            kind, expect = "event_malformed", dlq("malformed_event")
            rng.choice(_EVENT_BREAKERS)(event)
            value = orjson.dumps(event)
        elif roll < 0.85:
            kind = "event_not_json"
            value = rng.choice([b"", rng.randbytes(100), b"{", b'{"detail": '])
            expect = dlq("malformed_json")
        elif roll < 0.9:
            kind, expect, value = "event_wrong_shape", dlq("malformed_event"), b"[1]"
        elif roll < 0.95:
            kind, expect, value = "event_tombstone", dlq("malformed_event"), None
        else:
            kind, expect = "event_oversized", dlq("record_too_large")
            oversized += 1  # the first two as large as issue 11's (5 MB), the rest just over
            extra = 5 * MIB if oversized <= 2 else rng.randint(1, 64 * 1024)
            event["detail"]["padding"] = "p" * (max_event_bytes + extra)
            value = orjson.dumps(event)
        records.append(
            FuzzRecord(
                kind=kind,
                key=loop.encode() if rng.random() < 0.8 else None,
                value=value,
                headers=(),
                expect=frozenset({expect}),
                partition=rng.randrange(partitions),
            )
        )
    return records


# -- one coherent run for the sink and the console (both topics, and the answers in S3) ------

#: Outcomes of a completion event besides ``dlq:<reason>``: it decides its loop (one verdict), or
#: it arrives for a loop already decided and is counted as a duplicate (no output).
DECIDES, DUPLICATE = "decides", "duplicate"
OUTPUT_BUCKET = "fuzz-outputs"
#: Where the forged answers sit: the loop's own prefix, another (well-formed) creation time.
_FORGED_PREFIX = "s3://fuzz-outputs/a2i/fuzz-flow/2026/12/01/09/00/00"
_TASK_KEY = "AWS/Rekognition/DetectModerationLabels/Image/V3"
_PICKS: tuple[tuple[list[dict[str, str]], ...], ...] = (
    ([],),  # approved
    ([], []),
    ([{"name": "Explicit Nudity", "parentName": "Explicit"}],),  # rejected (any)
    ([], [{"name": "Graphic Violence", "parentName": "Violence"}]),  # rejected (any)
)


@dataclass
class ReviewRun:
    """The sink's and the console's inputs, in produce order, with what each must end in.

    Produced in four phases, each once the sink has routed the one before, so that order
    across the two topics is known: ``reviews`` (the review topic), ``events_first`` (events
    whose review record comes after them), ``late_reviews`` (those records), then ``events``
    (the rest of the completions topic). Events about one loop share a partition (as a keyed
    bridge writes them), so they reach the sink in order.
    """

    reviews: list[FuzzRecord]
    events_first: list[FuzzRecord]
    events: list[FuzzRecord]
    late_reviews: list[FuzzRecord]
    #: S3 key in OUTPUT_BUCKET -> output.json, put before the events are produced.
    outputs: dict[str, bytes]
    #: request id of each valid review record -> (verdict, decided_by) of its one final verdict.
    verdicts: dict[str, tuple[str, str]]

    def produced(self) -> list[FuzzRecord]:
        """Every record, in produce order."""
        return [*self.reviews, *self.events_first, *self.late_reviews, *self.events]

    def kinds(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.produced():
            counts[record.kind] = counts.get(record.kind, 0) + 1
        return dict(sorted(counts.items()))


def output_document(loop: str, picks: tuple[list[dict[str, str]], ...], flow: str) -> bytes:
    """An A2I output.json (Rekognition task type) for ``loop``: one answer per reviewer."""
    return orjson.dumps(
        {
            "awsManagedHumanLoopRequestSource": _TASK_KEY,
            "flowDefinitionArn": flow,
            "humanLoopName": loop,
            "humanAnswers": [
                {
                    "answerContent": {_TASK_KEY: {"moderationLabels": labels}},
                    "submissionTime": "2026-12-01T10:04:00.000Z",
                    "acceptanceTime": "2026-12-01T10:03:00.000Z",
                    "timeSpentInSeconds": 60.0,
                    "workerId": f"worker-{i}",
                }
                for i, labels in enumerate(picks)
            ],
            "inputContent": {},
        }
    )


def _s3_key(uri: str) -> str:
    return uri.removeprefix(f"s3://{OUTPUT_BUCKET}/")


def review_run(
    seed: int = DEFAULT_SEED,
    *,
    reviews: int = 1_550,
    partitions: int = 3,
    max_review_bytes: int,
    max_event_bytes: int,
) -> ReviewRun:
    """Review records (``review_topic_records`` plus records over and just under
    ``max_review_bytes``) and completion events that make every valid review end in exactly one
    final verdict, around every way an event can be wrong.

    Per valid loop: a ``Completed`` event whose answers are in ``outputs`` (a human verdict), or
    ``Failed``/``Stopped`` (the fallback: ``rejected`` with MODERATION_REVIEW_FALLBACK=reject);
    some preceded by a forged event (the loop's own prefix, another loop's answers or another
    flow's), some followed by a duplicate, some with the review record last. Around them: events
    refused at the door (forged URIs and ARNs, malformed URIs, broken shapes, not JSON,
    tombstones, oversized, header names that are not UTF-8), orphans (loops with no review
    record, or whose record was refused) and loops that get two events before any record.
    """
    rng = random.Random(seed * 7919 + 1)
    review_records = review_topic_records(seed, count=reviews, partitions=partitions)
    # Records over the size limit, and one just under it (forwarded and stored whole).
    n = reviews
    for size, kind, expect in (
        (max_review_bytes + 1, "review_huge", INVALID_REVIEW),
        (max_review_bytes + MIB, "review_huge", INVALID_REVIEW),
        (max_review_bytes - 64 * 1024, "review_large", ACCEPTED),
    ):
        body = _review_record(rng, n)
        n += 1
        body["attributes"] = {"blob": ""}
        body["attributes"]["blob"] = "b" * (size - len(orjson.dumps(body)))
        sized = orjson.dumps(body)
        assert len(sized) == size, (len(sized), size)
        record = FuzzRecord(
            kind=kind,
            key=body["review"]["human_loop_name"].encode(),
            value=sized,
            headers=(),
            expect=frozenset({expect}),
            partition=rng.randrange(partitions),
        )
        review_records.insert(rng.randrange(len(review_records) + 1), record)

    valid: list[tuple[FuzzRecord, str, str]] = []  # record, loop, request id
    refused_loops: list[str] = []
    for record in review_records:
        parsed = _json_object(record.value)
        review = parsed.get("review") if parsed is not None else None
        loop = review.get("human_loop_name") if isinstance(review, dict) else None
        if ACCEPTED in record.expect:
            assert parsed is not None and isinstance(loop, str)
            valid.append((record, loop, parsed["id"]))
        elif isinstance(loop, str) and len(loop) <= 63 and loop.isalnum() and loop.islower():
            refused_loops.append(loop)

    partition_of: dict[str, int] = {}

    def event_record(kind: str, loop: str, value: bytes | None, expect: str) -> FuzzRecord:
        partition = partition_of.setdefault(loop, rng.randrange(partitions))
        return FuzzRecord(
            kind=kind,
            key=loop.encode(),
            value=value,
            headers=(),
            expect=frozenset({expect}),
            partition=partition,
        )

    outputs: dict[str, bytes] = {}
    verdicts: dict[str, tuple[str, str]] = {}
    late: set[int] = set()
    units: list[list[FuzzRecord]] = []
    loops = [loop for _, loop, _ in valid]
    for index, (_record, loop, request_id) in enumerate(valid):
        unit: list[FuzzRecord] = []
        roll = rng.random()
        if roll < 0.1:  # the review record comes after its completion event
            late.add(index)
            picks = rng.choice(_PICKS)
            outputs[f"{_s3_key(OUTPUT_PREFIX)}/{loop}/output.json"] = output_document(
                loop, picks, FLOW_ARN
            )
            unit.append(
                event_record("event_before_review", loop, _dump(_event(rng, loop)), DECIDES)
            )
            verdicts[request_id] = (_verdict_of(picks), "human")
            units.append(unit)
            continue
        if rng.random() < 0.15:  # forged answers under its own prefix, before the real ones
            other = rng.choice(loops)
            uri = f"{_FORGED_PREFIX}/{loop}/output.json"
            if other != loop and rng.random() < 0.6:
                forged_doc = output_document(other, rng.choice(_PICKS), FLOW_ARN)
            else:
                forged_doc = output_document(
                    loop, ([],), FLOW_ARN.replace("fuzz-flow", "fuzz-flow2")
                )
            outputs[_s3_key(uri)] = forged_doc
            forged = _event(rng, loop, uri=uri)
            unit.append(
                event_record("event_forged_output", loop, _dump(forged), dlq("forged_event"))
            )
        if roll < 0.2:  # the loop failed or was stopped: the configured fallback decides
            status = rng.choice(["Failed", "Stopped"])
            event = _event(rng, loop, status=status)
            if rng.random() < 0.5:
                event["detail"].pop("humanLoopOutput")
            if rng.random() < 0.5:
                event["detail"]["failureCode"] = "Expired"
                event["detail"]["failureReason"] = "worker task expired"
            unit.append(event_record("event_failed", loop, _dump(event), DECIDES))
            verdicts[request_id] = ("rejected", "fallback")
        else:
            picks = rng.choice(_PICKS)
            outputs[f"{_s3_key(OUTPUT_PREFIX)}/{loop}/output.json"] = output_document(
                loop, picks, FLOW_ARN
            )
            event = _event(rng, loop)
            unit.append(event_record("event_valid", loop, _dump(event), DECIDES))
            verdicts[request_id] = (_verdict_of(picks), "human")
        if rng.random() < 0.2:  # EventBridge delivers at least once (same id), or A2I twice
            again = dict(event) if rng.random() < 0.5 else {**event, "id": str(rng.getrandbits(64))}
            unit.append(event_record("event_duplicate", loop, _dump(again), DUPLICATE))
        units.append(unit)

    # Events refused at the door, whatever their loop.
    oversized = 0
    hostile = max(300, len(valid) // 2)
    for _ in range(hostile):
        loop, other = rng.choice(loops), rng.choice(loops)
        event = _event(rng, loop)
        roll = rng.random()
        value: bytes | None
        if roll < 0.15:
            kind, expect = "event_forged_uri", dlq("forged_event")
            value = _dump(_event(rng, loop, uri=rng.choice(_forged_uris(loop, other))))
        elif roll < 0.22:
            kind, expect = "event_forged_arn", dlq("forged_event")
            event["detail"]["humanLoopArn"] = event["detail"]["humanLoopArn"].replace(loop, other)
            if other == loop:
                event["detail"]["humanLoopArn"] += "x"
            value = _dump(event)
        elif roll < 0.4:
            kind, expect = "event_bad_uri", dlq("malformed_event")
            value = _dump(_event(rng, loop, uri=rng.choice(BAD_OUTPUT_URIS)))
        elif roll < 0.6:
            kind, expect = "event_malformed", dlq("malformed_event")
            rng.choice(_EVENT_BREAKERS)(event)
            value = _dump(event)
        elif roll < 0.72:
            kind, expect = "event_not_json", dlq("malformed_json")
            value = rng.choice(
                [b"", b"\x00" + rng.randbytes(100), b"{", b'{"detail": ', b"\xef\xbb\xbf{}"]
            )
        elif roll < 0.8:
            kind, expect = "event_wrong_shape", dlq("malformed_event")
            value = rng.choice([b"[1]", b'"Completed"', b"42", b"null", b"{}"])
        elif roll < 0.86:
            kind, expect, value = "event_tombstone", dlq("malformed_event"), None
        elif roll < 0.92:
            kind, expect = "event_oversized", dlq("record_too_large")
            oversized += 1  # two as large as issue 11's (5 MB), the rest just over the limit
            extra = 5 * MIB if oversized <= 2 else rng.randint(1, 16 * 1024)
            event["detail"]["padding"] = "p" * (max_event_bytes + extra)
            value = _dump(event)
        else:
            # A header name that is not UTF-8, in a raw batch with a refused neighbour.
            kind, expect = "event_undecodable_header", dlq("undecodable_record")
            value = _dump(event)
        record = event_record(kind, loop, value, expect)
        if kind == "event_undecodable_header":
            header = ((raw_header_name(rng.choice([b"\xff\xfe", b"ok-\x80", b"\xc3\x28"])), b"x"),)
            neighbour = event_record(
                "event_bad_uri",
                loop,
                _dump(_event(rng, loop, uri=BAD_OUTPUT_URIS[0])),
                dlq("malformed_event"),
            )
            batch = 10_000 + len(units)
            units.append(
                [
                    _replace(record, headers=header, batch=batch),
                    _replace(neighbour, batch=batch),
                ]
            )
        else:
            units.append([record])

    # Completed events with no review record: for unknown loops and for loops whose record was
    # refused; and loops that get two events before any record (each must end somewhere).
    for i in range(max(20, len(valid) // 20)):
        loop = rng.choice(refused_loops) if i % 3 == 0 and refused_loops else _new_loop(rng)
        refused_loops = [x for x in refused_loops if x != loop]
        units.append(
            [event_record("event_orphan", loop, _dump(_event(rng, loop)), dlq("orphan_completion"))]
        )
    for _ in range(8):
        loop = _new_loop(rng)
        once = _event(rng, loop)
        second = _event(rng, loop, status=rng.choice(["Completed", "Failed"]))
        units.append(
            [
                event_record("event_held_twice", loop, _dump(once), dlq("orphan_completion")),
                event_record("event_held_twice", loop, _dump(second), dlq("orphan_completion")),
            ]
        )

    rng.shuffle(units)
    events = [record for unit in units for record in unit]
    # Produced first: the events whose review record follows them, then (in the last phase)
    # the events that must expire, so their TTL runs while the rest is routed.
    first = [r for r in events if r.kind == "event_before_review"]
    held = {"event_orphan", "event_held_twice"}
    events = [r for r in events if r.kind in held] + [
        r for r in events if r.kind not in held and r.kind != "event_before_review"
    ]
    late_records = [valid[i][0] for i in sorted(late)]
    late_ids = {id(record) for record in late_records}
    early_reviews = [r for r in review_records if id(r) not in late_ids]
    late_records = [_replace(r, kind="review_late") for r in late_records]
    return ReviewRun(
        reviews=early_reviews,
        events_first=first,
        events=events,
        late_reviews=late_records,
        outputs=outputs,
        verdicts=verdicts,
    )


def _verdict_of(picks: tuple[list[dict[str, str]], ...]) -> str:
    """The verdict under the default consensus (``any``): rejected if anyone picked a label."""
    return REJECTED if any(picks) else APPROVED


def _new_loop(rng: random.Random) -> str:
    return f"m{rng.randbytes(31).hex()}"


def _dump(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)


def _json_object(value: bytes | None) -> dict[str, Any] | None:
    try:
        body = orjson.loads(value) if value else None
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


# -- helpers ------------------------------------------------------------------------------------


def _one(outcome: str) -> frozenset[str]:
    return frozenset({outcome})


def _replace(record: FuzzRecord, **changes: Any) -> FuzzRecord:
    return dataclasses.replace(record, **changes)


def _id_of(value: bytes | None) -> str | None:
    body = _json_object(value)
    request_id = body.get("id") if body is not None else None
    return request_id if isinstance(request_id, str) else None


def describe_bytes(data: bytes) -> str:
    """Short printable form of a record part, for failure messages."""
    return base64.b64encode(data[:48]).decode() + ("..." if len(data) > 48 else "")


# Re-exported for tests that script labels themselves.
__all__ = [
    "ACCEPTED",
    "APPROVED",
    "DEFAULT_SEED",
    "REJECTED",
    "REVIEW",
    "Corpus",
    "FuzzRecord",
    "completion_events",
    "dlq",
    "label",
    "pipeline_records",
    "review_run",
    "review_topic_records",
]
