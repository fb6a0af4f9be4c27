"""The image of an item, fetched server-side for the reviewer who holds its claim.

The browser only ever sees ``/items/<loop>/image`` on the console itself (CSP ``img-src 'self'``),
never a bucket URL or a presigned link that could be forwarded:

* ``{"s3": ...}``: read through :mod:`service.objectstore` (``S3_ENDPOINT_URL`` applies), at
  most 15 MB (Rekognition's S3 limit), reading stopped there;
* ``{"url": ...}``: fetched with the pipeline's :class:`~service.fetch.ImageFetcher` and the same
  :class:`~service.fetch.FetchPolicy` (SSRF rules, ``MODERATION_FETCH_ALLOWED_NETWORKS``), so a
  review record cannot make the console reach inside the network either;
* ``{"bytes": ...}``: inline images are never stored (records carry only their sha256 and size),
  so there is nothing to show.

Whatever comes back must be a JPEG or PNG by its magic bytes; the content type is set from them.
The reference is the typed one of a parsed review record, so odd data (a list for a bucket) never
reaches this far: the record was refused at intake, or is shown as unreadable.
"""

from __future__ import annotations

from service.errors import BackendError, InputError
from service.fetch import FetchPolicy, ImageFetcher
from service.images import check_image
from service.imaging.formats import CONTENT_TYPES
from service.messages import S3Image, UrlImage
from service.objectstore import (
    InvalidLocation,
    ObjectForbidden,
    ObjectStore,
    ObjectStoreError,
    ObjectTooLarge,
    S3Location,
    S3Options,
)
from service.review.records import ReviewImage

MAX_S3_IMAGE_BYTES = 15 * 1000 * 1000


class ImageUnavailable(Exception):
    """The image cannot be shown; ``reason`` is safe to display (no URL, no credentials).

    ``status`` is the HTTP answer: 404 nothing stored to show (inline bytes), 422 the record's
    reference cannot name an image, 502 the store or origin failed or sent something else.
    """

    def __init__(self, reason: str, *, status: int = 502) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def image_kind(image: ReviewImage) -> str:
    if isinstance(image, S3Image):
        return "s3"
    if isinstance(image, UrlImage):
        return "url"
    return "bytes"


class ImageSource:
    def __init__(
        self, policy: FetchPolicy, *, region: str | None, s3_endpoint_url: str | None
    ) -> None:
        self._fetcher = ImageFetcher(policy)
        self._s3 = ObjectStore(S3Options(region=region, endpoint_url=s3_endpoint_url))

    async def start(self) -> None:
        await self._fetcher.start()
        await self._s3.start()

    async def close(self) -> None:
        await self._s3.close()
        await self._fetcher.close()

    async def load(self, image: ReviewImage) -> tuple[bytes, str]:
        """The image bytes and their content type, or :class:`ImageUnavailable`."""
        if isinstance(image, S3Image):
            data = await self._load_s3(image)
        elif isinstance(image, UrlImage):
            try:
                data = await self._fetcher.fetch(image.url)
            except InputError as exc:
                raise ImageUnavailable(
                    f"the image URL could not be fetched ({exc.reason})"
                ) from exc
        else:
            raise ImageUnavailable("inline image, not stored", status=404)
        try:
            fmt = check_image(data, MAX_S3_IMAGE_BYTES)
        except InputError as exc:
            raise ImageUnavailable(f"not a displayable image ({exc.reason})") from exc
        return data, CONTENT_TYPES[fmt]

    async def _load_s3(self, ref: S3Image) -> bytes:
        try:
            return await self._s3.get(
                S3Location(ref.bucket, ref.key, ref.version or None), max_bytes=MAX_S3_IMAGE_BYTES
            )
        except InvalidLocation as exc:  # e.g. a bucket name S3 cannot have
            raise ImageUnavailable(
                "the record's S3 reference is not a valid bucket and key", status=422
            ) from exc
        except ObjectTooLarge as exc:
            raise ImageUnavailable("the S3 object is larger than 15 MB") from exc
        except (ObjectStoreError, ObjectForbidden) as exc:
            raise ImageUnavailable(f"the S3 object could not be read ({exc.code})") from exc
        except BackendError as exc:
            raise ImageUnavailable(f"S3 is unreachable ({exc.code})") from exc
