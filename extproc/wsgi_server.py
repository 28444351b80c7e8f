"""The router's two small HTTP servers (``/metrics``, ``POST /v1/feedback``): threaded WSGI, bounded.

Both ports can be reachable by clients (the feedback route goes through the gateway; the metrics port is often open
to every scraper), so a thread per connection must not be unbounded: idle or slow connections time out after
``timeout`` seconds, and past ``max_connections`` open connections new ones are closed at once instead of getting a
thread. The threads live in the ext_proc process, whose memory and pids bound its routing.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from extproc.config import parse_listen

_log = logging.getLogger("model_router.http")

if TYPE_CHECKING:
    from wsgiref.types import WSGIApplication

__all__ = ["BoundedConnections", "ListenError", "serve_wsgi"]

MAX_CONNECTIONS = 32
PER_PEER = 4
"""Connections one client address may hold on a port open to other pods (``/metrics``, the probe port), of the
``MAX_CONNECTIONS``: one pod holding idle connections cannot take every slot and blind Prometheus or fail the
kubelet's probes."""
TIMEOUT_SECONDS = 10.0
CONNECTION_SECONDS = 10.0
"""The longest a connection may stay open (one request each: wsgiref answers one and closes)."""


class ListenError(OSError):
    """A listen address cannot be bound; the message says which and why: ``cannot listen on ADDRESS: reason``."""

    def __init__(self, address: str, cause: Exception | str) -> None:
        reason = cause if isinstance(cause, str) else getattr(cause, "strerror", None) or str(cause)
        super().__init__(f"cannot listen on {address}: {reason[:1].lower()}{reason[1:]}")


class _QuietHandler(WSGIRequestHandler):
    """No per-request lines on stderr (the router's log is JSON; Envoy has the access log); reads time out."""

    timeout = TIMEOUT_SECONDS
    server_version = "model-router"
    sys_version = ""  # no Python version in the Server header

    def log_message(self, format: str, *args: Any) -> None:
        """Discard."""


class BoundedConnections(ThreadingMixIn):
    """A thread per connection, up to ``max_connections``: past it, new connections are closed at once, never queued
    on a thread. A connection may stay ``connection_seconds`` at most, counted from its start or its last answer
    (:meth:`answered`): a client trickling its request line or headers a byte at a time, which the handler's
    per-read timeout never ends, would hold its slot forever. Also the injection webhook's server."""

    daemon_threads = True
    request_queue_size = 128
    """The listen backlog (socketserver's default is 5): every feedback POST through Envoy is a new connection, and
    a burst of 8 overflowed 5, so Envoy's short connect timeout answered 503 before the SYN was retried."""

    def bound(self, max_connections: int, connection_seconds: float, max_per_peer: int | None = None) -> None:
        """Set the bounds (before the server serves). ``max_per_peer``: connections one client address may hold, so
        that one idle client cannot take every slot from the others (e.g. Prometheus from ``/metrics``)."""
        self.connection_slots = threading.BoundedSemaphore(max_connections)
        self.connection_seconds = connection_seconds
        self.max_per_peer = max_per_peer
        self._per_peer: dict[str, int] = {}
        self._deadlines: dict[Any, float] = {}
        self._deadlines_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        peer = str(client_address[0])
        with self._deadlines_lock:
            held = self._per_peer.get(peer, 0)
            over_peer = self.max_per_peer is not None and held >= self.max_per_peer
            if not over_peer:
                self._per_peer[peer] = held + 1
        if over_peer or not self.connection_slots.acquire(blocking=False):
            if not over_peer:
                self._release_peer(peer)
            self.refused(client_address)
            self.shutdown_request(request)  # type: ignore[attr-defined]  # socketserver.BaseServer's
            return
        with self._deadlines_lock:
            self._deadlines[request] = time.monotonic() + self.connection_seconds
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._done(request, client_address)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done(request, client_address)

    def _done(self, request: Any, client_address: Any) -> None:
        with self._deadlines_lock:
            self._deadlines.pop(request, None)
        self._release_peer(str(client_address[0]))
        self.connection_slots.release()

    def _release_peer(self, peer: str) -> None:
        with self._deadlines_lock:
            left = self._per_peer.get(peer, 1) - 1
            if left > 0:
                self._per_peer[peer] = left
            else:
                self._per_peer.pop(peer, None)

    def service_actions(self) -> None:
        """Run by ``serve_forever`` at every poll: end the connections past their time (their handler's read fails,
        and its thread gives the slot back)."""
        super().service_actions()  # type: ignore[misc]  # socketserver.BaseServer's (a no-op today)
        now = time.monotonic()
        with self._deadlines_lock:
            late = [request for request, deadline in self._deadlines.items() if deadline < now]
        for request in late:
            with contextlib.suppress(OSError):
                request.shutdown(socket.SHUT_RDWR)

    def refused(self, client_address: Any) -> None:
        """Called for each connection closed over the bound."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line (JSON, like every other), never socketserver's traceback on stderr: a client that resets
        its connection mid-request is its own business (debug); anything else is the server's (warning)."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            _log.debug("connection from %s ended early: %s", client_address[0], exc)
        else:
            _log.warning("connection from %s failed: %r", client_address[0], exc)


class _BoundedServer(BoundedConnections, WSGIServer):
    pass


class _BoundedServer6(_BoundedServer):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        if self.server_address[0] == "::":  # every address of both families (IPv4 as mapped addresses)
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def _make(host: str, port: int, app: WSGIApplication, handler: type[WSGIRequestHandler]) -> _BoundedServer:
    """``::`` is every address of both families (a probe port must answer on the pod's IP, which is IPv6 on an
    IPv6 cluster), and on a kernel without IPv6 every IPv4 address, so one setting serves every kind of cluster."""
    if ":" not in host:
        return make_server(host, port, app, _BoundedServer, handler)
    try:
        return make_server(host, port, app, _BoundedServer6, handler)
    except OSError as exc:
        if host != "::" or exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
            raise
        return make_server("0.0.0.0", port, app, _BoundedServer, handler)


def serve_wsgi(
    listen: str,
    app: WSGIApplication,
    name: str,
    poll_interval: float = 0.5,
    max_connections: int = MAX_CONNECTIONS,
    timeout: float = TIMEOUT_SECONDS,
    connection_seconds: float = CONNECTION_SECONDS,
    max_per_peer: int | None = None,
) -> Callable[[], None]:
    """Serve ``app`` on ``listen`` (``host:port``, ``[v6]:port``; ``[::]:port``: see :func:`_make`) in a thread
    named ``name``; return a stop function (which waits up to ``poll_interval`` seconds for the serving loop to
    notice). :class:`ListenError` if it cannot listen there."""
    handler = type("_Handler", (_QuietHandler,), {"timeout": timeout})
    try:
        host, port = parse_listen(listen)  # config validation refuses a malformed address first
        server = _make(host, port, app, handler)
    except (OSError, ValueError) as exc:
        raise ListenError(listen, exc) from None
    server.bound(max_connections, connection_seconds, max_per_peer)
    thread = threading.Thread(target=server.serve_forever, args=(poll_interval,), name=name, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)

    return stop
