"""Dependencies point down: the console and the local stack never load the pipeline's runner
(nor, through it, the Rekognition backend), and the Kafka parts load neither the runner nor the
pipeline. Each check imports in a fresh interpreter, so modules another test already loaded
cannot hide an import."""

from __future__ import annotations

import subprocess
import sys

import pytest

#: (module imported, modules it must not load)
LAYERS = [
    ("service.console.app", ("service.runner", "service.backends.rekognition")),
    ("service.local_stack", ("service.runner", "service.backends.rekognition")),
    *(
        (f"service.kafka.{module}", ("service.runner", "service.pipeline"))
        for module in ("admin", "consumer", "offsets", "publisher", "transactions", "embedded")
    ),
]


@pytest.mark.parametrize(("module", "forbidden"), LAYERS, ids=[m for m, _ in LAYERS])
def test_module_does_not_load_upper_layers(module: str, forbidden: tuple[str, ...]) -> None:
    check = (
        f"import importlib, sys; importlib.import_module({module!r}); "
        f"loaded = [m for m in {forbidden!r} if m in sys.modules]; "
        "print(','.join(loaded)); sys.exit(1 if loaded else 0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, f"{module} loads {done.stdout.strip()}{done.stderr[-2000:]}"
