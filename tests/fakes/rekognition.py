"""A local fake of Amazon Rekognition's DetectModerationLabels, spoken over the real JSON protocol.

Why a fake rather than moto: tests and benchmarks need scripted labels, a token-bucket quota that
throttles like the real service, latency, injected errors and human-loop activation, all driven
either in-process (methods) or from another process (the ``/_fake/*`` control API). The real SDK
(aioboto3) talks to it unchanged via ``endpoint_url``, so the service's error mapping is exercised
against the same wire format AWS uses: ``POST /`` with ``X-Amz-Target``, JSON 1.1 bodies, blobs as
base64, and errors as ``{"__type": Code, "Message": ...}`` plus an ``x-amzn-ErrorType`` header.

Rekognition's input rules are applied as AWS applies them: ``Bytes`` must be JPEG or PNG, at most
5 MiB, each side 80..10,000 px (InvalidImageFormatException, ImageTooLargeException); an
``S3Object`` is read from the fake's S3 endpoint (moto, when given), at most 15 MB, under the same
format and side rules (InvalidS3ObjectException when it cannot be read). What each call carried is
recorded (``stats.received``: source, format, size, sides) for assertions.

Labels, in order: scripted for an S3 object (``set_object``) or exact bytes (``set_image``); a
``FAKE-LABELS:`` marker in the bytes; scripted for the image's colour (``set_colour``: the centre
pixel, so images converted by the service, and each frame of an animation, can be scripted too).

Standalone: ``python -m tests.fakes.rekognition --port 4566 --tps 50 --latency 0.15 --jitter 0.02``
prints its endpoint URL on the first line of stdout and runs until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import functools
import hashlib
import io
import random
import re
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self, TypedDict

import aioboto3
import orjson
from aiohttp import web
from botocore.exceptions import ClientError
from PIL import Image, ImageFile, JpegImagePlugin, PngImagePlugin

TARGET_PREFIX = "RekognitionService."
DETECT_MODERATION_LABELS = TARGET_PREFIX + "DetectModerationLabels"
CONTENT_TYPE = "application/x-amz-json-1.1"
MODEL_VERSION = "7.0"
MAX_IMAGE_BYTES = 5 * 1024 * 1024  # ImageBlob "max" in the service model; S3 images may be larger
MAX_S3_IMAGE_BYTES = 15 * 1000 * 1000  # Rekognition's 15 MB for S3 objects
MIN_SIDE, MAX_SIDE = 80, 10_000
COLOUR_TOLERANCE = 40  # per channel: a lossy re-encode of a solid colour stays within it
DEFAULT_MIN_CONFIDENCE = 50.0
HUMAN_LOOP_CONFIDENCE_BELOW = 80.0
HUMAN_LOOP_QUOTA_EXCEEDED = "HumanLoopQuotaExceededException"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
LABEL_MARKER = b"FAKE-LABELS:"
# A base64 body above this is decoded and hashed in a worker thread so the loop keeps serving.
_OFFLOAD_BODY_BYTES = 256 * 1024
# Room for a base64-encoded image just over the 5 MiB limit, so it reaches ImageTooLargeException
# instead of aiohttp's 413 (real Rekognition answers oversized blobs with that error code).
_CLIENT_MAX_SIZE = 16 * 1024 * 1024
_HUMAN_LOOP_NAME = re.compile(r"[a-z0-9](-*[a-z0-9])*")

_SERVER_ERRORS = frozenset({"InternalServerError", "ServiceUnavailableException"})
_MESSAGES: dict[str, str] = {
    "InvalidS3ObjectException": (
        "Unable to get object metadata from S3. Check object key, region and/or access permissions."
    ),
    "InvalidImageFormatException": "Request has invalid image format",
    "ImageTooLargeException": "Image size is too large.",
    "InvalidParameterException": "Request has invalid parameters",
    "ThrottlingException": "Rate exceeded",
    "ProvisionedThroughputExceededException": "Provisioned rate exceeded",
    "InternalServerError": "Internal server error",
    "AccessDeniedException": "User is not authorized to perform rekognition:DetectModerationLabels",
    HUMAN_LOOP_QUOTA_EXCEEDED: (
        "The number of in-progress human reviews you have has exceeded the number allowed."
    ),
    "ResourceNotFoundException": "The requested resource could not be found.",
    "ResourceNotReadyException": "The requested resource isn't ready.",
}


class ModerationLabel(TypedDict):
    """One label exactly as DetectModerationLabels returns it (ModerationLabel shape)."""

    Name: str
    ParentName: str
    Confidence: float
    TaxonomyLevel: int


class _Fault(Exception):
    """An AWS error answer; raised inside request handling and rendered by ``_error_response``."""

    def __init__(
        self, code: str, message: str | None = None, extra: Mapping[str, object] | None = None
    ) -> None:
        super().__init__(code)
        self.code = code
        self.message = message or _MESSAGES.get(code, code)
        self.extra: Mapping[str, object] = extra or {}


@dataclass(frozen=True, slots=True)
class _Scripted:
    """What a registered object or image answers: its labels, or an error code instead."""

    labels: tuple[ModerationLabel, ...]
    error: str | None


@dataclass(slots=True)
class _Injection:
    """Pending injected errors; ``remaining`` None means unlimited, ``rate`` None means always."""

    code: str
    remaining: int | None
    rate: float | None


@dataclass(frozen=True, slots=True)
class Received:
    """One image a call carried, as the fake saw it (``format`` None: neither JPEG nor PNG)."""

    source: Literal["bytes", "s3"]
    format: Literal["jpeg", "png"] | None
    size: int
    width: int | None = None
    height: int | None = None
    key: str | None = None  # the S3 object's key


@dataclass
class FakeStats:
    """What the fake observed; tests assert on it and benchmarks read rates from ``accepted_at``.

    ``calls`` counts DetectModerationLabels requests (throttled ones included); ``ok`` the 200
    answers; ``throttled`` every ThrottlingException (also counted in ``errors_by_code``, which
    holds every error answer by code). ``accepted_at`` has the monotonic time at which each call
    passed the quota gate, whatever it was answered afterwards.
    """

    calls: int = 0
    ok: int = 0
    throttled: int = 0
    errors_by_code: dict[str, int] = field(default_factory=dict)
    max_concurrency: int = 0
    current_concurrency: int = 0
    accepted_at: list[float] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)

    def sustained_rate(self, window_s: float | None = None) -> float:
        """Accepted calls per second: over the first-to-last span, or over the last ``window_s``."""
        if window_s is not None:
            if window_s <= 0:
                raise ValueError("window_s must be positive")
            since = time.monotonic() - window_s
            return sum(1 for t in self.accepted_at if t >= since) / window_s
        if len(self.accepted_at) < 2:
            return 0.0
        span = self.accepted_at[-1] - self.accepted_at[0]
        return (len(self.accepted_at) - 1) / span if span > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        """The control API's view: counters and rates, not the (possibly long) timestamp list."""
        return {
            "calls": self.calls,
            "ok": self.ok,
            "throttled": self.throttled,
            "errors_by_code": dict(self.errors_by_code),
            "max_concurrency": self.max_concurrency,
            "current_concurrency": self.current_concurrency,
            "accepted": len(self.accepted_at),
            "sustained_rate": self.sustained_rate(),
            "rate_last_1s": self.sustained_rate(1.0),
            "rate_last_10s": self.sustained_rate(10.0),
        }


class _TokenBucket:
    """Rekognition's TPS quota: refills at ``rate`` per second up to ``burst``, starts full."""

    def __init__(self, rate: float, burst: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("tps and burst must be positive")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = time.monotonic()

    def take(self, now: float) -> bool:
        """Spend one token if there is one; never waits (the real service answers at once)."""
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def normalize_label(raw: Mapping[str, Any]) -> ModerationLabel:
    """Validate a scripted label early (a typo should fail the test, not confuse the service)."""
    name = raw.get("Name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"label needs a non-empty string Name: {raw!r}")
    confidence = raw.get("Confidence")
    if isinstance(confidence, bool) or not isinstance(confidence, int | float):
        raise ValueError(f"label needs a numeric Confidence: {raw!r}")
    if not 0.0 <= float(confidence) <= 100.0:
        raise ValueError(f"label Confidence must be within 0..100: {raw!r}")
    parent = raw.get("ParentName", "")
    if not isinstance(parent, str):
        raise ValueError(f"label ParentName must be a string: {raw!r}")
    level = raw.get("TaxonomyLevel", 2 if parent else 1)
    if isinstance(level, bool) or not isinstance(level, int) or level < 0:
        raise ValueError(f"label TaxonomyLevel must be a non-negative integer: {raw!r}")
    return ModerationLabel(
        Name=name, ParentName=parent, Confidence=float(confidence), TaxonomyLevel=level
    )


def _scripted(labels: Sequence[Mapping[str, Any]] | None, error: str | None) -> _Scripted:
    if error is not None and (not isinstance(error, str) or not error):
        raise ValueError("error must be a non-empty error code or None")
    if labels is not None and (isinstance(labels, str | bytes) or not isinstance(labels, Sequence)):
        raise ValueError("labels must be a list of label objects or None")
    return _Scripted(tuple(normalize_label(x) for x in labels or ()), error)


def _labels_from_marker(data: bytes) -> tuple[ModerationLabel, ...] | None:
    """Labels embedded after ``FAKE-LABELS:`` (a JSON array to the end of the data), if any."""
    at = data.rfind(LABEL_MARKER)
    if at < 0:
        return None
    try:
        parsed = orjson.loads(data[at + len(LABEL_MARKER) :])
        if not isinstance(parsed, list) or not all(isinstance(x, dict) for x in parsed):
            raise ValueError("not a list of objects")
        return tuple(normalize_label(x) for x in parsed)
    except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
        raise _Fault(
            "InvalidParameterException",
            f"fake: malformed FAKE-LABELS marker (needs a JSON array of labels): {exc}",
        ) from exc


def _decode_image_bytes(encoded: object) -> tuple[bytes, str]:
    """Base64-decode a Bytes blob and hash it; CPU work that may run in a worker thread."""
    if not isinstance(encoded, str):
        raise _Fault("SerializationException", "Image.Bytes must be a base64 string")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _Fault("SerializationException", "Image.Bytes is not valid base64") from exc
    return data, hashlib.sha256(data).hexdigest()


def _opened(data: bytes, fmt: Literal["jpeg", "png"]) -> ImageFile.ImageFile:
    """The format's own plugin, not ``Image.open``: Pillow's decompression-bomb check would warn
    on a 10,000 x 10,000 image (over its 89 MP limit), which Rekognition takes, and a warning is
    an error under pytest's ``filterwarnings = error``: the handler would answer a bare 500."""
    plugin = PngImagePlugin.PngImageFile if fmt == "png" else JpegImagePlugin.JpegImageFile
    return plugin(io.BytesIO(data))


def _inspect(data: bytes) -> tuple[Literal["jpeg", "png"] | None, tuple[int, int] | None]:
    """The format by its magic (only JPEG and PNG count) and the sides by the decoder's header."""
    fmt: Literal["jpeg", "png"] | None = None
    if data.startswith(PNG_MAGIC):
        fmt = "png"
    elif data.startswith(JPEG_MAGIC):
        fmt = "jpeg"
    if fmt is None:
        return None, None
    try:
        with _opened(data, fmt) as image:
            return fmt, image.size
    except (OSError, ValueError, SyntaxError):
        return fmt, None


def _centre_colour(data: bytes) -> tuple[int, int, int] | None:
    """The centre pixel of a decodable image (JPEGs decoded at a reduced scale)."""
    fmt: Literal["jpeg", "png"] = "png" if data.startswith(PNG_MAGIC) else "jpeg"
    try:
        with _opened(data, fmt) as image:
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            rgb = image.convert("RGB")
            pixel = rgb.getpixel((rgb.width // 2, rgb.height // 2))
    except (OSError, ValueError, SyntaxError):
        return None
    assert isinstance(pixel, tuple)
    return (int(pixel[0]), int(pixel[1]), int(pixel[2]))


@functools.cache
def _default_jpeg() -> bytes:
    """A small real JPEG within Rekognition's limits (an object's default contents)."""
    out = io.BytesIO()
    Image.new("RGB", (96, 96), (90, 110, 130)).save(out, "JPEG", quality=90)
    return out.getvalue()


def _error_response(fault: _Fault) -> web.Response:
    """The AWS JSON-protocol error form botocore parses into ClientError's Error.Code/Message."""
    body: dict[str, object] = {"__type": fault.code, "Message": fault.message, **fault.extra}
    return web.Response(
        status=500 if fault.code in _SERVER_ERRORS else 400,
        body=orjson.dumps(body),
        headers={
            "Content-Type": CONTENT_TYPE,
            "x-amzn-ErrorType": fault.code,
            "x-amzn-RequestId": str(uuid.uuid4()),
        },
    )


def _human_loop_output(config: object, labels: Sequence[ModerationLabel]) -> dict[str, Any] | None:
    """A2I-style activation: any returned label below 80% confidence, or an "always" flow ARN."""
    if not isinstance(config, dict):
        raise _Fault("InvalidParameterException", "HumanLoopConfig must be an object")
    name = config.get("HumanLoopName")
    arn = config.get("FlowDefinitionArn")
    if not isinstance(name, str) or len(name) > 63 or not _HUMAN_LOOP_NAME.fullmatch(name):
        raise _Fault("InvalidParameterException", f"Invalid HumanLoopName: {name!r}")
    if not isinstance(arn, str) or not arn:
        raise _Fault("InvalidParameterException", "HumanLoopConfig.FlowDefinitionArn is required")
    low = any(x["Confidence"] < HUMAN_LOOP_CONFIDENCE_BELOW for x in labels)
    always = "always" in arn
    if not (low or always):
        return None
    conditions: list[dict[str, Any]] = [
        {
            "ConditionType": "ModerationLabelConfidenceCheck",
            "ConditionParameters": {
                "ModerationLabelName": "*",
                "ConfidenceLessThan": HUMAN_LOOP_CONFIDENCE_BELOW,
            },
            "EvaluationResult": low,
        }
    ]
    if always:
        conditions.append(
            {
                "ConditionType": "Sampling",
                "ConditionParameters": {"RandomSamplingPercentage": 100},
                "EvaluationResult": True,
            }
        )
    return {
        "HumanLoopArn": f"arn:aws:sagemaker:us-east-1:000000000000:human-loop/{name}",
        "HumanLoopActivationReasons": ["ConditionsEvaluation"],
        "HumanLoopActivationConditionsEvaluationResults": orjson.dumps(
            {"Conditions": conditions}
        ).decode(),
    }


class FakeRekognition:
    """An aiohttp server answering DetectModerationLabels as Rekognition does, fully scriptable.

    Request flow: quota (immediate ThrottlingException) -> read body -> latency (asyncio.sleep,
    so hundreds of calls overlap) -> injected error -> request validation -> scripted answer.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tps_quota: float | None = None,
        burst: float | None = None,
        latency_s: float = 0.0,
        jitter_s: float = 0.0,
        seed: int = 0,
        s3_endpoint_url: str | None = None,
        s3_region: str = "us-east-1",
    ) -> None:
        """``s3_endpoint_url``: where S3Object images are read (moto in tests); without it, S3
        objects exist only as scripted by ``set_object``."""
        self.host = host
        self.s3_endpoint_url = s3_endpoint_url
        self._s3_region = s3_region
        self._s3: Any = None
        self._s3_stack = contextlib.AsyncExitStack()
        self._buckets: set[str] = set()
        self._colours: dict[tuple[int, int, int], _Scripted] = {}
        self._requested_port = port
        self._seed = seed
        self._defaults = (tps_quota, burst, latency_s, jitter_s)
        self.stats = FakeStats()
        self._objects: dict[tuple[str, str], _Scripted] = {}
        self._images: dict[str, _Scripted] = {}
        self._bucket: _TokenBucket | None = None
        self._latency_s = 0.0
        self._jitter_s = 0.0
        self._injection: _Injection | None = None
        self._jitter_rng = random.Random(seed)
        self._error_rng = random.Random(seed + 1)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self.set_quota(tps_quota, burst)
        self.set_latency(latency_s, jitter_s)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and serve; with ``port=0`` the OS picks a free port (see ``endpoint_url``)."""
        if self._runner is not None:
            raise RuntimeError("FakeRekognition already started")
        if self.s3_endpoint_url is not None:
            self._s3 = await self._s3_stack.enter_async_context(
                aioboto3.Session().client(
                    "s3", region_name=self._s3_region, endpoint_url=self.s3_endpoint_url
                )
            )
        app = web.Application(client_max_size=_CLIENT_MAX_SIZE)
        app.router.add_post("/", self._handle_api)
        app.router.add_post("/_fake/objects", self._control(self._ctl_objects))
        app.router.add_post("/_fake/images", self._control(self._ctl_images))
        app.router.add_post("/_fake/quota", self._control(self._ctl_quota))
        app.router.add_post("/_fake/latency", self._control(self._ctl_latency))
        app.router.add_post("/_fake/errors", self._control(self._ctl_errors))
        app.router.add_post("/_fake/reset", self._control(self._ctl_reset))
        app.router.add_get("/_fake/stats", self._ctl_stats)
        # No access log (benchmarks push thousands of calls); short shutdown so stop() never hangs
        # on calls still sleeping out their latency.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port, backlog=2048)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._port = int(runner.addresses[0][1])
        self._runner = runner

    async def stop(self) -> None:
        """Stop serving; idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._s3 = None
        await self._s3_stack.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The bound port (only known after ``start``)."""
        if self._port is None:
            raise RuntimeError("FakeRekognition not started")
        return self._port

    @property
    def endpoint_url(self) -> str:
        """What to pass as the SDK's ``endpoint_url``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- scripting -------------------------------------------------------------------------

    def set_object(
        self,
        bucket: str,
        name: str,
        labels: Sequence[Mapping[str, Any]] | None = None,
        error: str | None = None,
    ) -> None:
        """Register an S3 object; unregistered objects answer InvalidS3ObjectException."""
        if not isinstance(bucket, str) or not bucket or not isinstance(name, str) or not name:
            raise ValueError("bucket and name must be non-empty strings")
        self._objects[(bucket, name)] = _scripted(labels, error)

    async def put_object(
        self,
        bucket: str,
        name: str,
        data: bytes | None = None,
        labels: Sequence[Mapping[str, Any]] | None = None,
        error: str | None = None,
    ) -> None:
        """Store ``data`` (default: a small real JPEG) in the fake's S3 (creating the bucket)
        and script its answer when ``labels`` or ``error`` is given; needs
        ``s3_endpoint_url``."""
        if self._s3 is None:
            raise RuntimeError("FakeRekognition has no S3 endpoint (s3_endpoint_url)")
        if bucket not in self._buckets:
            with contextlib.suppress(ClientError):  # another test may have made it
                await self._s3.create_bucket(Bucket=bucket)
            self._buckets.add(bucket)
        await self._s3.put_object(Bucket=bucket, Key=name, Body=data or _default_jpeg())
        if labels is not None or error is not None:
            self.set_object(bucket, name, labels, error)
        else:  # the object's contents decide (a FAKE-LABELS marker, its colour)
            self._objects.pop((bucket, name), None)

    def set_colour(
        self, colour: tuple[int, int, int], labels: Sequence[Mapping[str, Any]] | None = None
    ) -> None:
        """Script the answer for images whose centre pixel is ``colour`` (within a lossy
        codec's error): what the service converts, frame by frame, keeps its colour."""
        self._colours[colour] = _scripted(labels, None)

    def set_image(
        self,
        data: bytes,
        labels: Sequence[Mapping[str, Any]] | None = None,
        error: str | None = None,
    ) -> None:
        """Script the answer for exact image bytes (keyed by sha256); beats any FAKE-LABELS."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ValueError("data must be bytes")
        self._images[hashlib.sha256(data).hexdigest()] = _scripted(labels, error)

    def set_quota(self, tps: float | None, burst: float | None = None) -> None:
        """Token-bucket quota (burst defaults to max(1, tps/10)); ``tps=None`` is unlimited."""
        if tps is None:
            self._bucket = None
            return
        self._bucket = _TokenBucket(
            float(tps), float(burst if burst is not None else max(1.0, tps / 10))
        )

    def set_latency(self, latency_s: float, jitter_s: float = 0.0) -> None:
        """Service time for accepted calls: ``latency_s`` plus uniform noise in +-``jitter_s``."""
        if latency_s < 0 or jitter_s < 0:
            raise ValueError("latency_s and jitter_s must be non-negative")
        self._latency_s = float(latency_s)
        self._jitter_s = float(jitter_s)

    def inject_errors(
        self, code: str | None, count: int | None = None, rate: float | None = None
    ) -> None:
        """Fail the next ``count`` accepted calls (or a ``rate`` fraction; both: that fraction
        until ``count`` failed; neither: every call) with ``code``; ``code=None`` clears.

        HumanLoopQuotaExceededException only hits calls that carry a HumanLoopConfig, since only
        those could start a human loop.
        """
        if code is None or count == 0:
            self._injection = None
            return
        if count is not None and count < 0:
            raise ValueError("count must be non-negative")
        if rate is not None and not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be within 0..1")
        self._injection = _Injection(code, count, rate)

    def reset(self) -> None:
        """Forget scripted objects, images, errors and stats; quota and latency go back to the
        constructor's (so a standalone fake keeps its command-line settings)."""
        tps, burst, latency_s, jitter_s = self._defaults
        self._objects.clear()
        self._images.clear()
        self._colours.clear()
        self._injection = None
        self._jitter_rng = random.Random(self._seed)
        self._error_rng = random.Random(self._seed + 1)
        self.set_quota(tps, burst)
        self.set_latency(latency_s, jitter_s)
        in_flight = self.stats.current_concurrency
        self.stats = FakeStats(current_concurrency=in_flight, max_concurrency=in_flight)

    # -- the Rekognition API ---------------------------------------------------------------

    async def _handle_api(self, request: web.Request) -> web.Response:
        """Dispatch on X-Amz-Target as every AWS JSON-protocol service does."""
        target = request.headers.get("X-Amz-Target", "")
        if target != DETECT_MODERATION_LABELS:
            return self._fail(
                _Fault("UnknownOperationException", f"Unknown operation {target or '(none)'}")
            )
        self.stats.calls += 1
        self.stats.current_concurrency += 1
        self.stats.max_concurrency = max(self.stats.max_concurrency, self.stats.current_concurrency)
        try:
            return await self._detect(request)
        except _Fault as fault:
            return self._fail(fault)
        finally:
            # self.stats, not a local: reset() may have swapped in a fresh one mid-call.
            self.stats.current_concurrency -= 1

    async def _detect(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        if self._bucket is not None and not self._bucket.take(now):
            raise _Fault("ThrottlingException")
        self.stats.accepted_at.append(now)
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise _Fault("ImageTooLargeException") from exc
        await self._sleep_latency()
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError as exc:
            raise _Fault("SerializationException", "Request body is not valid JSON") from exc
        if not isinstance(body, dict):
            raise _Fault("SerializationException", "Request body must be a JSON object")
        injected = self._injected_error(has_human_loop="HumanLoopConfig" in body)
        if injected is not None:
            extra: dict[str, object] = {}
            if injected == HUMAN_LOOP_QUOTA_EXCEEDED:
                extra = {
                    "ResourceType": "HumanLoop",
                    "QuotaCode": "L-00000000",
                    "ServiceCode": "sagemaker",
                }
            raise _Fault(injected, extra=extra)

        min_confidence = body.get("MinConfidence", DEFAULT_MIN_CONFIDENCE)
        if (
            isinstance(min_confidence, bool)
            or not isinstance(min_confidence, int | float)
            or not 0.0 <= min_confidence <= 100.0
        ):
            raise _Fault("InvalidParameterException", "MinConfidence must be within 0..100")
        scripted = await self._resolve_image(
            body.get("Image"), large=len(raw) > _OFFLOAD_BODY_BYTES
        )
        if scripted.error is not None:
            raise _Fault(scripted.error)
        labels = [x for x in scripted.labels if x["Confidence"] >= min_confidence]

        response: dict[str, Any] = {
            "ModerationLabels": labels,
            "ModerationModelVersion": MODEL_VERSION,
        }
        if "HumanLoopConfig" in body:
            output = _human_loop_output(body["HumanLoopConfig"], labels)
            if output is not None:
                response["HumanLoopActivationOutput"] = output
        project_version = body.get("ProjectVersion")
        if project_version is not None:
            response["ProjectVersion"] = project_version
        self.stats.ok += 1
        return web.Response(
            body=orjson.dumps(response),
            headers={"Content-Type": CONTENT_TYPE, "x-amzn-RequestId": str(uuid.uuid4())},
        )

    async def _resolve_image(self, image: object, *, large: bool) -> _Scripted:
        """Find the scripted answer for an S3Object or Bytes image, validating like Rekognition."""
        if not isinstance(image, dict):
            raise _Fault("InvalidParameterException", "Image is required")
        has_bytes = "Bytes" in image
        has_s3 = "S3Object" in image
        if has_bytes == has_s3:
            raise _Fault("InvalidParameterException", "Image needs exactly one of Bytes, S3Object")
        if has_s3:
            s3 = image["S3Object"]
            if not isinstance(s3, dict) or not s3.get("Bucket") or not s3.get("Name"):
                raise _Fault("InvalidParameterException", "S3Object needs Bucket and Name")
            bucket, key = str(s3["Bucket"]), str(s3["Name"])
            found = self._objects.get((bucket, key))
            if self._s3 is None:
                if found is None:
                    raise _Fault("InvalidS3ObjectException")
                self.stats.received.append(Received("s3", None, 0, key=key))
                return found
            data = await self._read_s3(bucket, key, s3.get("Version"))
            await self._check(data, "s3", key)
            if found is not None:
                return found
            return await self._by_content(data, hashlib.sha256(data).hexdigest())

        if large:
            data, digest = await asyncio.to_thread(_decode_image_bytes, image["Bytes"])
        else:
            data, digest = _decode_image_bytes(image["Bytes"])
        if not data:
            raise _Fault("InvalidParameterException", "Image.Bytes must not be empty")
        if len(data) > MAX_IMAGE_BYTES:
            self.stats.received.append(Received("bytes", None, len(data)))
            raise _Fault("ImageTooLargeException")
        await self._check(data, "bytes", None)
        return await self._by_content(data, digest)

    async def _read_s3(self, bucket: str, key: str, version: object) -> bytes:
        """The object from the fake's S3, as Rekognition reads it (at most 15 MB)."""
        request: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if isinstance(version, str) and version:
            request["VersionId"] = version
        try:
            response = await self._s3.get_object(**request)
            async with response["Body"] as body:
                if int(response.get("ContentLength") or 0) > MAX_S3_IMAGE_BYTES:
                    self.stats.received.append(
                        Received("s3", None, int(response["ContentLength"]), key=key)
                    )
                    raise _Fault("ImageTooLargeException")
                data: bytes = await body.read()
        except ClientError as exc:
            raise _Fault("InvalidS3ObjectException") from exc
        return data

    async def _check(self, data: bytes, source: Literal["bytes", "s3"], key: str | None) -> None:
        """Rekognition's rules for the image itself: JPEG or PNG, each side 80..10,000 px."""
        fmt, size = await asyncio.to_thread(_inspect, data)
        width, height = size if size is not None else (None, None)
        self.stats.received.append(Received(source, fmt, len(data), width, height, key))
        if fmt is None or size is None:
            raise _Fault("InvalidImageFormatException")
        if min(size) < MIN_SIDE or max(size) > MAX_SIDE:
            raise _Fault("InvalidImageFormatException")

    async def _by_content(self, data: bytes, digest: str) -> _Scripted:
        found = self._images.get(digest)
        if found is not None:
            return found
        marked = _labels_from_marker(data)
        if marked is not None:
            return _Scripted(marked, None)
        if self._colours:
            colour = await asyncio.to_thread(_centre_colour, data)
            if colour is not None:
                for scripted, answer in self._colours.items():
                    if all(
                        abs(a - b) <= COLOUR_TOLERANCE
                        for a, b in zip(colour, scripted, strict=True)
                    ):
                        return answer
        return _Scripted((), None)

    async def _sleep_latency(self) -> None:
        delay = self._latency_s
        if self._jitter_s:
            delay += self._jitter_rng.uniform(-self._jitter_s, self._jitter_s)
        if delay > 0:
            await asyncio.sleep(delay)

    def _injected_error(self, *, has_human_loop: bool) -> str | None:
        injection = self._injection
        if injection is None:
            return None
        if injection.code == HUMAN_LOOP_QUOTA_EXCEEDED and not has_human_loop:
            return None
        if injection.rate is not None and self._error_rng.random() >= injection.rate:
            return None
        if injection.remaining is not None:
            injection.remaining -= 1
            if injection.remaining <= 0:
                self._injection = None
        return injection.code

    def _fail(self, fault: _Fault) -> web.Response:
        counts = self.stats.errors_by_code
        counts[fault.code] = counts.get(fault.code, 0) + 1
        if fault.code == "ThrottlingException":
            self.stats.throttled += 1
        return _error_response(fault)

    # -- control API (for a test driving an out-of-process service) ------------------------

    @staticmethod
    def _control(
        action: Callable[[dict[str, Any]], None],
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """Wrap a setter as a JSON endpoint; bad input is a 400 naming the problem."""

        async def handler(request: web.Request) -> web.Response:
            raw = await request.read()
            try:
                payload = orjson.loads(raw) if raw else {}
                if not isinstance(payload, dict):
                    raise ValueError("body must be a JSON object")
                action(payload)
            except (ValueError, TypeError, KeyError) as exc:
                return web.json_response({"error": f"{type(exc).__name__}: {exc}"}, status=400)
            return web.json_response({"ok": True})

        return handler

    def _ctl_objects(self, p: dict[str, Any]) -> None:
        self.set_object(p["bucket"], p["name"], p.get("labels"), p.get("error"))

    def _ctl_images(self, p: dict[str, Any]) -> None:
        data, _ = _decode_image_bytes_plain(p["data"])
        self.set_image(data, p.get("labels"), p.get("error"))

    def _ctl_quota(self, p: dict[str, Any]) -> None:
        self.set_quota(_opt_float(p.get("tps")), _opt_float(p.get("burst")))

    def _ctl_latency(self, p: dict[str, Any]) -> None:
        self.set_latency(float(p.get("latency_s", 0.0)), float(p.get("jitter_s", 0.0)))

    def _ctl_errors(self, p: dict[str, Any]) -> None:
        count = p.get("count")
        self.inject_errors(
            p.get("code"), None if count is None else int(count), _opt_float(p.get("rate"))
        )

    def _ctl_reset(self, _: dict[str, Any]) -> None:
        self.reset()

    async def _ctl_stats(self, _: web.Request) -> web.Response:
        return web.json_response(self.stats.to_json())


def _opt_float(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _decode_image_bytes_plain(encoded: object) -> tuple[bytes, str]:
    """``_decode_image_bytes`` for the control API, where bad input is a ValueError (400)."""
    try:
        return _decode_image_bytes(encoded)
    except _Fault as fault:
        raise ValueError(fault.message) from fault


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeRekognition(
        host=args.host,
        port=args.port,
        tps_quota=args.tps,
        burst=args.burst,
        latency_s=args.latency,
        jitter_s=args.jitter,
        seed=args.seed,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with fake:
        print(fake.endpoint_url, flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the fake until SIGINT/SIGTERM, printing the endpoint URL as the first stdout line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--tps", type=float, default=None, help="quota; unlimited if omitted")
    parser.add_argument("--burst", type=float, default=None, help="default max(1, tps/10)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per accepted call")
    parser.add_argument("--jitter", type=float, default=0.0, help="+- uniform seconds")
    parser.add_argument("--seed", type=int, default=0)
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
