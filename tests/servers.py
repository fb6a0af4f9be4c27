"""Local HTTP origins for image URLs in tests (loopback is allow-listed where they are used)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping

from aiohttp import web


@contextlib.asynccontextmanager
async def serve_images(routes: Mapping[str, bytes]) -> AsyncIterator[str]:
    """Serve ``routes`` (path -> body, as image/png; 404 elsewhere); yields the origin URL."""

    async def serve(request: web.Request) -> web.Response:
        body = routes.get(request.path)
        if body is None:
            return web.Response(status=404)
        return web.Response(body=body, content_type="image/png")

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
