"""An S3 endpoint that answers what moto will not: access denied, expired credentials, throttling,
an archived object, and a body that never ends (no Content-Length, chunked).

The real SDK talks to it over HTTP (path-style, as for any IP endpoint), so the object store's
error translation and its capped reads are exercised on the wire format S3 uses. The object's key
picks the answer; every bucket is the same.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import ClassVar

from aiohttp import web


class S3Answers:
    ERRORS: ClassVar[dict[str, tuple[int, str]]] = {
        "denied": (403, "AccessDenied"),
        "bad-key-id": (403, "InvalidAccessKeyId"),
        "expired": (400, "ExpiredToken"),
        "slow-down": (503, "SlowDown"),
        "archived": (403, "InvalidObjectState"),
    }
    ENDLESS = "endless"
    ENDLESS_LIMIT = 256 * 1024 * 1024  # where "endless" gives up if nobody hangs up first

    def __init__(self) -> None:
        self.endpoint = ""
        self.endless_sent = 0
        self.endless_done = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        key = request.path.rsplit("/", 1)[-1]
        if key == self.ENDLESS:
            return await self._endless(request)
        status, code = self.ERRORS.get(key, (404, "NoSuchKey"))
        body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code></Error>"
        return web.Response(status=status, body=body.encode(), content_type="application/xml")

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = b"\0" * 65536
        try:
            while self.endless_sent < self.ENDLESS_LIMIT:
                await response.write(chunk)
                self.endless_sent += len(chunk)
        except ConnectionError:
            pass  # the reader hung up: what the capped-read tests wait for
        finally:
            self.endless_done.set()
        return response


@contextlib.asynccontextmanager
async def serve_s3_answers() -> AsyncIterator[S3Answers]:
    answers = S3Answers()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answers.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    answers.endpoint = f"http://127.0.0.1:{port}"
    try:
        yield answers
    finally:
        await runner.cleanup()
