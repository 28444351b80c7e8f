"""Regenerates the Python code of ``proto/`` into ``extproc/api/`` (``python -m extproc.api.generate``).

grpcio-tools writes the messages and service stubs, mypy-protobuf the typed ``.pyi`` stubs. protoc writes
imports of other generated files as ``from model_router.v1 import ...``; they are rewritten to this package's
import path, which is the only change made to protoc's output. ``tests/unit/test_proto_drift.py`` regenerates into
a temporary directory and fails if the committed files differ.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

__all__ = ["PROTO_ROOT", "generate", "main"]

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "proto"
OUT = Path(__file__).resolve().parent
_PACKAGE_PREFIX = "extproc.api."
_GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _plugin(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found: install mypy-protobuf")
    return found


def generate(out: Path) -> list[Path]:
    """Generate every ``proto/**/*.proto`` into ``out`` (package directories with ``__init__.py``); return the files."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    packages = {p.split(".")[0] for p in (Path(x).parts[0] for x in protos)}
    files: list[Path] = []
    for path in sorted(out.rglob("*")):
        if path.is_file() and path.name.endswith(_GENERATED_SUFFIXES):
            text = path.read_text()
            for package in packages:
                text = text.replace(f"from {package}.", f"from {_PACKAGE_PREFIX}{package}.")
                text = text.replace(f"import {package}.", f"import {_PACKAGE_PREFIX}{package}.")
            path.write_text(text)
            files.append(path)
    for directory in sorted({f.parent for f in files}):
        while directory != out:
            init = directory / "__init__.py"
            if not init.exists():
                init.write_text('"""Generated from proto/ by extproc.api.generate; do not edit."""\n')
            directory = directory.parent
    return files


def main() -> int:
    """Regenerate the committed code."""
    for path in generate(OUT):
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
