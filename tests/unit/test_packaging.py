"""Packaging: pyproject.toml's licence metadata (an SPDX expression, PEP 639, and a setuptools that reads it) and
what the wheel holds.

The TOML-table form (``license = {text = ...}``) makes setuptools print a deprecation banner on every install and is
refused from 2027-02-18; setuptools reads the string form from 77.0 on (77.0.3: the first release of that line still
on the index), and refuses a ``License ::`` classifier beside it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from classifier.onnx_model import MODEL_FILES

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())


def test_license_is_an_spdx_expression() -> None:
    license_ = PYPROJECT["project"]["license"]
    assert isinstance(license_, str) and re.fullmatch(r"[A-Za-z0-9.+-]+( (AND|OR|WITH) [A-Za-z0-9.+-]+)*", license_)
    assert not [c for c in PYPROJECT["project"].get("classifiers", []) if c.startswith("License ::")]


def test_build_requires_a_setuptools_that_reads_it() -> None:
    (setuptools,) = [r for r in PYPROJECT["build-system"]["requires"] if re.match(r"setuptools\b", r)]
    match = re.fullmatch(r"setuptools>=(\d+)\.(\d+)\.(\d+)", setuptools.replace(" ", ""))
    assert match, setuptools
    assert tuple(int(part) for part in match.groups()) >= (77, 0, 3)


def test_the_wheel_ships_the_model_and_builds_without_warnings(tmp_path: Path) -> None:
    """Built offline from a copy of the sources with this venv's setuptools: the default model (data files in a
    directory without ``__init__.py``) and the typing stubs are inside, and setuptools warns about nothing (a data
    directory missing from ``packages`` is "would be ignored" in its warning, i.e. dropped by a future release)."""
    repo = Path(__file__).resolve().parents[2]
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("extproc", "classifier"):
        shutil.copytree(repo / package, src / package, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, src / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", "dist", "."],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert "warning" not in (build.stdout + build.stderr).lower(), build.stdout + build.stderr
    (wheel,) = (src / "dist").glob("model_router-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"classifier/models/default/{f}" for f in MODEL_FILES} <= names
    assert "extproc/api/model_router/v1/model_router_pb2.pyi" in names
    shipped = {str(p.relative_to(repo)) for p in repo.glob("extproc/**/*.py")} | {
        str(p.relative_to(repo)) for p in repo.glob("classifier/**/*.py")
    }
    assert shipped <= names, sorted(shipped - names)
