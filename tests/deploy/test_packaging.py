"""pyproject.toml keeps `pip install .` working: setuptools deprecated the TOML-table licence and
stops building such projects from 2027-02-18, so the licence is an SPDX expression (PEP 639)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_licence_is_an_spdx_expression_with_its_file_shipped() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = pyproject["project"]
    assert project["license"] == "Apache-2.0"
    files = project["license-files"]
    assert files
    for name in files:
        assert (REPO / name).is_file(), name
    assert "Apache License" in (REPO / "LICENSE").read_text()
    (setuptools,) = [r for r in pyproject["build-system"]["requires"] if "setuptools" in r]
    match = re.fullmatch(r"setuptools>=(\d+)", setuptools)
    assert match is not None and int(match[1]) >= 77, setuptools  # the first with PEP 639
