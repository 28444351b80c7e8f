"""The gateway Envoy's preStop drain (k8s/base/envoy-drain.sh), run with bash against the real Envoy.

Envoy runs k8s/base/envoy.yaml with ports moved to free ones, every upstream cluster pointed at a local server that
streams a slow SSE answer, and the ext_proc filter left out (no router here: the drain does not involve it); its
flags are the Deployment's, with a shorter --drain-time-s. The hook's command is the Deployment's preStop command
with this test's script path, admin port, settle time and maximum wait.
"""

from __future__ import annotations

import http.server
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from devstack.stack import ROOT, envoy_binary, free_port
from tests.integration.conftest import wait_until

K8S_BASE = ROOT / "k8s" / "base"
SCRIPT = K8S_BASE / "envoy-drain.sh"
CHUNKS = 12
CHUNK_DELAY = 0.5
"""The slow stream: 12 SSE events 0.5 s apart (6 s), then ``data: [DONE]``."""
DRAIN_TIME = 1
"""Envoy's --drain-time-s here (the Deployment's is longer): the gateway listener closes this long after the drain
starts, well before the stream ends."""


class _SlowSse(http.server.BaseHTTPRequestHandler):
    """POST /stream: a slow chunked SSE answer; any other POST: a small JSON answer at once."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path != "/stream":
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        try:
            for i in range(CHUNKS):
                self._chunk(f"data: chunk {i}\n\n".encode())
                time.sleep(CHUNK_DELAY)
            self._chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            pass  # the client (Envoy) went away: a test that kills Envoy mid-stream

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    """The slow SSE server's port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _SlowSse)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _container(name: str) -> dict[str, Any]:
    deployment = yaml.safe_load((K8S_BASE / "deployment.yaml").read_text())
    container: dict[str, Any] = next(
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name
    )
    return container


def _replace_flag(args: list[str], name: str, value: str) -> list[str]:
    out = list(args)
    out[out.index(name) + 1] = value
    return out


@dataclass
class Gateway:
    """A running Envoy with the k8s gateway config."""

    workdir: Path
    upstream_port: int
    admin_port: int = field(default_factory=free_port)
    gateway_port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.workdir / "envoy.log"

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = yaml.safe_load((K8S_BASE / "envoy.yaml").read_text())
        cfg["admin"]["address"]["socket_address"]["port_value"] = self.admin_port
        listeners = {li["name"]: li for li in cfg["static_resources"]["listeners"]}
        for name, port in (("llm_gateway", self.gateway_port), ("health_and_stats", self.health_port)):
            listeners[name]["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": port}
        hcm = listeners["llm_gateway"]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.ext_proc"]
        for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
            route.pop("typed_per_filter_config", None)
        for cluster in cfg["static_resources"]["clusters"]:
            port = self.admin_port if cluster["name"] == "envoy_admin" else self.upstream_port
            for key in ("transport_socket", "dns_lookup_family", "typed_extension_protocol_options"):
                cluster.pop(key, None)
            cluster["type"] = "STATIC"
            address = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
            cluster["load_assignment"]["endpoints"] = [{"lb_endpoints": [{"endpoint": {"address": address}}]}]
        return cfg

    def start(self) -> Gateway:
        path = self.workdir / "envoy.yaml"
        path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        args = [str(path) if a == "/etc/envoy/envoy.yaml" else a for a in _container("envoy")["args"]]
        args = _replace_flag(args, "--drain-time-s", str(DRAIN_TIME))
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(envoy_binary()), *args, "--concurrency", "1"], stdout=out, stderr=subprocess.STDOUT
            )
        if not wait_until(lambda: self.ready() == 200, timeout=30):
            self.stop()
            raise TimeoutError(f"envoy not ready:\n{self.log.read_text(errors='replace')[-4000:]}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def ready(self) -> int:
        """The status of GET /ready on the health listener (0 if it cannot be reached)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/ready", timeout=2) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.gateway_port}{path}"

    def hook(self, settle: int, max_wait: int, admin_port: int | None = None) -> subprocess.Popen[str]:
        """Start the Deployment's preStop command, with this test's script path, admin port and timings."""
        command = _container("envoy")["lifecycle"]["preStop"]["exec"]["command"]
        assert command[:2] == ["/bin/bash", "/etc/envoy-drain/envoy-drain.sh"]
        command = ["bash", str(SCRIPT), *command[2:]]
        command = _replace_flag(command, "--admin", f"127.0.0.1:{admin_port or self.admin_port}")
        command = _replace_flag(command, "--settle-seconds", str(settle))
        command = _replace_flag(command, "--max-wait-seconds", str(max_wait))
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def gateway(upstream: int, tmp_path: Path) -> Iterator[Gateway]:
    """A fresh Envoy for each test: a drain cannot be undone."""
    running = Gateway(workdir=tmp_path, upstream_port=upstream).start()
    try:
        yield running
    finally:
        running.stop()


@dataclass
class Stream:
    """A streaming request in a thread: its SSE data lines, when they started and ended, and any error."""

    url: str
    events: list[str] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    ended_at: float | None = None
    error: BaseException | None = None
    thread: threading.Thread | None = None

    def start(self) -> Stream:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.started.wait(10), f"no first event: {self.error!r}"
        return self

    def _run(self) -> None:
        try:
            with httpx.Client(timeout=30) as client, client.stream("POST", self.url, content=b"{}") as response:
                response.raise_for_status()
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line.removeprefix("data: "))
                        self.started.set()
            self.ended_at = time.monotonic()
        except BaseException as exc:  # reported by the test
            self.error = exc
            self.started.set()

    def join(self, timeout: float) -> None:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the stream did not end"


ALL_EVENTS = [f"chunk {i}" for i in range(CHUNKS)] + ["[DONE]"]


def _refused(url: str) -> bool:
    """True once a new connection to ``url``'s listener is refused (the listener closed)."""
    try:
        httpx.post(url, content=b"{}", timeout=2)
    except httpx.ConnectError:
        return True
    return False


def test_drain_finishes_the_stream_in_flight_and_turns_new_requests_away(gateway: Gateway) -> None:
    stream = Stream(gateway.url("/stream")).start()
    started = time.monotonic()
    hook = gateway.hook(settle=1, max_wait=20)
    try:
        assert wait_until(lambda: gateway.ready() == 503, timeout=5), "/ready still 200: the pod would keep traffic"
        # A request on a new connection after the drain began: served, but told to close its connection (from
        # /healthcheck/fail on), or refused once the gateway listener has closed.
        try:
            late = httpx.post(gateway.url("/quick"), content=b"{}", timeout=10)
            assert late.status_code == 200 and late.headers["connection"] == "close", late.headers
        except httpx.ConnectError:
            pass
        # --drain-time-s after the drain began the listener closes, while the stream goes on
        assert wait_until(lambda: _refused(gateway.url("/quick")), timeout=10), "the gateway listener never closed"
        refused_at = time.monotonic()
        output, _ = hook.communicate(timeout=30)
    finally:
        if hook.poll() is None:
            hook.kill()
            hook.communicate()
    returned_at = time.monotonic()
    stream.join(10)
    assert stream.error is None, repr(stream.error)
    assert stream.events == ALL_EVENTS, "the stream in flight was cut"
    assert stream.ended_at is not None
    assert refused_at < stream.ended_at, "the stream outlived the closed listener"
    assert hook.returncode == 0, output
    assert returned_at >= stream.ended_at, f"the hook returned before the stream ended:\n{output}"
    assert returned_at - started < 15, f"the hook waited toward its maximum (20 s) though nothing was active:\n{output}"
    assert "no active requests: done" in output, output
    assert gateway.proc is not None and gateway.proc.poll() is None, "Envoy exits on SIGTERM, not by itself"


def test_drain_returns_promptly_with_nothing_in_flight(gateway: Gateway) -> None:
    started = time.monotonic()
    hook = gateway.hook(settle=1, max_wait=20)
    output, _ = hook.communicate(timeout=30)
    assert hook.returncode == 0, output
    assert time.monotonic() - started < 6, output  # settle 1 s + one look at the stats
    assert "no active requests: done" in output, output
    assert gateway.ready() == 503


def test_drain_gives_up_after_its_maximum_wait(gateway: Gateway) -> None:
    stream = Stream(gateway.url("/stream")).start()
    started = time.monotonic()
    hook = gateway.hook(settle=0, max_wait=2)
    output, _ = hook.communicate(timeout=30)
    elapsed = time.monotonic() - started
    assert hook.returncode == 0, output
    assert 2 <= elapsed < 5.5, output  # returned at its maximum wait, before the 6 s stream ended
    assert "1 requests still active after 2s: giving up" in output, output
    assert stream.ended_at is None
    gateway.stop()  # the kubelet's SIGTERM: Envoy exits and the stream is cut
    stream.join(10)


def test_drain_exits_0_at_once_without_an_admin_interface(tmp_path: Path) -> None:
    gateway = Gateway(workdir=tmp_path, upstream_port=free_port())  # never started: nothing listens on its ports
    started = time.monotonic()
    hook = gateway.hook(settle=30, max_wait=300)
    output, _ = hook.communicate(timeout=30)
    assert hook.returncode == 0, output
    assert time.monotonic() - started < 3, output
    assert "unreachable: nothing to drain" in output, output


def test_drain_does_not_hang_on_a_silent_admin_interface(tmp_path: Path) -> None:
    """An admin port that accepts connections but never answers (a wedged Envoy): out after the read timeout."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        gateway = Gateway(workdir=tmp_path, upstream_port=free_port())
        started = time.monotonic()
        hook = gateway.hook(settle=30, max_wait=300, admin_port=silent.getsockname()[1])
        output, _ = hook.communicate(timeout=30)
    assert hook.returncode == 0, output
    assert time.monotonic() - started < 10, output  # one 5 s read timeout, then out
    assert "unreachable: nothing to drain" in output, output
