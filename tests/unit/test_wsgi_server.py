"""The router's HTTP servers (metrics, feedback) bound their threads: idle connections time out, and connections
over the bound are closed at once instead of each getting a thread."""

from __future__ import annotations

import contextlib
import errno
import socket
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIRequestHandler

import httpx
import pytest

from devstack.stack import free_port
from extproc.wsgi_server import _make, serve_wsgi

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment


def _ok(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("content-type", "text/plain")])
    return [b"ok"]


@pytest.fixture
def url() -> Iterator[str]:
    port = free_port()
    stop = serve_wsgi(f"127.0.0.1:{port}", _ok, "test-http", poll_interval=0.02, max_connections=2, timeout=0.5)
    yield f"http://127.0.0.1:{port}/"
    stop()


def _idle(url: str) -> socket.socket:
    """A connection that never sends a request (a slow or hostile client)."""
    port = int(url.rsplit(":", 1)[1].strip("/"))
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def test_connections_over_the_bound_are_closed_and_idle_ones_time_out(url: str) -> None:
    assert httpx.get(url, timeout=5).text == "ok"
    idle = [_idle(url), _idle(url)]
    time.sleep(0.1)  # both accepted and holding a slot
    third = _idle(url)
    assert third.recv(1) == b"", "over the bound: closed at once, not queued on a thread"
    with pytest.raises(httpx.TransportError):
        httpx.get(url, timeout=5)
    # The idle ones time out (0.5 s here, 10 s by default) and free their slots.
    for sock in idle:
        assert sock.recv(1) == b""
    assert httpx.get(url, timeout=5).text == "ok"
    for sock in [*idle, third]:
        sock.close()


def test_a_connection_trickling_its_request_is_ended_at_its_deadline() -> None:
    """A byte of request line every 0.2 s never trips the 5 s per-read timeout: without a deadline for the whole
    connection, 32 such clients held every slot (the probe port's too) for as long as they liked."""
    port = free_port()
    stop = serve_wsgi(
        f"127.0.0.1:{port}", _ok, "test-http", poll_interval=0.02, max_connections=1, timeout=5, connection_seconds=0.5
    )
    try:
        slow = socket.create_connection(("127.0.0.1", port), timeout=5)
        slow.settimeout(0.2)
        closed = False
        for byte in b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 100:  # at most 20 s of trickle
            try:
                slow.sendall(bytes([byte]))
                closed = slow.recv(1) == b""
            except TimeoutError:
                continue
            except OSError:
                closed = True
            if closed:
                break
        assert closed, "the server never ended the trickling connection"
        slow.close()
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text == "ok", "its slot is free again"
    finally:
        stop()


def test_a_burst_of_connections_waits_in_the_backlog_instead_of_being_dropped() -> None:
    """socketserver's backlog of 5 dropped the SYNs of a burst of 8 feedback POSTs through Envoy, whose short connect
    timeout then answered 503. Nothing accepts here, so every connect must complete from the backlog alone."""
    from wsgiref.simple_server import WSGIRequestHandler

    from extproc.wsgi_server import _BoundedServer

    server = _BoundedServer(("127.0.0.1", 0), WSGIRequestHandler)
    try:
        port = server.server_address[1]
        clients = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(64)]
        for c in clients:
            c.close()
    finally:
        server.server_close()


def test_a_connection_reset_mid_request_is_no_traceback_on_stderr(url: str, capfd: pytest.CaptureFixture[str]) -> None:
    """The router's stderr is one JSON object per line; socketserver printed a 26-line traceback per reset."""
    for _ in range(5):
        s = _idle(url)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()  # RST
    time.sleep(0.3)
    assert httpx.get(url).status_code == 200, "still serving"
    assert "Traceback" not in capfd.readouterr().err


def test_one_client_holding_idle_connections_leaves_slots_for_the_others() -> None:
    """A pod that opened every connection and sent nothing made 31 of 34 Prometheus scrapes fail (review 11 C)."""
    port = free_port()
    stop = serve_wsgi(f"127.0.0.1:{port}", _ok, "test-http", poll_interval=0.02, max_connections=4, max_per_peer=2)
    held = []
    try:
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(6)]  # idle, one address
        time.sleep(0.2)
        refused = 0
        for s in held:
            s.settimeout(0.5)
            with contextlib.suppress(TimeoutError):  # still open: one of the two this address may hold
                refused += s.recv(1) == b""  # closed by the server at once
        assert refused == 4
        other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"))
        assert other.get(f"http://127.0.0.1:{port}/").status_code == 200, "another address still gets a slot"
        other.close()
    finally:
        for s in held:
            s.close()
        stop()


def test_every_address_answers_on_ipv4_and_ipv6() -> None:
    """``[::]`` serves both families: a kubelet probes the pod's IP, IPv6 on an IPv6 cluster, where the injected
    router's ``0.0.0.0`` refused every probe (the pod never started)."""
    port = free_port()
    stop = serve_wsgi(f"[::]:{port}", _ok, "test-http", poll_interval=0.02)
    try:
        for host in ("127.0.0.1", "[::1]"):
            assert httpx.get(f"http://{host}:{port}/", timeout=5).text == "ok"
    finally:
        stop()
    # Linux defaults to dual-stack sockets (net.ipv6.bindv6only=0), but a host may not: the server says so itself.
    server = _make("::", free_port(), _ok, WSGIRequestHandler)
    try:
        assert server.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    finally:
        server.server_close()


def test_every_address_falls_back_to_ipv4_on_a_kernel_without_ipv6(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.socket

    def no_ipv6(family: int = socket.AF_INET, *args: object, **kwargs: object) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "socket", no_ipv6)
    port = free_port()
    stop = serve_wsgi(f"[::]:{port}", _ok, "test-http", poll_interval=0.02)
    monkeypatch.undo()
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text == "ok"
    finally:
        stop()
