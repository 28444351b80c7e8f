"""``GET /healthz`` on its own HTTP port, for probes that cannot reach a loopback-only gRPC port.

A sidecar's gRPC port serves ext_proc, the Decide API and reflection; the kubelet's gRPC probes connect to the pod
IP, so probing it there meant listening on every interface, open to the whole cluster. With
``serve --health-listen``, gRPC stays on loopback (only the pod's Envoy calls it) and the probes use this port,
which reveals nothing but the router's state.

The port opens before the config is read, so it can also say "waiting for a valid config"
(``serve --wait-for-config``): a sidecar whose config is missing or invalid then stays up without routing, its
probes pass, and the pod's Envoy starts and fails open, where an exiting router would hold it back. ``GET /metrics``
says the same to Prometheus (``model_router_state``): the router's own metrics port opens only with a valid config,
so a pod that never got one would show nothing an alert could select.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from extproc.wsgi_server import PER_PEER, serve_wsgi

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication

__all__ = ["LOOP_TIMEOUT_SECONDS", "Health", "RouterState", "health_app", "start_health_server", "state_metrics"]

LOOP_TIMEOUT_SECONDS = 2.0
"""How long the event loop may take to run a no-op before the router counts as wedged (probes allow several)."""


class RouterState(enum.Enum):
    LOADING = "loading"
    WAITING = "waiting for a valid config"
    SERVING = "serving"


class Health:
    """The router's state as the probe port reports it; set by the process, read by the probe thread."""

    def __init__(self) -> None:
        self.state = RouterState.LOADING
        self.loop: asyncio.AbstractEventLoop | None = None

    def serving(self, loop: asyncio.AbstractEventLoop) -> None:
        """gRPC serves; from now on the probe also checks that ``loop`` (which answers every stream) runs."""
        self.loop = loop
        self.state = RouterState.SERVING


def _loop_answers(loop: asyncio.AbstractEventLoop, timeout: float) -> bool:
    try:
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(timeout)
    except (concurrent.futures.TimeoutError, RuntimeError):  # RuntimeError: the loop is closed
        return False
    return True


STATE_LABELS = {RouterState.LOADING: "loading", RouterState.WAITING: "waiting", RouterState.SERVING: "serving"}


def state_metrics(state: RouterState) -> bytes:
    """``model_router_state{state}`` in Prometheus' text format: 1 for ``state``, 0 for the others."""
    lines = [
        "# HELP model_router_state The router's state, 1 for the current one: loading (its model), waiting (for a"
        " valid config: it routes nothing, its gateway fails open), serving.",
        "# TYPE model_router_state gauge",
        *(f'model_router_state{{state="{label}"}} {int(s is state)}' for s, label in STATE_LABELS.items()),
    ]
    return ("\n".join(lines) + "\n").encode()


def health_app(health: Health, timeout: float = LOOP_TIMEOUT_SECONDS) -> WSGIApplication:
    """200 while serving and the event loop runs a no-op within ``timeout`` seconds, and while waiting for a valid
    config (a restart would not fix it, and the pod's Envoy must not wait for it); 503 while the model loads or when
    the loop is stuck. A thread of its own answers, so a wedged loop shows as a failed probe."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO")
        if path not in ("/healthz", "/metrics"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Content-Type", "text/plain"), ("Allow", "GET, HEAD")])
            return [b"method not allowed\n"]
        if path == "/metrics":
            start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")])
            return [state_metrics(health.state)]
        state, loop = health.state, health.loop
        if state is RouterState.SERVING and loop is not None and not _loop_answers(loop, timeout):
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"event loop not answering\n"]
        ok = state is not RouterState.LOADING
        start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
        return [f"{state.value}\n".encode()]

    return app


def start_health_server(listen: str, health: Health) -> Callable[[], None]:
    """Serve :func:`health_app` on ``listen``; return a stop function (``ListenError`` if it cannot bind)."""
    return serve_wsgi(listen, health_app(health), "health-http", max_per_peer=PER_PEER)
