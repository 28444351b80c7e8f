"""``GET /healthz`` on its own HTTP port, for probes that cannot reach a loopback-only gRPC port.

An injected sidecar's gRPC port serves ext_proc, the Decide API and reflection; the kubelet's gRPC probes connect to
the pod IP, so probing it there meant listening on every interface, open to the whole cluster. With
``serve --health-listen``, gRPC stays on loopback (only the pod's Envoy calls it) and the probes use this port,
which reveals nothing but "serving" or not.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from extproc.wsgi_server import serve_wsgi

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication

__all__ = ["LOOP_TIMEOUT_SECONDS", "health_app", "start_health_server"]

LOOP_TIMEOUT_SECONDS = 2.0
"""How long the event loop may take to run a no-op before the router counts as wedged (probes allow several)."""


def _loop_answers(loop: asyncio.AbstractEventLoop, timeout: float) -> bool:
    try:
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(timeout)
    except (concurrent.futures.TimeoutError, RuntimeError):  # RuntimeError: the loop is closed
        return False
    return True


def health_app(
    serving: threading.Event, loop: asyncio.AbstractEventLoop, timeout: float = LOOP_TIMEOUT_SECONDS
) -> WSGIApplication:
    """200 once gRPC serves (``serving`` is set) and the event loop, which answers every stream, runs a no-op within
    ``timeout`` seconds; 503 otherwise. A thread of its own answers, so a wedged loop shows as a failed probe."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/healthz":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Content-Type", "text/plain"), ("Allow", "GET, HEAD")])
            return [b"method not allowed\n"]
        ok = serving.is_set() and _loop_answers(loop, timeout)
        start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
        return [b"serving\n" if ok else b"not serving\n"]

    return app


def start_health_server(listen: str, serving: threading.Event, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """Serve :func:`health_app` on ``listen``; return a stop function (``ListenError`` if it cannot bind)."""
    return serve_wsgi(listen, health_app(serving, loop), "health-http")
