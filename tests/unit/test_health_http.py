"""``GET /healthz`` (``serve --health-listen``): serving only once gRPC serves and while the event loop answers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from devstack.stack import free_port
from extproc.health_http import start_health_server


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


def test_healthz_follows_serving_and_the_event_loop(loop: asyncio.AbstractEventLoop) -> None:
    serving = threading.Event()
    listen = f"127.0.0.1:{free_port()}"
    stop = start_health_server(listen, serving, loop)
    try:
        url = f"http://{listen}/healthz"
        assert httpx.get(url).status_code == 503, "not serving before gRPC is up (the model is still loading)"
        serving.set()
        assert httpx.get(url).status_code == 200
        assert httpx.head(url).status_code == 200
        loop.call_soon_threadsafe(time.sleep, 3)  # the loop is stuck: no stream would be answered either
        time.sleep(0.1)
        stuck = httpx.get(url, timeout=10)
        assert (stuck.status_code, stuck.text) == (503, "not serving\n")
        time.sleep(1)
        assert httpx.get(url).status_code == 200, "and serving again once the loop runs"
    finally:
        stop()
