"""Load: the request's image in a form a backend takes (bytes, or an S3 reference it reads).

Inline bytes and S3 references need nothing; a URL is fetched, and only a failure to reach its
host is retried (it may pass), a few times with backoff; every other fetch failure is final.
Each attempt's body is reserved (``reserve``: its declared size, the download limit when it
declares none) before it is read, so downloads in progress are bounded by the in-flight byte
budget, not only those already read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from service.errors import InputError, Reason
from service.messages import BytesImage, ModerationRequest, S3Image, UrlImage
from service.retry import full_jitter

URL_FETCH_ATTEMPTS = 3


class SupportsFetch(Protocol):
    """What loading needs from :class:`service.fetch.ImageFetcher`."""

    async def fetch(
        self, url: str, *, reserve: Callable[[int], Awaitable[None]] | None = None
    ) -> bytes: ...


@dataclass(frozen=True, slots=True)
class LoadedImage:
    content: S3Image | bytes
    attempts: int  # fetches it took (0: nothing was fetched)


class ImageLoader:
    def __init__(self, fetcher: SupportsFetch) -> None:
        self._fetcher = fetcher

    async def load(
        self,
        request: ModerationRequest,
        reserve: Callable[[int], Awaitable[None]] | None = None,
    ) -> LoadedImage:
        """The image; InputError (with the attempts it took) when it cannot be had.
        ``reserve``: called before each URL body is read, with the size to hold for it."""
        image = request.image
        if isinstance(image, S3Image):
            return LoadedImage(image, 0)
        if isinstance(image, BytesImage):
            return LoadedImage(image.data, 0)
        assert isinstance(image, UrlImage)
        attempt = 0
        while True:
            attempt += 1
            try:
                return LoadedImage(await self._fetcher.fetch(image.url, reserve=reserve), attempt)
            except InputError as exc:
                if exc.reason is not Reason.UNREACHABLE_URL or attempt >= URL_FETCH_ATTEMPTS:
                    suffix = f" (after {attempt} attempts)" if attempt > 1 else ""
                    raise InputError(exc.reason, exc.message + suffix, attempts=attempt) from exc
                await asyncio.sleep(full_jitter(attempt, base=0.5, cap=5.0))
