"""``model-router serve`` start-up failures: a listener that cannot bind (port in use, missing directory, a second
router on the same port or Unix socket, a regular file at the socket path) refuses the start with one line naming its
config field and exit 2, like an invalid config, after closing whatever it had already started."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.stack import ENVOY_DIR, ROOT, Stack, deep_merge, free_port
from extproc.errors import ConfigError
from extproc.reload import load_snapshot
from extproc.server import UNIX_SOCKET_MODE, serve
from extproc.snapshot import SnapshotRef
from tests.fakes import FakeDifficultyModel
from tests.integration.conftest import HEURISTIC
from tests.unit.test_spool import _locked

ADDRESS_IN_USE = "address already in use"


@pytest.fixture
def busy() -> Iterator[int]:
    """A port another process listens on."""
    with socket.create_server(("127.0.0.1", free_port())) as holder:
        yield holder.getsockname()[1]


def _config(workdir: Path, **overrides: Any) -> Path:
    """The shipped router config on free ports (heuristic classifier), with ``overrides`` merged in."""
    data = yaml.safe_load((ENVOY_DIR / "model-router.yaml").read_text())
    ports = {
        "server": {"listen": f"127.0.0.1:{free_port()}", "config_poll_seconds": 0},
        "telemetry": {"metrics_listen": f"127.0.0.1:{free_port()}"},
        "feedback": {"listen": f"127.0.0.1:{free_port()}"},
    }
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "model-router.yaml"
    path.write_text(yaml.safe_dump(deep_merge(deep_merge(deep_merge(data, HEURISTIC), ports), overrides)))
    return path


def _serve(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "extproc", "serve", "--config", str(config), *args]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)


def _refused(run: subprocess.CompletedProcess[str], problem: str) -> None:
    """Exit 2 with the problem alone; an address that cannot be bound is not an invalid config, and says so."""
    assert (run.returncode, run.stdout) == (2, ""), run.stderr
    heading = "cannot start" if ": cannot listen on " in problem else "invalid configuration"
    assert run.stderr == f"model-router: {heading}:\n  {problem}\n", "no traceback, no gRPC log line"


BUSY = "127.0.0.1:{busy}"


def _fill(value: Any, **names: object) -> Any:
    """``value`` with ``{name}`` in every string replaced."""
    if isinstance(value, dict):
        return {key: _fill(item, **names) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, **names) for item in value]
    return value.format(**names) if isinstance(value, str) else value


@pytest.mark.parametrize(
    ("overrides", "args", "problem"),
    [
        pytest.param(
            {"server": {"listen": BUSY}}, [], f"server.listen: cannot listen on {BUSY}: {ADDRESS_IN_USE}", id="grpc"
        ),
        pytest.param(
            {"telemetry": {"metrics_listen": BUSY}},
            [],
            f"telemetry.metrics_listen: cannot listen on {BUSY}: {ADDRESS_IN_USE}",
            id="metrics",
        ),
        pytest.param(
            {"feedback": {"enabled": True, "path": "{tmp}/f.jsonl", "listen": BUSY}},
            [],
            f"feedback.listen: cannot listen on {BUSY}: {ADDRESS_IN_USE}",
            id="feedback",
        ),
        pytest.param({}, ["--listen", BUSY], f"--listen: cannot listen on {BUSY}: {ADDRESS_IN_USE}", id="--listen"),
        pytest.param(
            {},
            ["--health-listen", BUSY],
            f"--health-listen: cannot listen on {BUSY}: {ADDRESS_IN_USE}",
            id="--health-listen",
        ),
        pytest.param(
            {},
            ["--health-listen", "unix:/tmp/h.sock"],
            "--health-listen: expected host:port ([::1]:port for IPv6), got 'unix:/tmp/h.sock'",
            id="--health-listen-unix",
        ),
        pytest.param(
            {"server": {"listen": "unix:{tmp}/missing/r.sock"}},
            [],
            "server.listen: cannot listen on unix:{tmp}/missing/r.sock: no such file or directory",
            id="unix-missing-directory",
        ),
        pytest.param(
            {},
            ["--listen", "9"],
            "--listen: '9' has no host; write 127.0.0.1:9, or 0.0.0.0:9 for every interface",
            id="--listen-without-host",
        ),
    ],
)
def test_a_listener_that_cannot_bind_refuses_the_start(
    tmp_path: Path, busy: int, overrides: dict[str, Any], args: list[str], problem: str
) -> None:
    overrides, args, problem = _fill([overrides, args, problem], busy=busy, tmp=tmp_path)
    config = _config(tmp_path / "router", **overrides)
    started = time.monotonic()
    run = _serve(config, *args)
    _refused(run, problem)
    assert time.monotonic() - started < 15, "exits at once: nothing it started keeps it alive"


def test_a_second_router_on_the_same_port_is_refused(tmp_path: Path) -> None:
    """A restart overlap (or a second worker on one port) must not share the port: the old process would keep part
    of the traffic with the old config. The running router's socket does not allow sharing (SO_REUSEPORT off), and
    the second router says so and exits 2; once the first has stopped, the same config starts."""
    first = Stack(workdir=tmp_path / "first", router_overrides=HEURISTIC)
    second = Stack(workdir=tmp_path / "second", router_overrides=HEURISTIC, router_port=first.router_port)
    port = first.router_port
    for stack in (first, second):
        stack.workdir.mkdir()
    try:
        first.start_router()
        _refused(
            _serve(second.write_router_config()), f"server.listen: cannot listen on 127.0.0.1:{port}: {ADDRESS_IN_USE}"
        )
        with socket.socket() as sharer:  # what gRPC's default (SO_REUSEPORT on) does: refused as well
            sharer.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            with pytest.raises(OSError, match="Address already in use"):
                sharer.bind(("127.0.0.1", port))
        assert _grpc_default_server_cannot_bind(port)
        assert first.stop_router() == 0
        second.start_router()  # right after the first one stopped: its closed connections do not hold the port
        assert second.stop_router() == 0
    finally:
        first.stop()
        second.stop()


def _serving_on(address: str) -> bool:
    """Whether a router answers SERVING on ``address`` (``unix:/path``) right now."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@contextlib.contextmanager
def _router_on(workdir: Path, address: str) -> Iterator[subprocess.Popen[bytes]]:
    """A router process serving on ``address``, ready when this yields; killed on the way out if still running."""
    config = _config(workdir, server={"listen": address})
    log = workdir / "router.log"
    with log.open("wb") as out:
        argv = [sys.executable, "-m", "extproc", "serve", "--config", str(config)]
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not _serving_on(address):
            assert proc.poll() is None, f"router exited {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"router not ready:\n{log.read_text()}"
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=15)


def test_a_second_router_on_the_same_unix_socket_is_refused(tmp_path: Path) -> None:
    """gRPC replaces whatever socket file is at a ``unix:`` path, even one a running router listens on: the second
    router would start and the first, still running, could no longer be reached. The start connects first: a
    listener there refuses the start (exit 2); once the first router is gone, the same config starts."""
    address = f"unix:{tmp_path}/r.sock"
    second = _config(tmp_path / "second", server={"listen": address})
    with _router_on(tmp_path / "first", address) as first:
        _refused(_serve(second), f"server.listen: cannot listen on {address}: another process is listening on it")
        assert _serving_on(address), "the first router is still reachable on its socket"
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=20) == 0
    with _router_on(tmp_path / "third", address) as third:
        third.send_signal(signal.SIGTERM)
        assert third.wait(timeout=20) == 0


def test_a_unix_socket_lets_the_owner_and_its_group_connect(tmp_path: Path) -> None:
    """Connecting needs write permission: with the umask's 0755 an Envoy under another user was refused (EACCES) and
    failed open for good; 0660 admits the socket's group (k8s: the pod's fsGroup) and no one else."""
    address = f"unix:{tmp_path}/r.sock"
    with _router_on(tmp_path / "router", address) as router:
        assert stat.S_IMODE(os.stat(tmp_path / "r.sock").st_mode) == UNIX_SOCKET_MODE == 0o660
        router.send_signal(signal.SIGTERM)
        assert router.wait(timeout=20) == 0


def test_a_stale_unix_socket_is_replaced(tmp_path: Path) -> None:
    """A router that crashed (SIGKILL) leaves its socket file behind with nobody listening (a connect is refused):
    the next router replaces it and starts."""
    address = f"unix:{tmp_path}/r.sock"
    path = tmp_path / "r.sock"
    with _router_on(tmp_path / "crashed", address) as crashed:
        crashed.kill()
        crashed.wait(timeout=15)
    assert stat.S_ISSOCK(os.lstat(path).st_mode), "the crash left the socket file"
    with socket.socket(socket.AF_UNIX) as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(str(path))
    with _router_on(tmp_path / "next", address) as router:
        router.send_signal(signal.SIGTERM)
        assert router.wait(timeout=20) == 0


@pytest.mark.parametrize("kind", ["file", "directory", "dangling-symlink"])
def test_a_unix_path_that_is_not_a_socket_is_refused(tmp_path: Path, kind: str) -> None:
    """A regular file (a directory, a symbolic link to nothing) at the socket path is not the router's to replace:
    the start is refused with one line saying so, and the file is left as it was. (gRPC itself leaves it too, but
    fails with "Failed to bind" and a log line of its own.)"""
    path = tmp_path / "r.sock"
    if kind == "file":
        path.write_text("a user's data\n")
    elif kind == "directory":
        path.mkdir()
    else:
        path.symlink_to(tmp_path / "nothing")
    before = os.lstat(path)
    address = f"unix:{path}"
    run = _serve(_config(tmp_path / "router", server={"listen": address}))
    _refused(run, f"server.listen: cannot listen on {address}: it exists and is not a socket")
    after = os.lstat(path)
    assert (after.st_ino, after.st_mode, after.st_mtime_ns) == (before.st_ino, before.st_mode, before.st_mtime_ns)
    if kind == "file":
        assert path.read_text() == "a user's data\n"


def _grpc_default_server_cannot_bind(port: int) -> bool:
    async def attempt() -> bool:
        server = grpc.aio.server()
        try:
            server.add_insecure_port(f"127.0.0.1:{port}")
        except RuntimeError:
            return True
        finally:
            await server.stop(None)
        return False

    return asyncio.run(attempt())


def test_a_failed_start_closes_what_it_started(tmp_path: Path, busy: int) -> None:
    """In-process: after the refusal, the metrics and feedback ports are free again, the capture and feedback files
    are no longer locked, and every thread the start began has ended."""
    capture, feedback = tmp_path / "capture.jsonl", tmp_path / "feedback.jsonl"
    metrics_port, feedback_port = free_port(), free_port()
    sections = {
        "server": {"listen": f"127.0.0.1:{busy}"},
        "telemetry": {"metrics_listen": f"127.0.0.1:{metrics_port}"},
        "capture": {"enabled": True, "path": str(capture)},
        "feedback": {"enabled": True, "path": str(feedback), "listen": f"127.0.0.1:{feedback_port}"},
    }
    config = _config(tmp_path / "router", **sections)
    before = set(threading.enumerate())
    snapshots = SnapshotRef(load_snapshot(config, lambda _s: FakeDifficultyModel()))
    try:
        asyncio.run(asyncio.wait_for(serve(config, snapshots), timeout=20))
    except ConfigError as exc:  # not kept: its traceback holds the unstarted gRPC server (and so gRPC's poller)
        problems = exc.problems
    else:
        pytest.fail("the router started on a busy port")
    assert problems == [f"server.listen: cannot listen on 127.0.0.1:{busy}: {ADDRESS_IN_USE}"]
    assert not _locked(capture) and not _locked(feedback)
    for port in (metrics_port, feedback_port):
        with socket.create_server(("127.0.0.1", port)):
            pass
    gc.collect()
    deadline = time.monotonic() + 5
    while (left := set(threading.enumerate()) - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, sorted(t.name for t in left)


def test_a_sidecar_waits_for_a_valid_config_with_its_probe_port_up(tmp_path: Path) -> None:
    """``serve --listen 127.0.0.1:P --health-listen ADDR --wait-for-config``, as the injected sidecar runs: gRPC
    only on loopback, probes on their own port. A missing or invalid config, or one the server cannot start on,
    must not end the process (an exiting native sidecar holds back its pod's Envoy): it is reported once, the probe
    says so, and the router starts as soon as the file is valid."""
    health = f"127.0.0.1:{free_port()}"
    address = f"127.0.0.1:{free_port()}"
    config = tmp_path / "model-router.yaml"  # missing at first, like a ConfigMap not created yet
    log = tmp_path / "router.log"
    argv = [sys.executable, "-m", "extproc", "serve", "--config", str(config), "--listen", address]
    with log.open("wb") as out:
        argv += ["--health-listen", health, "--wait-for-config"]
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://{health}/healthz"

    def probe() -> tuple[int, str]:
        try:
            answer = httpx.get(url, timeout=5)
        except httpx.TransportError:
            return 0, ""
        return answer.status_code, answer.text

    def wait_for(want: tuple[int, str]) -> None:
        deadline = time.monotonic() + 30
        while probe() != want:
            assert proc.poll() is None, f"router exited {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"probe never said {want}:\n{log.read_text()}"
            time.sleep(0.1)

    try:
        wait_for((200, "waiting for a valid config\n"))
        config.write_text("policy: [unclosed")
        wait_for_text = "not valid YAML"
        deadline = time.monotonic() + 30
        while wait_for_text not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert not _serving_on(address)
        # Valid for check-config, but the server cannot start on it (its metrics port is the probe port's).
        valid = yaml.safe_load(_config(tmp_path / "valid").read_text())
        clash = deep_merge(valid, {"telemetry": {"metrics_listen": health}})
        config.write_text(yaml.safe_dump(clash))
        deadline = time.monotonic() + 30
        while f"telemetry.metrics_listen: cannot listen on {health}" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert probe() == (200, "waiting for a valid config\n")
        config.write_text(yaml.safe_dump(valid))
        wait_for((200, "serving\n"))
        assert _serving_on(address)
        assert log.read_text().count("cannot read") == 1, "each problem is reported once, not every 2 s"
        waits = [line for line in log.read_text().splitlines() if "waiting for a valid config" in line]
        retries = [line for line in log.read_text().splitlines() if line.endswith('; trying again"}')]
        assert len(waits) == 2 and len(retries) == 1, "a port another process holds is no invalid config"
        assert all(json.loads(line)["level"] == "error" for line in waits + retries), "one JSON line each"
        assert "cannot start:" in json.loads(retries[0])["msg"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert probe() == (0, ""), "the probe port closes with the router"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=15)


def test_a_sighup_while_the_router_starts_does_not_kill_it(tmp_path: Path) -> None:
    """A config reloader may signal a router that has just been restarted: before the server's handler exists, the
    signal is ignored (it was fatal until the CLI's imports and the model load were done, ≈0.5-1.2 s)."""
    address = f"127.0.0.1:{free_port()}"
    config = _config(tmp_path, server={"listen": address})
    argv = [sys.executable, "-m", "extproc", "serve", "--config", str(config)]
    with (tmp_path / "router.log").open("wb") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(0.25)  # the interpreter is up and importing
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while not _serving_on(address):
            assert proc.poll() is None, f"router exited {proc.returncode} after SIGHUP"
            assert time.monotonic() < deadline, "router not ready"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=15)


def test_a_served_router_under_listen_and_a_config_file_that_goes_away(tmp_path: Path) -> None:
    """serve's wiring: with --listen, an edit of server.listen is applied without "needs a restart" (the command line
    wins); a config file that cannot be read shows in model_router_config_file_readable, and again when it can."""
    metrics_port, listen = free_port(), f"127.0.0.1:{free_port()}"
    config = _config(
        tmp_path, server={"config_poll_seconds": 0.1}, telemetry={"metrics_listen": f"127.0.0.1:{metrics_port}"}
    )
    shipped = config.read_text()
    log = tmp_path / "router.log"

    def readable() -> float | None:
        for line in httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text.splitlines():
            if line.startswith("model_router_config_file_readable "):
                return float(line.split()[1])
        return None

    def until(check: Any, what: str) -> None:
        deadline = time.monotonic() + 20
        while not check():
            assert time.monotonic() < deadline, f"{what}:\n{log.read_text()}"
            time.sleep(0.05)

    with log.open("wb") as out:
        argv = [sys.executable, "-m", "extproc", "serve", "--config", str(config), "--listen", listen]
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        until(lambda: _serving_on(listen), "not serving")
        data = yaml.safe_load(shipped)
        data["server"]["listen"] = f"127.0.0.1:{free_port()}"
        config.write_text(yaml.safe_dump(data))
        until(lambda: "config reloaded from" in log.read_text(), "not reloaded")
        assert "needs a restart" not in log.read_text()
        assert readable() == 1
        config.unlink()
        until(lambda: readable() == 0, "unreadable file not shown")
        config.write_text(shipped)
        until(lambda: readable() == 1, "readable again not shown")
    finally:
        proc.kill()
        proc.wait(timeout=15)
