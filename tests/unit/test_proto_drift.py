"""Committed code in extproc/api/ is exactly what proto/ generates (``python -m extproc.api.generate``)."""

from __future__ import annotations

from pathlib import Path

from extproc.api import generate


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    assert generate.generate(tmp_path), "nothing was generated"
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    committed_root = generate.OUT
    committed = {
        p.relative_to(committed_root): p.read_bytes()
        for p in committed_root.rglob("*")
        if p.is_file() and p.parent != committed_root and "__pycache__" not in p.parts
    }
    stale = sorted(str(k) for k in fresh.keys() | committed.keys() if fresh.get(k) != committed.get(k))
    assert not stale, f"generated code drifted from proto/ in {stale}: run .venv/bin/python -m extproc.api.generate"
