"""``constraints.txt`` pins what the tests run with, and what the image installs (devstack/lock.py says why).

The venv ``make`` builds installs with ``-c constraints.txt``, so on any machine its packages equal the lock; a
dependency added to ``pyproject.toml`` without ``make lock`` (unpinned, so whatever is newest), or a lock edited by
hand, fails here.
"""

from __future__ import annotations

import pytest

from devstack.lock import HEADER, ROOT, closure, format_lock, project_requirements, read_lock

LOCK = (ROOT / "constraints.txt").read_text()


def test_the_lock_is_exactly_the_dev_venv() -> None:
    venv = closure(project_requirements(ROOT / "pyproject.toml", ["dev"]))
    locked = read_lock(LOCK)
    assert {n: v for n, v in venv.items() if locked.get(n) != v} == {}, "run `make lock`, then `make test`"
    assert set(locked) == set(venv), "pins of packages nothing requires: run `make lock`"
    assert format_lock(venv) == LOCK


def test_every_runtime_dependency_of_the_image_is_pinned() -> None:
    runtime = closure(project_requirements(ROOT / "pyproject.toml", []))
    assert {"grpcio", "onnxruntime", "numpy", "protobuf", "xds-protos"} <= set(runtime)
    assert {n: v for n, v in runtime.items() if read_lock(LOCK).get(n) != v} == {}
    assert "pytest" not in runtime  # the image gets no dev extras


@pytest.mark.parametrize(
    ("text", "pins"),
    [
        (HEADER + "Foo_Bar==1.2\n\nbaz==3  # why\n", {"foo-bar": "1.2", "baz": "3"}),
        ("", {}),
    ],
)
def test_read_lock(text: str, pins: dict[str, str]) -> None:
    assert read_lock(text) == pins


@pytest.mark.parametrize("line", ["foo>=1", "foo", "foo=="])
def test_read_lock_refuses_what_is_not_an_exact_pin(line: str) -> None:
    with pytest.raises(ValueError, match="not an exact pin"):
        read_lock(line + "\n")
