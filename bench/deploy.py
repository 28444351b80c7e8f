"""The setups under test, each a running deployment: its own Envoy (via ``devstack.stack.Stack``) and ext_proc
server processes, all sharing one bench upstream.

Every setup stays up for the whole run, so the rounds can interleave setups without restarts; an idle setup costs
no CPU. All Envoys run the repo's ``envoy/envoy.yaml`` with ``--concurrency 1`` (as ``Stack`` starts it), with two
changes for every setup alike: the stdout access log is removed (at thousands of requests per second it measures
the log file, not the gateway), and the upstream clusters point at the bench upstream. "Envoy alone" (E) also
drops the ext_proc filter.

Several router workers are several endpoints of the ext_proc cluster, each on its own port. With ``--concurrency 1``
Envoy multiplexes every ext_proc stream over one HTTP/2 connection per endpoint, so processes sharing one
``SO_REUSEPORT`` port got all the load on one worker (bench/RESULTS.md "Workers"); the router now refuses a port
another process holds.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.measure import upstream_counts
from devstack.stack import (
    ENVOY_DIR,
    ROOT,
    UPSTREAM_CLUSTERS,
    Stack,
    deep_merge,
    enable_usage_observer,
    free_port,
)

__all__ = [
    "Deployment",
    "SetupSpec",
    "hcm",
    "onnx_model_path",
    "spawn",
    "start_upstream",
    "wait_until",
]

ServerKind = Literal["none", "noop", "router"]


@dataclass(frozen=True, slots=True)
class SetupSpec:
    """One setup: what ext_proc server (if any) runs behind Envoy, with which classifier, in how many workers."""

    name: str
    server: ServerKind
    workers: int = 1
    classifier: str | None = None
    usage: bool = False
    """``telemetry.response_usage`` on, with Envoy's usage observer filter (README "Real usage")."""

    @property
    def label(self) -> str:
        """Name and worker count, unique per deployment."""
        return self.name if self.workers <= 1 else f"{self.name}x{self.workers}"


def onnx_model_path() -> Path:
    """Where the shipped ONNX classifier lives (it may not exist yet while it is being trained)."""
    from classifier.loader import DEFAULT_MODEL_DIR

    return DEFAULT_MODEL_DIR / "model.onnx"


def spawn(argv: list[str], log: Path, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    """Start ``argv`` from ``cwd`` (the repo root) with output to ``log``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env)


def wait_until(check: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Poll ``check`` until true; raise with the log's tail if ``proc`` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout}s:\n{log.read_text(errors='replace')[-3000:]}")


def _grpc_serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _worker_ready(port: int, log: Path) -> bool:
    return "ready on" in log.read_text(errors="replace") and _grpc_serving(port)


def start_upstream(workdir: Path) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    """Start ``bench.upstream`` with one port per upstream cluster; wait until it answers."""
    ports = {c: free_port() for c in UPSTREAM_CLUSTERS}
    argv = [sys.executable, "-m", "bench.upstream"]
    for port in ports.values():
        argv += ["--port", str(port)]
    log = workdir / "upstream.log"
    proc = spawn(argv, log)
    first = next(iter(ports.values()))
    wait_until(lambda: upstream_counts(first) is not None, "bench upstream", proc, log, 20)
    return proc, ports


def hcm(cfg: dict[str, Any]) -> dict[str, Any]:
    """The http_connection_manager config of ``envoy/envoy.yaml``'s listener, for patches."""
    listener = cfg["static_resources"]["listeners"][0]
    typed: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return typed


def _envoy_patch(spec: SetupSpec, worker_ports: list[int]) -> Callable[[dict[str, Any]], None]:
    def patch(cfg: dict[str, Any]) -> None:
        manager = hcm(cfg)
        manager.pop("access_log", None)
        if spec.usage:
            enable_usage_observer(cfg)
        if spec.server == "none":
            manager["http_filters"] = [f for f in manager["http_filters"] if f["name"] != "envoy.filters.http.ext_proc"]
        if len(set(worker_ports)) > 1:
            for cluster in cfg["static_resources"]["clusters"]:
                if cluster["name"] in ("model_router", "model_router_usage"):
                    cluster["load_assignment"]["endpoints"] = [
                        {
                            "lb_endpoints": [
                                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
                                for p in worker_ports
                            ]
                        }
                    ]

    return patch


@dataclass
class Deployment:
    """A running setup: Envoy plus its ext_proc worker processes."""

    spec: SetupSpec
    workdir: Path
    upstream_ports: Mapping[str, int]
    router_root: Path = ROOT
    """Where ``python -m extproc`` runs from: another checkout (with its own ``extproc/``) for an A/B run."""
    stack: Stack | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Envoy's listener, where wrk sends requests."""
        assert self.stack is not None
        return self.stack.base_url

    @property
    def ext_proc_pids(self) -> list[int]:
        """The ext_proc server processes whose CPU is the router's cost."""
        return [p.pid for p in self.workers]

    @property
    def envoy_pid(self) -> int:
        """Envoy's process id."""
        assert self.stack is not None
        return self.stack.procs["envoy"].pid

    def _worker_argv(self, port: int) -> list[str]:
        listen = f"127.0.0.1:{port}"
        if self.spec.server == "noop":
            return [sys.executable, "-m", "bench.noop_extproc", "--listen", listen]
        config = self._write_router_config(port)
        return [sys.executable, "-m", "extproc", "serve", "--config", str(config), "--listen", listen]

    def _write_router_config(self, port: int) -> Path:
        """``envoy/model-router.yaml`` with this setup's classifier; each worker its own metrics port."""
        base = yaml.safe_load((ENVOY_DIR / "model-router.yaml").read_text())
        overrides: dict[str, Any] = {
            "server": {"listen": f"127.0.0.1:{port}"},
            "classifier": {"kind": self.spec.classifier or "heuristic"},
        }
        if self.spec.usage:
            overrides["telemetry"] = {"response_usage": True}
        if isinstance(base.get("telemetry"), dict) and base["telemetry"].get("metrics_listen"):
            overrides["telemetry"] = {**overrides.get("telemetry", {}), "metrics_listen": f"127.0.0.1:{free_port()}"}
        path = self.workdir / f"model-router-{len(self.workers)}.yaml"
        path.write_text(yaml.safe_dump(deep_merge(base, overrides), sort_keys=False))
        return path

    def start(self) -> None:
        """Start the ext_proc workers (waiting for their health service), then Envoy."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        router_port = free_port()
        n = self.spec.workers if self.spec.server != "none" else 0
        # Each worker its own port, an endpoint of the ext_proc cluster (bench/RESULTS.md "Workers").
        ports = [router_port] + [free_port() for _ in range(n - 1)] if n else []
        self.stack = Stack(
            workdir=self.workdir,
            router_port=router_port,
            upstream_ports=dict(self.upstream_ports),
            envoy_patch=_envoy_patch(self.spec, ports),
        )
        try:
            for i, port in enumerate(ports):
                log = self.workdir / f"extproc-{i}.log"
                cwd = self.router_root if self.spec.server == "router" else ROOT
                proc = spawn(self._worker_argv(port), log, cwd=cwd)
                self.workers.append(proc)
                # its own log line as well as the port's health: the port could be another process's
                ready = functools.partial(_worker_ready, port, log)
                wait_until(ready, f"{self.spec.label} worker {i}", proc, log, 60)
            self.stack.start_envoy()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop Envoy and the workers."""
        if self.stack is not None:
            self.stack.stop()
        for proc in self.workers:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.workers:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.workers.clear()
