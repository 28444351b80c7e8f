"""``GET /healthz`` (``serve --health-listen``): what a probe sees while the model loads, while the router waits for
a valid config, while it serves, and when its event loop is stuck; ``GET /metrics``: the same state for Prometheus."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from devstack.stack import free_port
from extproc.health_http import Health, RouterState, start_health_server


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in its own thread, as the router's main loop runs beside the probe thread."""
    running = asyncio.new_event_loop()
    thread = threading.Thread(target=running.run_forever, daemon=True)
    thread.start()
    yield running
    running.call_soon_threadsafe(running.stop)
    thread.join(timeout=5)
    running.close()


def test_healthz_follows_the_router_state_and_its_event_loop(loop: asyncio.AbstractEventLoop) -> None:
    health = Health()
    listen = f"127.0.0.1:{free_port()}"
    stop = start_health_server(listen, health)
    try:
        url = f"http://{listen}/healthz"
        assert (httpx.get(url).status_code, httpx.get(url).text) == (503, "loading\n"), "hold the pod's Envoy back"
        health.state = RouterState.WAITING  # a restart would not fix the config; the pod's Envoy must not wait
        assert (httpx.get(url).status_code, httpx.get(url).text) == (200, "waiting for a valid config\n")
        health.serving(loop)
        assert (httpx.get(url).status_code, httpx.get(url).text) == (200, "serving\n")
        assert httpx.head(url).status_code == 200
        assert httpx.post(url).status_code == 405
        assert httpx.get(f"http://{listen}/ready").status_code == 404, "nothing else on the probe port"
        loop.call_soon_threadsafe(time.sleep, 3)  # the loop is stuck: no stream would be answered either
        time.sleep(0.1)
        stuck = httpx.get(url, timeout=10)
        assert (stuck.status_code, stuck.text) == (503, "event loop not answering\n")
        time.sleep(1)
        assert httpx.get(url, timeout=10).status_code == 200, "and serving again once the loop runs"
    finally:
        stop()


def test_metrics_say_the_state_to_prometheus() -> None:
    """A router waiting for a valid config has no metrics port (it opens with the config): the probe port's
    ``model_router_state`` is what ``ModelRouterWaitingForConfig`` (k8s/monitoring) alerts on."""
    health = Health()
    listen = f"127.0.0.1:{free_port()}"
    stop = start_health_server(listen, health)
    try:
        seen = {}
        for state in (RouterState.LOADING, RouterState.WAITING):
            health.state = state
            reply = httpx.get(f"http://{listen}/metrics")
            assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
            seen[state] = [line for line in reply.text.splitlines() if not line.startswith("#")]
        assert seen[RouterState.WAITING] == [
            'model_router_state{state="loading"} 0',
            'model_router_state{state="waiting"} 1',
            'model_router_state{state="serving"} 0',
        ]
        assert seen[RouterState.LOADING][0] == 'model_router_state{state="loading"} 1'
    finally:
        stop()
