"""The router's two small HTTP servers (``/metrics``, ``POST /v1/feedback``): threaded WSGI, bounded.

Both ports can be reachable by clients (the feedback route goes through the gateway; the metrics port is often open
to every scraper), so a thread per connection must not be unbounded: idle or slow connections time out after
``timeout`` seconds, and past ``max_connections`` open connections new ones are closed at once instead of getting a
thread. The threads live in the ext_proc process, whose memory and pids bound its routing.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from extproc.config import parse_listen

if TYPE_CHECKING:
    from wsgiref.types import WSGIApplication

__all__ = ["ListenError", "serve_wsgi"]

MAX_CONNECTIONS = 32
TIMEOUT_SECONDS = 10.0


class ListenError(OSError):
    """A listen address cannot be bound; the message says which and why: ``cannot listen on ADDRESS: reason``."""

    def __init__(self, address: str, cause: Exception | str) -> None:
        reason = cause if isinstance(cause, str) else getattr(cause, "strerror", None) or str(cause)
        super().__init__(f"cannot listen on {address}: {reason[:1].lower()}{reason[1:]}")


class _QuietHandler(WSGIRequestHandler):
    """No per-request lines on stderr (the router's log is JSON; Envoy has the access log); reads time out."""

    timeout = TIMEOUT_SECONDS

    def log_message(self, format: str, *args: Any) -> None:
        """Discard."""


class _BoundedServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    _slots: threading.BoundedSemaphore  # set by serve_wsgi before the server serves

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # over the bound: closed, never queued on a thread
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _BoundedServer6(_BoundedServer):
    address_family = socket.AF_INET6


def serve_wsgi(
    listen: str,
    app: WSGIApplication,
    name: str,
    poll_interval: float = 0.5,
    max_connections: int = MAX_CONNECTIONS,
    timeout: float = TIMEOUT_SECONDS,
) -> Callable[[], None]:
    """Serve ``app`` on ``listen`` (``host:port``, ``[v6]:port``) in a thread named ``name``; return a stop function
    (which waits up to ``poll_interval`` seconds for the serving loop to notice). :class:`ListenError` if it cannot
    listen there."""
    handler = type("_Handler", (_QuietHandler,), {"timeout": timeout})
    try:
        host, port = parse_listen(listen)  # config validation refuses a malformed address first
        server_class = _BoundedServer6 if ":" in host else _BoundedServer
        server = make_server(host, port, app, server_class, handler)
    except (OSError, ValueError) as exc:
        raise ListenError(listen, exc) from None
    server._slots = threading.BoundedSemaphore(max_connections)
    thread = threading.Thread(target=server.serve_forever, args=(poll_interval,), name=name, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)

    return stop
