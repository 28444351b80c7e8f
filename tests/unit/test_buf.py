"""``buf lint`` (STANDARD) and ``buf breaking`` against the image of the released API, with the venv's Buf CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUF = Path(sys.executable).parent / "buf"
RELEASED = "proto/released.binpb"


def _buf(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    assert BUF.exists(), f"{BUF} missing: install the dev extra (buf-bin)"
    env = {"PATH": str(BUF.parent), "HOME": str(tmp), "BUF_CACHE_DIR": str(tmp / "cache")}
    return subprocess.run([str(BUF), *args], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("lint",), id="lint"),
        pytest.param(("breaking", "--against", RELEASED), id="breaking-vs-released"),
    ],
)
def test_buf(args: tuple[str, ...], tmp_path: Path) -> None:
    result = _buf(*args, tmp=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_breaking_check_catches_a_break(tmp_path: Path) -> None:
    """The baseline is real: renumbering a released field fails the check."""
    work = tmp_path / "work"
    (work / "proto").mkdir(parents=True)
    (work / "buf.yaml").write_text((ROOT / "buf.yaml").read_text())
    for proto in (ROOT / "proto").rglob("*.proto"):
        target = work / proto.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(proto.read_text().replace("string decision_id = 1;", "string decision_id = 99;"))
    result = subprocess.run(
        [str(BUF), "breaking", str(work), "--against", str(ROOT / RELEASED)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": str(BUF.parent), "HOME": str(tmp_path), "BUF_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert result.returncode != 0 and "decision_id" in result.stdout + result.stderr, result.stdout + result.stderr
