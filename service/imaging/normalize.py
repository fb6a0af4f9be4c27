"""Decode, orient, flatten, pick frames and produce what the backend takes (synchronous)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from PIL import Image, ImageFile, JpegImagePlugin

from service.errors import InputError, Reason
from service.imaging.decode import Deadline, check_pixels, decoder_errors, open_image
from service.imaging.encode import (
    ENCODE_MAX_PIXELS,
    acceptable_draft,
    draft_request,
    encode_jpeg,
    plan_size,
    resample,
)
from service.imaging.formats import BackendFormat, SourceFormat
from service.imaging.frames import spread
from service.imaging.header import ImageHeader, read_header
from service.imaging.jpeg import read_jpeg_header
from service.imaging.pixels import (
    STRIP_BYTES_PER_PIXEL,
    STRIP_PIXELS,
    apply_orientation,
    exif_orientation,
    orientation,
    oriented_size,
    pixel_digest,
    reduced_rgb,
    reduction_factor,
)
from service.imaging.png import minimal_png, png_exif, read_png_header
from service.imaging.spec import BackendInput, DecodeLimits

HELD_BYTES_PER_PIXEL: Final = 4
"""What Pillow holds per decoded pixel at most (RGB is stored as 4 bytes); a progressive JPEG's
DCT coefficients must fit in the same budget per pixel of the limit."""
CODEC_BYTES_PER_PIXEL: Final = 8
"""What the HEIF and AVIF codecs add per pixel while decoding: their YCbCr planes (up to 16-bit
samples) and the interleaved RGB copy handed to Pillow."""
ANIMATION_CANVASES: Final = 3
"""Full-canvas images an animation decoder keeps (the frame, the composite, the disposal
background)."""
_TIFF_TILE_TAGS: Final = (322, 323)


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """JPEG/PNG bytes within the backend's limits."""

    index: int  # the frame's position in the source (0 for a still image)
    data: bytes
    format: BackendFormat
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class PixelFrame:
    """8-bit RGB pixels, oriented, alpha flattened onto white, reduced for the model."""

    index: int
    image: Image.Image


Frame = EncodedFrame | PixelFrame


@dataclass(frozen=True, slots=True)
class NormalizedImage:
    source_format: SourceFormat
    width: int  # the source's size, after EXIF orientation
    height: int
    frame_count: int  # frames in the source (1 for a still image)
    frames: tuple[Frame, ...]  # those to analyze: 1 .. DecodeLimits.max_frames
    converted: bool  # False: frames[0].data is the input, untouched


def passes_as_is(header: ImageHeader, size: int, target: BackendInput, *, s3: bool) -> bool:
    """Whether the backend reads the image exactly as it is (JPEG or PNG, still, 8-bit grey
    or colour samples, sides within limits, ``size`` within ``max_bytes`` or, for an S3
    reference, ``s3_max_bytes``)."""
    if target.mode != "encoded" or header.format not in ("jpeg", "png"):
        return False
    if header.animated is not False:  # None: an APNG cannot be ruled out from a prefix
        return False
    if not header.plain_samples:  # CMYK JPEG, 16-bit PNG: converted rather than risked
        return False
    sides = (header.width, header.height)
    if min(sides) < target.min_side or max(sides) > target.max_side:
        return False
    if s3:
        return target.s3_max_bytes is not None and size <= target.s3_max_bytes
    return size <= target.max_bytes


def normalize(data: bytes, target: BackendInput, limits: DecodeLimits) -> NormalizedImage:
    """``data`` as the backend takes it; InputError with a typed reason when it cannot be.

    Raises IMAGE_TOO_MANY_PIXELS before decoding when a frame would exceed the pixel bound,
    TRUNCATED_IMAGE / INVALID_IMAGE_FORMAT for broken data, NOT_AN_IMAGE for an unsupported
    format, DECODE_TIMEOUT when the time limit passes.
    """
    deadline = Deadline(limits.timeout_s)
    header = read_header(data)
    if header is None:  # only a prefix can lack its size
        raise InputError(Reason.TRUNCATED_IMAGE, "image header is incomplete")
    check_pixels((header.width, header.height), limits, f"{header.format.upper()} image")
    with decoder_errors(header.format, len(data)):
        if passes_as_is(header, len(data), target, s3=False):
            return _untouched(data, header)
        return _Normalization(data, header, target, limits, deadline).run()


def decode_memory_bound(limits: DecodeLimits, target: BackendInput, *, input_bytes: int = 0) -> int:
    """The most memory one normalization holds at once, in bytes, not counting ``data`` itself
    (a worker normalizes one image at a time; ``input_bytes`` adds the one copy made of it, a
    still PNG stripped of its other chunks).

    Decoding: the decoded frame, or a JPEG's coefficients, within ``HELD_BYTES_PER_PIXEL`` per
    pixel of the bound; an animation's canvases; HEIF/AVIF codec buffers. Then one frame's
    conversion: a full RGB copy (encoded) or the reduced copy (pixels), a strip's temporaries,
    the resampled, oriented and padded copies of what is encoded (at most ``ENCODE_MAX_PIXELS``
    each, 4 bytes a pixel) and the JPEGs kept (``max_frames`` x ``max_bytes``).
    """
    pixels = limits.max_pixels
    decoded = HELD_BYTES_PER_PIXEL * pixels * max(ANIMATION_CANVASES, 1)
    codec = (HELD_BYTES_PER_PIXEL + CODEC_BYTES_PER_PIXEL) * pixels
    held = max(decoded, codec)
    strip = STRIP_BYTES_PER_PIXEL * STRIP_PIXELS
    if target.mode == "encoded":
        work = HELD_BYTES_PER_PIXEL * pixels + 3 * HELD_BYTES_PER_PIXEL * ENCODE_MAX_PIXELS
        kept = limits.max_frames * target.max_bytes
    else:  # reduced by an integer factor: at most the whole frame when it cannot be reduced
        work = HELD_BYTES_PER_PIXEL * pixels
        kept = limits.max_frames * HELD_BYTES_PER_PIXEL * pixels
    return held + strip + work + kept + input_bytes


def _untouched(data: bytes, header: ImageHeader) -> NormalizedImage:
    """The input as it is; only its headers are read, for the EXIF orientation."""
    if header.format == "png":
        turned = exif_orientation(png_exif(data))
    else:  # Pillow's JPEG decoder reads the APP1 segment as it opens: no pixel is decoded
        turned = orientation(open_image(data, header.format))
    width, height = oriented_size((header.width, header.height), turned)
    fmt: BackendFormat = "jpeg" if header.format == "jpeg" else "png"
    frame = EncodedFrame(0, data, fmt, header.width, header.height)
    return NormalizedImage(header.format, width, height, 1, (frame,), converted=False)


class _Normalization:
    """One image's decode: the decoder opened within bounds, then each chosen frame converted."""

    def __init__(
        self,
        data: bytes,
        header: ImageHeader,
        target: BackendInput,
        limits: DecodeLimits,
        deadline: Deadline,
    ) -> None:
        self.header = header
        self.target = target
        self.limits = limits
        self.deadline = deadline
        self.frame_count = 1
        self.planned: tuple[int, int] | None = None
        self.image = self._open(data)
        self.orientation = 1

    def _open(self, data: bytes) -> ImageFile.ImageFile:
        """The decoder, after the checks its header allows: pixel data complete (PNG), the
        coefficient memory (progressive JPEG), every size it will allocate (canvas, TIFF tile)."""
        header, limits = self.header, self.limits
        fmt = header.format
        if fmt == "png" and not header.animated:
            data = minimal_png(data, read_png_header(data))
        elif fmt == "jpeg":
            held = read_jpeg_header(data).coefficient_bytes()
            if held > HELD_BYTES_PER_PIXEL * limits.max_pixels:
                raise InputError(
                    Reason.IMAGE_TOO_MANY_PIXELS,
                    f"JPEG {header.width}x{header.height} would hold {held} bytes of DCT "
                    f"coefficients, more than {HELD_BYTES_PER_PIXEL} bytes per pixel of "
                    "MODERATION_MAX_IMAGE_PIXELS",
                )
        elif fmt == "gif":
            assert header.frames is not None  # read_header walked the whole file's blocks
            self.frame_count = header.frames
        self.deadline.check("decoding")
        image = open_image(data, fmt)
        check_pixels(image.size, limits, f"{fmt.upper()} image as decoded")
        if fmt in ("jpeg", "png", "bmp", "webp", "tiff") and image.size != (
            header.width,
            header.height,
        ):
            raise InputError(
                Reason.INVALID_IMAGE_FORMAT,
                f"{fmt.upper()} header says {header.width}x{header.height}, the decoder "
                f"{image.size[0]}x{image.size[1]}",
            )
        if fmt == "tiff":
            tags = getattr(image, "tag_v2", {})
            tile = tuple(int(tags.get(tag, 0) or 0) for tag in _TIFF_TILE_TAGS)
            check_pixels((tile[0], tile[1]), limits, "TIFF tile")
        if fmt in ("webp", "png", "avif") and header.animated is not False:
            self.frame_count = max(1, int(getattr(image, "n_frames", 1)))
        if fmt == "jpeg" and isinstance(image, JpegImagePlugin.JpegImageFile):
            self._draft(image)
        return image

    def _draft(self, image: JpegImagePlugin.JpegImageFile) -> None:
        """JPEG DCT scaling: decode straight at a reduced size when that is all we need."""
        size = image.size
        if self.target.mode == "pixels":
            side = self.target.pixel_side
            if side > 0:
                scale = max(1.0, min(size) / side)
                image.draft("RGB", (math.ceil(size[0] / scale), math.ceil(size[1] / scale)))
            return
        self.planned = plan_size(size, self.target)
        request = draft_request(self.planned, size)
        if request is not None:
            image.draft("RGB", request)

    def run(self) -> NormalizedImage:
        """Decode frames in order up to the last position chosen. A chosen frame identical to
        one already taken leaves its slot owed: the next different frame takes it, so repeats
        (a still stretch of an animation) do not crowd out the pictures between them."""
        image = self.image
        wanted = spread(self.frame_count, self.limits.max_frames)
        chosen = frozenset(wanted)
        frames: list[Frame] = []
        seen: set[bytes] = set()
        animated = self.frame_count > 1
        owed = 0  # chosen slots not filled yet
        done = -1
        for index in range(wanted[-1] + 1):
            self.deadline.check(f"frame {index}")
            if index:
                try:
                    image.seek(index)
                except EOFError:  # fewer frames than the file declared: the last one counts
                    self.frame_count = index
                    if done != index - 1:
                        self._add(index - 1, frames, seen, animated)
                    break
            image.load()
            if index == 0:
                self.orientation = orientation(image)
                check_pixels(image.size, self.limits, "decoded frame")
            owed += index in chosen
            if owed and self._add(index, frames, seen, animated):
                owed -= 1
                done = index
        width, height = oriented_size((self.header.width, self.header.height), self.orientation)
        return NormalizedImage(
            self.header.format, width, height, self.frame_count, tuple(frames), converted=True
        )

    def _add(self, index: int, frames: list[Frame], seen: set[bytes], animated: bool) -> bool:
        """Convert the current frame and keep it; False (nothing kept) for a repeat. Frames are
        compared as converted: decoders hand out frames in different modes (a GIF's first is
        palette, the rest RGB), so the same picture can differ as decoded."""
        self.deadline.check(f"converting frame {index}")
        if self.target.mode == "pixels":
            factor = reduction_factor(self.image.size, self.target.pixel_side)
            rgb = apply_orientation(reduced_rgb(self.image, factor), self.orientation)
        else:
            rgb = apply_orientation(self._planned_rgb(), self.orientation)
        if animated:
            digest = pixel_digest(rgb)
            if digest in seen:
                return False
            seen.add(digest)
        if self.target.mode == "pixels":
            # A frame already RGB at its size is the decoder's own image, which the next
            # seek() overwrites: the frame keeps a copy.
            frames.append(PixelFrame(index, rgb.copy() if rgb is self.image else rgb))
            return True
        self.deadline.check(f"encoding frame {index}")
        data, width, height = encode_jpeg(rgb, self.target, self.limits.jpeg_quality)
        frames.append(EncodedFrame(index, data, "jpeg", width, height))
        return True

    def _planned_rgb(self) -> Image.Image:
        """The current frame in RGB at the planned size (a DCT-scaled JPEG close enough to it
        is used as decoded)."""
        image = self.image
        planned = self.planned or plan_size(image.size, self.target)
        if self.planned is not None and acceptable_draft(image.size, planned, self.target.min_side):
            planned = image.size
        # Box-reduce by the integer factor that stays above the plan while converting (a strip
        # at a time for big images), then resample the rest of the way.
        factor = max(1, min(image.width // planned[0], image.height // planned[1]))
        return resample(reduced_rgb(image, factor), planned)
