"""Normalize: put an image in the form the analyzers take (format conversion, frames, resizing).

Every backend today takes the JPEG/PNG bytes or the S3 reference as sent, so the image passes on
unchanged; this is where converting other formats or picking video frames goes.
"""

from __future__ import annotations

from service.stages.load import LoadedImage


class Normalizer:
    async def normalize(self, image: LoadedImage) -> LoadedImage:
        return image
