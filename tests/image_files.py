"""Real image files of every supported format and case, for tests and benchmarks.

Every generator is a pure function returning bytes (cached: they are immutable), small and fast
unless its name says otherwise. Pillow encodes everything it can; HEIC is encoded with
``pillow_heif`` (a dev dependency: it bundles the GPL x265 encoder, so it never ships), and what
no encoder writes (tiled TIFFs, GIFs with repeated identical frames, hostile headers) is
assembled from bytes.

Pictures are built so a test can check the pixels after normalization:

- solid colours from ``FRAME_COLOURS``, one per animation frame: ``nearest_frame`` names the
  frame a decoded picture came from, even after lossy re-encoding;
- ``quadrants``: an upright reference (red, green / blue, yellow), stored rotated or mirrored
  with each EXIF orientation by ``jpeg_oriented``, so the orientation fix-up can be checked by
  where each colour lands;
- ``half_transparent``: the left half fully transparent, the right half opaque ``OPAQUE``, so
  alpha flattened onto white shows as white on the left.
"""

from __future__ import annotations

import functools
import io
import random
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from PIL import Image

from tests.images import cut, pixel_flood_png, png_chunk, zlib_bomb_png

RGB = tuple[int, int, int]
FRAME_COLOURS: Final[tuple[RGB, ...]] = (
    (220, 20, 20),  # red
    (20, 200, 20),  # green
    (20, 20, 220),  # blue
    (230, 230, 20),  # yellow
    (20, 220, 220),  # cyan
    (220, 20, 220),  # magenta
    (0, 0, 0),  # black
    (128, 128, 128),  # grey
    (250, 140, 0),  # orange
    (120, 60, 0),  # brown
    (0, 100, 60),  # dark green
    (120, 0, 160),  # purple
)
QUADRANT_COLOURS: Final[tuple[RGB, RGB, RGB, RGB]] = (
    (220, 20, 20),  # top left: red
    (20, 200, 20),  # top right: green
    (20, 20, 220),  # bottom left: blue
    (230, 230, 20),  # bottom right: yellow
)
OPAQUE: Final[RGB] = (220, 20, 20)
WHITE: Final[RGB] = (255, 255, 255)
ORIENTATION_TAG: Final = 0x0112
# How to store an upright picture so that EXIF orientation N shows it upright: the inverse of
# the fix-up a viewer applies (those of 2-5 and 7 are their own inverses).
_STORE_AS: Final[Mapping[int, Image.Transpose]] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


# -- pictures --------------------------------------------------------------------------------------


def frame_colour(index: int) -> RGB:
    return FRAME_COLOURS[index % len(FRAME_COLOURS)]


def nearest_frame(colour: Sequence[int]) -> int:
    """The index in ``FRAME_COLOURS`` closest to ``colour`` (a decoded, maybe re-encoded pixel)."""
    return min(
        range(len(FRAME_COLOURS)),
        key=lambda i: sum((a - b) ** 2 for a, b in zip(FRAME_COLOURS[i], colour, strict=False)),
    )


def close(colour: Sequence[int], expected: Sequence[int], tolerance: int = 40) -> bool:
    """Whether two colours match within a lossy codec's error on each channel."""
    return all(abs(a - b) <= tolerance for a, b in zip(colour, expected, strict=True))


def centre_colour(image: Image.Image) -> RGB:
    pixel = image.convert("RGB").getpixel((image.width // 2, image.height // 2))
    assert isinstance(pixel, tuple)
    return (int(pixel[0]), int(pixel[1]), int(pixel[2]))


def solid(width: int, height: int, colour: RGB = OPAQUE, mode: str = "RGB") -> Image.Image:
    return Image.new("RGB", (width, height), colour).convert(mode)


def quadrants(width: int = 160, height: int = 120) -> Image.Image:
    """The upright reference: red | green over blue | yellow."""
    image = Image.new("RGB", (width, height))
    half_w, half_h = width // 2, height // 2
    boxes = (
        (0, 0, half_w, half_h),
        (half_w, 0, width, half_h),
        (0, half_h, half_w, height),
        (half_w, half_h, width, height),
    )
    for box, colour in zip(boxes, QUADRANT_COLOURS, strict=True):
        image.paste(colour, box)
    return image


def quadrant_colours(image: Image.Image) -> tuple[RGB, RGB, RGB, RGB]:
    """The colours at the centres of the four quadrants of ``image`` (TL, TR, BL, BR)."""
    rgb = image.convert("RGB")
    w, h = rgb.size
    points = (
        (w // 4, h // 4),
        (3 * w // 4, h // 4),
        (w // 4, 3 * h // 4),
        (3 * w // 4, 3 * h // 4),
    )
    found = []
    for point in points:
        pixel = rgb.getpixel(point)
        assert isinstance(pixel, tuple)
        found.append((int(pixel[0]), int(pixel[1]), int(pixel[2])))
    return found[0], found[1], found[2], found[3]


def half_transparent(width: int = 120, height: int = 100, mode: str = "RGBA") -> Image.Image:
    """Left half fully transparent (black underneath), right half opaque ``OPAQUE``."""
    image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    image.paste((*OPAQUE, 255), (width // 2, 0, width, height))
    return image if mode == "RGBA" else image.convert(mode)


def noise(width: int, height: int, seed: int = 1) -> Image.Image:
    """Incompressible RGB noise (seeded)."""
    return Image.frombytes(
        "RGB", (width, height), random.Random(seed).randbytes(width * height * 3)
    )


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    """``image`` saved by Pillow as ``fmt`` (HEIF through pillow_heif)."""
    buffer = io.BytesIO()
    if fmt.upper() in ("HEIF", "HEIC"):
        import pillow_heif  # dev only: its encoder is GPL x265

        pillow_heif.from_pillow(image).save(buffer, **options)
    else:
        image.save(buffer, fmt, **options)
    return buffer.getvalue()


# -- JPEG ------------------------------------------------------------------------------------------


@functools.cache
def jpeg(
    width: int = 320,
    height: int = 240,
    colour: RGB = OPAQUE,
    *,
    mode: str = "RGB",
    progressive: bool = False,
    quality: int = 90,
) -> bytes:
    """A solid-colour JPEG; ``mode`` "L" is grey, "CMYK" an Adobe CMYK JPEG."""
    return encode(
        solid(width, height, colour, mode), "JPEG", quality=quality, progressive=progressive
    )


def jpeg_baseline() -> bytes:
    return jpeg()


def jpeg_progressive() -> bytes:
    return jpeg(progressive=True)


def jpeg_cmyk() -> bytes:
    return jpeg(mode="CMYK")


def jpeg_grey() -> bytes:
    return jpeg(mode="L")


@functools.cache
def jpeg_oriented(orientation: int, width: int = 160, height: int = 120) -> bytes:
    """``quadrants(width, height)`` stored so that EXIF ``orientation`` shows it upright
    (stored ``height`` x ``width`` for orientations 5-8)."""
    image = quadrants(width, height)
    if orientation in _STORE_AS:
        image = image.transpose(_STORE_AS[orientation])
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


@functools.cache
def jpeg_photo(width: int = 4000, height: int = 3000, quality: int = 90) -> bytes:
    """A photo-like JPEG (gradients and grain; 12 MP by default, a few MiB): slow-ish, cached."""
    grain = Image.effect_noise((width, height), 40)
    red = Image.linear_gradient("L").resize((width, height))
    green = red.transpose(Image.Transpose.ROTATE_90).resize((width, height))
    blue = Image.blend(grain, red, 0.5)
    return encode(Image.merge("RGB", (red, green, blue)), "JPEG", quality=quality)


# -- PNG -------------------------------------------------------------------------------------------


@functools.cache
def png(width: int = 320, height: int = 240, colour: RGB = OPAQUE, *, mode: str = "RGB") -> bytes:
    return encode(solid(width, height, colour, mode), "PNG")


def png_rgb() -> bytes:
    return png()


@functools.cache
def png_rgba() -> bytes:
    return encode(half_transparent(), "PNG")


@functools.cache
def png_grey_alpha() -> bytes:
    """Mode LA: left half transparent, right half opaque grey (OPAQUE's luminance)."""
    return encode(half_transparent(mode="LA"), "PNG")


@functools.cache
def png_palette_transparent() -> bytes:
    """Mode P with a transparent palette entry (tRNS): left half transparent, right OPAQUE."""
    image = Image.new("P", (120, 100), 0)
    image.putpalette([0, 0, 0, *OPAQUE])
    image.paste(1, (60, 0, 120, 100))
    return encode(image, "PNG", transparency=0)


@functools.cache
def png_oriented(orientation: int, *, exif_last: bool = False) -> bytes:
    """``quadrants()`` stored for EXIF ``orientation`` in an ``eXIf`` chunk, which PNG allows
    before the image data (Pillow writes it there) or, with ``exif_last``, after it."""
    image = quadrants()
    if orientation in _STORE_AS:
        image = image.transpose(_STORE_AS[orientation])
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    data = encode(image, "PNG", exif=exif.tobytes())
    if not exif_last:
        return data
    start = data.index(b"eXIf") - 4
    (length,) = struct.unpack_from(">I", data, start)
    chunk = data[start : start + 12 + length]
    without = data.replace(chunk, b"")
    return without[:-12] + chunk + without[-12:]  # just before IEND


GREY16: Final = 0x8A40  # a 16-bit sample whose high byte is 0x8A = 138


@functools.cache
def png_grey16(value: int = GREY16) -> bytes:
    """16-bit greyscale, every sample ``value``."""
    image = Image.new("I;16", (120, 100), value)
    return encode(image, "PNG")


@functools.cache
def png_rgb16(colour16: tuple[int, int, int] = (0xDC00, 0x1400, 0x14FF)) -> bytes:
    """16-bit RGB (no Pillow mode writes it, so built from bytes): 8-bit RGB ~ OPAQUE."""
    width, height = 120, 100
    row = b"\x00" + struct.pack(">HHH", *colour16) * width
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(row * height))
        + png_chunk(b"IEND", b"")
    )


def _frames(count: int, size: tuple[int, int], mode: str = "RGB") -> list[Image.Image]:
    return [solid(*size, frame_colour(index), mode) for index in range(count)]


@functools.cache
def apng(frames: int = 6, size: tuple[int, int] = (120, 100)) -> bytes:
    """An animated PNG whose frame i is ``frame_colour(i)``."""
    pictures = _frames(frames, size)
    return encode(pictures[0], "PNG", save_all=True, append_images=pictures[1:], duration=100)


# -- WebP ------------------------------------------------------------------------------------------


@functools.cache
def webp_lossy(width: int = 320, height: int = 240) -> bytes:
    return encode(solid(width, height), "WEBP", quality=85)


@functools.cache
def webp_lossless_alpha() -> bytes:
    return encode(half_transparent(), "WEBP", lossless=True)


@functools.cache
def webp_animated(frames: int = 6, size: tuple[int, int] = (120, 100)) -> bytes:
    pictures = _frames(frames, size)
    return encode(
        pictures[0], "WEBP", save_all=True, append_images=pictures[1:], duration=100, quality=90
    )


# -- GIF -------------------------------------------------------------------------------------------


@functools.cache
def gif_still(width: int = 120, height: int = 100) -> bytes:
    return encode(solid(width, height), "GIF")


@functools.cache
def gif_animated(frames: int = 6, size: tuple[int, int] = (120, 100)) -> bytes:
    """An animated GIF whose frame i is ``frame_colour(i)`` (all distinct)."""
    pictures = _frames(frames, size)
    return encode(pictures[0], "GIF", save_all=True, append_images=pictures[1:], duration=100)


@functools.cache
def gif_transparent() -> bytes:
    """A still GIF: left half the transparent index, right half OPAQUE."""
    image = Image.new("P", (120, 100), 0)
    image.putpalette([0, 0, 0, *OPAQUE])
    image.paste(1, (60, 0, 120, 100))
    return encode(image, "GIF", transparency=0)


def gif_blocks(data: bytes) -> tuple[bytes, list[bytes]]:
    """A GIF split into its head (signature, screen, global colour table, extensions before
    the first frame's own) and each frame's blocks (its graphic control extension and image).
    The trailer is dropped."""
    (flags,) = struct.unpack_from("<B", data, 10)
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    head_end: int | None = None
    frame_start = position
    frames: list[bytes] = []
    while position < len(data) and data[position] != 0x3B:
        if data[position] == 0x21:
            if data[position + 1] == 0xF9 and head_end is None:
                head_end = frame_start = position
            end = _skip_sub_blocks(data, position + 2)
        else:  # 0x2C: an image descriptor
            if head_end is None:
                head_end = frame_start = position
            frame_flags = data[position + 9]
            start = position + 10 + (3 << ((frame_flags & 7) + 1) if frame_flags & 0x80 else 0)
            end = _skip_sub_blocks(data, start + 1)
            frames.append(data[frame_start:end])
            frame_start = end
        position = end
    assert head_end is not None, "GIF without frames"
    return data[:head_end], frames


def _skip_sub_blocks(data: bytes, position: int) -> int:
    while data[position]:
        position += 1 + data[position]
    return position + 1


@functools.cache
def gif_sequence(colours: tuple[int, ...], size: tuple[int, int] = (120, 100)) -> bytes:
    """An animated GIF whose frame i is ``frame_colour(colours[i])``, repeats kept (Pillow's
    encoder merges identical consecutive frames, so the file is assembled from its blocks)."""
    distinct = sorted(set(colours))
    pictures = [solid(*size, frame_colour(index)) for index in distinct]
    if len(pictures) == 1:
        pictures.append(solid(*size, WHITE))  # a second frame so the encoder writes an animation
    data = encode(pictures[0], "GIF", save_all=True, append_images=pictures[1:], duration=100)
    head, blocks = gif_blocks(data)
    by_colour = dict(zip(distinct, blocks, strict=False))
    return head + b"".join(by_colour[index] for index in colours) + b";"


def gif_repeated() -> bytes:
    """Eight frames, only three distinct pictures: 0 0 0 1 1 2 2 2."""
    return gif_sequence((0, 0, 0, 1, 1, 2, 2, 2))


# -- HEIF, AVIF, BMP -------------------------------------------------------------------------------


@functools.cache
def heic(width: int = 320, height: int = 240, colour: RGB = OPAQUE) -> bytes:
    return encode(solid(width, height, colour), "HEIF", quality=85)


@functools.cache
def avif(width: int = 320, height: int = 240, colour: RGB = OPAQUE) -> bytes:
    return encode(solid(width, height, colour), "AVIF", quality=85)


@functools.cache
def bmp(width: int = 320, height: int = 240, colour: RGB = OPAQUE) -> bytes:
    return encode(solid(width, height, colour), "BMP")


# -- TIFF ------------------------------------------------------------------------------------------


@functools.cache
def tiff(width: int = 320, height: int = 240, colour: RGB = OPAQUE, *, mode: str = "RGB") -> bytes:
    """A strip TIFF; ``mode`` "CMYK" or "I;16" (16-bit grey, every sample ``GREY16``)."""
    image = (
        Image.new("I;16", (width, height), GREY16)
        if mode == "I;16"
        else solid(width, height, colour, mode)
    )
    return encode(image, "TIFF")


def tiff_rgb() -> bytes:
    return tiff()


def tiff_cmyk() -> bytes:
    return tiff(mode="CMYK")


def tiff_grey16() -> bytes:
    return tiff(mode="I;16")


@functools.cache
def tiff_multipage(pages: int = 3, size: tuple[int, int] = (120, 100)) -> bytes:
    """Page i is ``frame_colour(i)``: only the first page is analysed."""
    pictures = _frames(pages, size)
    return encode(pictures[0], "TIFF", save_all=True, append_images=pictures[1:])


@functools.cache
def tiff_tiled(
    width: int = 192,
    height: int = 128,
    tile: tuple[int, int] = (64, 64),
    colour: RGB = OPAQUE,
    *,
    tile_data: bytes | None = None,
) -> bytes:
    """An uncompressed, tiled RGB TIFF (Pillow writes strips only, so built from bytes). The
    default size is whole tiles: any cut loses visible pixels (a tile's bytes outside the image
    are not needed, so a cut in them is no truncation).
    ``tile_data`` replaces every tile's bytes (a hostile file: a tile far larger than its data)."""
    tile_w, tile_h = tile
    across, down = -(-width // tile_w), -(-height // tile_h)
    picture = solid(tile_w, tile_h, colour).tobytes() if tile_data is None else tile_data
    tiles = [picture] * (across * down)
    entries: list[tuple[int, int, list[int]]] = [  # tag, type (3 SHORT, 4 LONG), values
        (256, 4, [width]),
        (257, 4, [height]),
        (258, 3, [8, 8, 8]),
        (259, 3, [1]),
        (262, 3, [2]),
        (277, 3, [3]),
        (284, 3, [1]),
        (322, 4, [tile_w]),
        (323, 4, [tile_h]),
        (324, 4, [0] * len(tiles)),  # offsets, filled in below
        (325, 4, [len(data) for data in tiles]),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    extra_at = 8 + ifd_size
    extra = b""
    offsets_field = -1
    packed_entries = []
    for tag, kind, values in entries:
        item = "<H" if kind == 3 else "<I"
        payload = b"".join(struct.pack(item, value) for value in values)
        if len(payload) <= 4:
            packed_entries.append(
                struct.pack("<HHI", tag, kind, len(values)) + payload.ljust(4, b"\0")
            )
            continue
        if tag == 324:
            offsets_field = len(extra)
        packed_entries.append(struct.pack("<HHII", tag, kind, len(values), extra_at + len(extra)))
        extra += payload
    pixels_at = extra_at + len(extra)
    tile_offsets = []
    position = pixels_at
    for data in tiles:
        tile_offsets.append(position)
        position += len(data)
    offsets = b"".join(struct.pack("<I", offset) for offset in tile_offsets)
    if offsets_field >= 0:
        extra = extra[:offsets_field] + offsets + extra[offsets_field + len(offsets) :]
    else:  # one tile: its offset is inline in the entry
        index = next(i for i, (tag, _, _) in enumerate(entries) if tag == 324)
        packed_entries[index] = struct.pack("<HHII", 324, 4, 1, tile_offsets[0])
    ifd = struct.pack("<H", len(entries)) + b"".join(packed_entries) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + extra + b"".join(tiles)


# -- sizes -----------------------------------------------------------------------------------------


def tiny(fmt: str = "PNG", side: int = 40) -> bytes:
    """A ``side`` x ``side`` image (Rekognition wants at least 80 px a side)."""
    return encode(solid(side, side), fmt)


@functools.cache
def wide(width: int = 12_000, height: int = 300, fmt: str = "JPEG") -> bytes:
    """Very wide (Rekognition takes at most 10,000 px a side): left half red, right half blue."""
    image = solid(width, height, FRAME_COLOURS[0])
    image.paste(FRAME_COLOURS[2], (width // 2, 0, width, height))
    return encode(image, fmt)


@functools.cache
def noise_png(width: int = 1400, height: int = 1400) -> bytes:
    """Incompressible noise: over 5 MiB as a PNG at the default size (5.6 MiB)."""
    return encode(noise(width, height), "PNG", compress_level=1)


@functools.cache
def noise_jpeg(width: int = 2400, height: int = 1800, quality: int = 97) -> bytes:
    """Noise at high quality: a JPEG over 5 MiB within Rekognition's sides (re-encode needed)."""
    return encode(noise(width, height), "JPEG", quality=quality)


def truncated(data: bytes, fraction: float = 0.5) -> bytes:
    """The first ``fraction`` of a file."""
    return cut(data, fraction)


# -- bombs: headers that promise far more pixels (or memory) than the bytes hold ------------------


def gif_canvas_bomb(offset: int = 60_000) -> bytes:
    """A 120x100 still GIF whose one frame sits at (``offset``, ``offset``): Pillow grows the
    canvas to cover it, so the screen descriptor's size says nothing about the allocation."""
    head, blocks = gif_blocks(gif_still())
    frame = bytearray(blocks[0])
    struct.pack_into("<HH", frame, _image_descriptor(frame) + 1, offset, offset)
    return head + bytes(frame) + b";"


def gif_spread_canvas(
    frames: int = 6, canvas: tuple[int, int] = (2000, 2000), size: tuple[int, int] = (120, 100)
) -> bytes:
    """An animation of small frames placed along the diagonal of a ``canvas`` the screen
    descriptor does not declare (the last frame ends in its corner): decoded, every frame is
    a full canvas, so this is the costliest GIF of a given pixel count."""
    head, blocks = gif_blocks(gif_animated(frames, size))
    placed = []
    for index, block in enumerate(blocks):
        frame = bytearray(block)
        image_at = _image_descriptor(frame)
        share = index / max(1, frames - 1)
        left = round((canvas[0] - size[0]) * share)
        top = round((canvas[1] - size[1]) * share)
        struct.pack_into("<HH", frame, image_at + 1, left, top)
        placed.append(bytes(frame))
    return head + b"".join(placed) + b";"


def _image_descriptor(frame: bytes | bytearray) -> int:
    """The offset of the image descriptor in one frame's blocks (after its extensions)."""
    position = 0
    while frame[position] == 0x21:
        position = _skip_sub_blocks(bytes(frame), position + 2)
    assert frame[position] == 0x2C
    return position


def heif_size_bomb(data: bytes | None = None, side: int = 50_000) -> bytes:
    """A HEIC (or, given ``data``, any HEIF/AVIF file) whose every ``ispe`` property claims
    ``side`` x ``side``: the decoder would allocate what the boxes say."""
    patched = bytearray(heic() if data is None else data)
    position = patched.find(b"ispe")
    assert position > 0, "no ispe box"
    while position > 0:
        struct.pack_into(">II", patched, position + 8, side, side)  # after version and flags
        position = patched.find(b"ispe", position + 4)
    return bytes(patched)


def tiff_tile_bomb(tile: int = 1 << 16) -> bytes:
    """A 256x256 TIFF with one ``tile`` x ``tile`` tile of 48 bytes: the decoder allocates the
    tile, not the image."""
    return tiff_tiled(256, 256, (tile, tile), tile_data=bytes(48))


def jpeg_coefficient_bomb(width: int = 10_000, height: int = 10_000) -> bytes:
    """A progressive 4:4:4 JPEG whose frame header says ``width`` x ``height``, with the scans
    of a 16x16 image: libjpeg holds 6 bytes of DCT coefficients per pixel before the first row
    comes out, whatever the scans hold."""
    data = bytearray(encode(solid(16, 16), "JPEG", progressive=True, quality=90, subsampling=0))
    sof = data.index(b"\xff\xc2")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


# -- one sample of each format and case ------------------------------------------------------------

SAMPLES: Final[Mapping[str, tuple[str, Callable[[], bytes]]]] = {
    # name: (source format as sniffed, generator)
    "jpeg-baseline": ("jpeg", jpeg_baseline),
    "jpeg-progressive": ("jpeg", jpeg_progressive),
    "jpeg-cmyk": ("jpeg", jpeg_cmyk),
    "jpeg-grey": ("jpeg", jpeg_grey),
    "jpeg-exif-6": ("jpeg", functools.partial(jpeg_oriented, 6)),
    "png-rgb": ("png", png_rgb),
    "png-rgba": ("png", png_rgba),
    "png-grey16": ("png", png_grey16),
    "png-rgb16": ("png", png_rgb16),
    "png-palette-trns": ("png", png_palette_transparent),
    "png-grey-alpha": ("png", png_grey_alpha),
    "apng": ("png", apng),
    "webp-lossy": ("webp", webp_lossy),
    "webp-lossless-alpha": ("webp", webp_lossless_alpha),
    "webp-animated": ("webp", webp_animated),
    "gif-still": ("gif", gif_still),
    "gif-animated": ("gif", gif_animated),
    "gif-repeated": ("gif", gif_repeated),
    "gif-transparent": ("gif", gif_transparent),
    "heic": ("heif", heic),
    "avif": ("avif", avif),
    "bmp": ("bmp", bmp),
    "tiff-rgb": ("tiff", tiff_rgb),
    "tiff-cmyk": ("tiff", tiff_cmyk),
    "tiff-grey16": ("tiff", tiff_grey16),
    "tiff-tiled": ("tiff", tiff_tiled),
    "tiff-multipage": ("tiff", tiff_multipage),
}
"""Every format and variant, small: decode them all, mutate them all."""

BOMBS: Final[Mapping[str, Callable[[], bytes]]] = {
    "png-pixel-flood": pixel_flood_png,
    "png-zlib-bomb": zlib_bomb_png,
    "gif-canvas": gif_canvas_bomb,
    "tiff-tile": tiff_tile_bomb,
    "jpeg-coefficients": jpeg_coefficient_bomb,
    "heif-size": heif_size_bomb,
}
"""Hostile files that must be refused before decoding. The GIF canvas and the TIFF tile are
over the default 100 MP bound; the PNGs (10,000 x 10,000) and the JPEG declare exactly 100 MP,
so tests refuse them with a smaller ``DecodeLimits.max_pixels`` (the JPEG's coefficients, 6
bytes a pixel, are over any bound at or below its size)."""
