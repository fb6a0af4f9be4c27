"""Load: the request's image in a form a backend takes (bytes, or an S3 reference it reads).

Inline bytes and S3 references need nothing; a URL is fetched, and only a failure to reach its
host is retried (it may pass), a few times with backoff; every other fetch failure is final.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from service.errors import InputError, Reason
from service.messages import BytesImage, ModerationRequest, S3Image, UrlImage
from service.retry import full_jitter

URL_FETCH_ATTEMPTS = 3


class SupportsFetch(Protocol):
    """What loading needs from :class:`service.fetch.ImageFetcher`."""

    async def fetch(self, url: str) -> bytes: ...


@dataclass(frozen=True, slots=True)
class LoadedImage:
    content: S3Image | bytes
    attempts: int  # fetches it took (0: nothing was fetched)


class ImageLoader:
    def __init__(self, fetcher: SupportsFetch) -> None:
        self._fetcher = fetcher

    async def load(self, request: ModerationRequest) -> LoadedImage:
        """The image; InputError (with the attempts it took) when it cannot be had."""
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
                return LoadedImage(await self._fetcher.fetch(image.url), attempt)
            except InputError as exc:
                if exc.reason is not Reason.UNREACHABLE_URL or attempt >= URL_FETCH_ATTEMPTS:
                    suffix = f" (after {attempt} attempts)" if attempt > 1 else ""
                    raise InputError(exc.reason, exc.message + suffix, attempts=attempt) from exc
                await asyncio.sleep(full_jitter(attempt, base=0.5, cap=5.0))
