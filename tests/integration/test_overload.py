"""Envoy's memory protection (the ``overload_manager`` of ``envoy/envoy.yaml``), through the real Envoy.

Bodies are buffered whole, up to 4 MiB each, before the router sees them, so clients that send most of a large body
and then stall grow Envoy's heap by 4 MiB each. Here such uploads arrive one after another against a heap cap
scaled down to 48 MiB (the shipped 256 MiB would need ~60 of them; the thresholds are the shipped ones).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import yaml

from devstack.stack import ENVOY_DIR, Stack
from tests.integration.conftest import HEURISTIC, wait_until
from tests.integration.test_routing import EASY, JSON, chat_body

CAP_BYTES = 48 << 20
BODY_BYTES = 4 << 20
ATTACKERS = 24


def _small_heap(cfg: dict[str, Any]) -> None:
    monitors = cfg["overload_manager"]["resource_monitors"]
    heap = next(m for m in monitors if m["name"] == "envoy.resource_monitors.fixed_heap")
    heap["typed_config"]["max_heap_size_bytes"] = CAP_BYTES


@pytest.fixture(scope="module")
def small_heap_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(workdir=tmp_path_factory.mktemp("overload"), router_overrides=HEURISTIC, envoy_patch=_small_heap) as s:
        yield s


class _StalledUpload:
    """An HTTP/1.1 chat request that declares a 4 MiB body, sends all but its last 100 kB, and waits."""

    def __init__(self, port: int) -> None:
        self.sock: socket.socket | None = None
        self._port = port

    def start(self) -> None:
        try:
            self.sock = socket.create_connection(("127.0.0.1", self._port), timeout=5)
            head = "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            self.sock.sendall(f"{head}content-length: {BODY_BYTES}\r\n\r\n".encode())
            self.sock.sendall(b'{"model":"auto","messages":[{"role":"user","content":"')
            self.sock.sendall(b"a" * (BODY_BYTES - 100_000))
        except OSError:  # refused or reset by Envoy's load shedding: nothing of it is held
            pass

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def _heap_in_use(stack: Stack) -> int:
    """What Envoy's fixed_heap monitor counts: the heap minus its free and unmapped pages."""
    m = {k: int(v) for k, v in httpx.get(f"http://127.0.0.1:{stack.admin_port}/memory", timeout=5).json().items()}
    return m["heap_size"] - m["pageheap_free"] - m["pageheap_unmapped"]


def test_every_overload_action_and_load_shed_point_is_known_to_envoy(stack: Stack) -> None:
    """Envoy accepts a misspelt load-shed point name without a word (measured); each name must show in its stats."""
    config = yaml.safe_load((ENVOY_DIR / "envoy.yaml").read_text())["overload_manager"]
    stats = httpx.get(f"http://127.0.0.1:{stack.admin_port}/stats", params={"filter": "^overload"}, timeout=5).text
    for action in config["actions"]:
        assert f"overload.{action['name']}.active" in stats
    for point in config["loadshed_points"]:
        assert f"overload.{point['name']}.shed_load_count" in stats
    for monitor in config["resource_monitors"]:
        assert f"overload.{monitor['name']}." in stats


def test_stalled_uploads_past_the_heap_cap_are_shed_and_envoy_recovers(small_heap_stack: Stack) -> None:
    stack = small_heap_stack
    assert httpx.post(stack.base_url + "/v1/chat/completions", content=chat_body(EASY), headers=JSON).status_code == 200
    peak, sampling = [0], threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            with contextlib.suppress(httpx.HTTPError):
                peak[0] = max(peak[0], _heap_in_use(stack))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    uploads = [_StalledUpload(stack.envoy_port) for _ in range(ATTACKERS)]
    try:
        for upload in uploads:
            upload.start()
            time.sleep(0.1)  # one after another, as a trickle of clients arrives: each is checked against the cap
        during = _probe(stack)
    finally:
        sampling.set()
        sampler.join()
        for upload in uploads:
            upload.close()
    # Measured: with the overload_manager removed the heap peaked at 105 MiB and every upload was held; with it, at
    # the cap (48 MiB), the rest refused or answered 503.
    assert peak[0] < CAP_BYTES + 6 * BODY_BYTES, f"heap in use peaked at {peak[0] >> 20} MiB"
    assert during != 200, "a request was admitted while the heap was over the cap"
    shed = stack.envoy_stat("http.llm.downstream_rq_overload_close") + sum(
        stack.envoy_stat(f"overload.envoy.load_shed_points.{p}.shed_load_count")
        for p in ("http1_server_abort_dispatch", "tcp_listener_accept")
    )
    assert shed > 0
    assert wait_until(lambda: _probe(stack) == 200, timeout=15), "Envoy did not recover once the uploads ended"
    r = httpx.post(stack.base_url + "/v1/chat/completions", content=chat_body(EASY), headers=JSON, timeout=5)
    assert r.status_code == 200 and orjson.loads(r.content)["model"] == r.headers["x-model-router-model"]


def _probe(stack: Stack) -> int | None:
    """A small chat request's status; None when Envoy refused or reset the connection."""
    try:
        url = stack.base_url + "/v1/chat/completions"
        return httpx.post(url, content=chat_body(EASY), headers=JSON, timeout=5).status_code
    except httpx.TransportError:
        return None
