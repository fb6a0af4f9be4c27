"""Normalize: what people upload, in the form the backend takes (one or more frames).

Decoding is CPU-bound and runs in a bounded pool of worker threads (``MODERATION_DECODE_WORKERS``)
off the event loop: :func:`service.imaging.normalize.normalize` reads the header, checks the
pixel bound before a pixel is decoded, and either passes the image through untouched (JPEG/PNG
within the backend's limits: a header read only) or decodes, picks animation frames and converts.
Its time limit (``MODERATION_DECODE_TIMEOUT_S``) starts when a worker takes the image, so time
spent queueing behind other images never counts against it.

S3 references: a backend that reads S3 itself (Rekognition) gets the reference untouched when the
object is JPEG/PNG, within its sides and at most its S3 size; one ranged GET (the first bytes and
the object's size) decides that. Anything else is downloaded (at most
``MODERATION_FETCH_MAX_BYTES``) and normalized to bytes like an inline image. A backend that
cannot read S3 (the local model) gets downloaded objects when S3 reads are on
(``MODERATION_LOCAL_READ_S3``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, Literal, ParamSpec, Protocol, TypeVar

from service.backends.base import BackendImage
from service.capacity import InFlightBytes
from service.errors import BackendError, BackendUnavailable, GaveUp, InputError, Reason
from service.imaging.formats import SourceFormat
from service.imaging.header import read_header
from service.imaging.normalize import EncodedFrame, NormalizedImage, normalize, passes_as_is
from service.imaging.spec import BackendInput, DecodeLimits
from service.messages import S3Image
from service.metrics import PipelineMetrics
from service.objectstore import (
    InvalidLocation,
    ObjectForbidden,
    ObjectRange,
    ObjectStoreError,
    ObjectTooLarge,
    S3Location,
)
from service.retry import full_jitter
from service.settings import ImageSettings
from service.stages.load import LoadedImage

log = logging.getLogger(__name__)

S3_PREFIX_BYTES: Final = 64 * 1024
"""Bytes read from the start of an S3 object to decide whether the backend reads it as it is:
enough for a JPEG's EXIF and frame header or a PNG's IHDR and first IDAT (a header beyond it
means a download)."""
S3_TRANSIENT_ATTEMPTS: Final = 3
"""S3 reads that fail for a transient reason (throttling, 5xx, timeouts) before giving up."""

Action = Literal["passthrough", "converted"]
T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")


class SupportsObjectRead(Protocol):
    """What normalizing needs from :class:`service.objectstore.ObjectStore`."""

    async def get_range(self, location: S3Location, length: int) -> ObjectRange: ...

    async def get(self, location: S3Location, *, max_bytes: int) -> bytes: ...


@dataclass(frozen=True, slots=True)
class FrameToAnalyze:
    """One backend call's image: ``index`` is the frame's position in the source (0: still)."""

    index: int
    image: BackendImage


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """The frames to analyze (1 .. ``MODERATION_MAX_FRAMES``) and what they came from."""

    frames: tuple[FrameToAnalyze, ...]
    format: SourceFormat | None  # None: an S3 reference passed on without looking at it
    converted: bool  # False: the backend gets the upload (or its S3 reference) untouched
    frame_count: int  # frames in the source (1 for a still image)
    attempts: int  # fetches it took (0: nothing was fetched)

    @property
    def animated(self) -> bool:
        return self.frame_count > 1

    def describe(self) -> dict[str, Any]:
        """The verdict's ``analyzed`` object."""
        return {
            "format": self.format,
            "converted": self.converted,
            "frames_analyzed": len(self.frames),
            "frame_count": self.frame_count,
        }


class Normalizer:
    """Owns the decode pool; :meth:`close` shuts it down (queued images are dropped)."""

    def __init__(
        self,
        target: BackendInput,
        images: ImageSettings,
        *,
        metrics: PipelineMetrics,
        objects: SupportsObjectRead | None = None,
        max_download_bytes: int,
        in_flight: InFlightBytes | None = None,
    ) -> None:
        self._target = target
        self._limits = DecodeLimits(
            max_pixels=images.max_pixels,
            max_frames=images.max_frames,
            timeout_s=images.decode_timeout_s,
            jpeg_quality=images.jpeg_quality,
        )
        self._metrics = metrics
        self._objects = objects
        self._max_download = max_download_bytes
        self._in_flight = in_flight or InFlightBytes()
        self._pool = ThreadPoolExecutor(images.decode_workers, thread_name_prefix="normalize")
        self._closed = False

    @property
    def limits(self) -> DecodeLimits:
        return self._limits

    async def close(self) -> None:
        """Stop taking images; wait for the ones being decoded (each within its time limit)."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)

    async def normalize(self, image: LoadedImage) -> PreparedImage:
        """The frames to analyze; InputError with a typed reason when the image cannot be."""
        content = image.content
        if isinstance(content, bytes):
            return await self._from_bytes(content, image.attempts)
        return await self._from_s3(content, image.attempts)

    async def _from_bytes(self, data: bytes, attempts: int) -> PreparedImage:
        normalized, action = await self._in_worker(normalize, data, self._target, self._limits)
        self._metrics.images_normalized.labels(format=normalized.source_format, action=action).inc()
        return _prepared(normalized, attempts)

    async def _from_s3(self, image: S3Image, attempts: int) -> PreparedImage:
        where = S3Location(image.bucket, image.key, image.version)
        if self._objects is None:
            if self._target.s3_max_bytes is not None:  # no reader: the backend reads it as sent
                return PreparedImage((FrameToAnalyze(0, image),), None, False, 1, attempts)
            raise InputError(
                Reason.INVALID_S3_OBJECT,
                "this backend cannot read S3 references and S3 reads are off "
                "(MODERATION_LOCAL_READ_S3): send the image inline or as a URL",
            )
        size: int | None = None
        if self._target.s3_max_bytes is not None:
            head = await self._read(
                where, lambda objects: objects.get_range(where, S3_PREFIX_BYTES)
            )
            size = head.size
            header, _ = await self._in_worker(read_header, head.data, complete=False)
            if header is not None and passes_as_is(header, head.size, self._target, s3=True):
                self._metrics.images_normalized.labels(
                    format=header.format, action="passthrough"
                ).inc()
                return PreparedImage((FrameToAnalyze(0, image),), header.format, False, 1, attempts)
        async with self._holding(size):
            data = await self._read(
                where, lambda objects: objects.get(where, max_bytes=self._max_download)
            )
            return await self._from_bytes(data, attempts)

    @contextlib.asynccontextmanager
    async def _holding(self, size: int | None) -> AsyncIterator[None]:
        """Count a downloaded original against the in-flight byte budget while it is held;
        with its size known beforehand, wait for room first."""
        if size is not None:
            size = min(size, self._max_download)
            await self._in_flight.reserve(size)
        else:
            size = 0
        try:
            yield
        finally:
            self._in_flight.release(size)

    async def _read(
        self, where: S3Location, read: Callable[[SupportsObjectRead], Awaitable[T]]
    ) -> T:
        """One S3 read, its failures as Rekognition would report them (INVALID_S3_OBJECT for
        an object that cannot be read, IMAGE_TOO_LARGE over the download limit); transient
        trouble is retried, then given up (BACKEND_ERROR); credential trouble is waited out."""
        objects = self._objects
        assert objects is not None
        attempt = 0
        while True:
            attempt += 1
            try:
                return await read(objects)
            except ObjectTooLarge as exc:
                raise InputError(
                    Reason.IMAGE_TOO_LARGE,
                    f"{where.uri} is larger than {exc.limit} bytes (MODERATION_FETCH_MAX_BYTES)",
                ) from exc
            except InvalidLocation as exc:
                raise InputError(
                    Reason.INVALID_PARAMETER, f"S3 refuses the reference: {exc}"
                ) from exc
            except (ObjectStoreError, ObjectForbidden) as exc:
                raise InputError(
                    Reason.INVALID_S3_OBJECT, f"cannot read {where.uri}: S3 {exc.code}"
                ) from exc
            except BackendUnavailable as exc:
                log.error("S3 unavailable (%s); waiting, not dead-lettering", exc)
                await asyncio.sleep(full_jitter(attempt, base=0.5, cap=30.0))
            except BackendError as exc:
                if attempt >= S3_TRANSIENT_ATTEMPTS:
                    raise GaveUp(exc.code, attempt) from exc
                await asyncio.sleep(full_jitter(attempt, base=0.2, cap=5.0))

    async def _in_worker(
        self, work: Callable[P, R], *args: P.args, **kwargs: P.kwargs
    ) -> tuple[R, Action]:
        """``work`` in the decode pool, timed from when a worker takes it."""
        loop = asyncio.get_running_loop()

        def timed() -> tuple[R, float]:
            started = time.monotonic()
            result = work(*args, **kwargs)
            return result, time.monotonic() - started

        result, elapsed = await loop.run_in_executor(self._pool, timed)
        action: Action = "passthrough"
        if isinstance(result, NormalizedImage):
            action = "converted" if result.converted else "passthrough"
            self._metrics.normalize_duration.labels(action=action).observe(elapsed)
        return result, action


def _prepared(normalized: NormalizedImage, attempts: int) -> PreparedImage:
    frames = tuple(
        FrameToAnalyze(frame.index, frame.data if isinstance(frame, EncodedFrame) else frame.image)
        for frame in normalized.frames
    )
    return PreparedImage(
        frames, normalized.source_format, normalized.converted, normalized.frame_count, attempts
    )
