"""Match: look an image up in known-content hash banks before any model sees it.

No hash bank is configured today, so every image goes on to analysis unchanged; this is where
matching (and a bank hit's verdict) goes.
"""

from __future__ import annotations

from service.stages.normalize import PreparedImage


class Matcher:
    async def match(self, image: PreparedImage) -> PreparedImage:
        return image
