"""What the fallback filter (README "Upstream fallback") costs Envoy per request, on its common path.

Envoy alone (ext_proc removed, so the router's cost does not drown the difference) sends every request to the
``cheap_then_stronger`` chain with the router's choice (``cluster: cheap`` in its dynamic metadata) set by a
``set_metadata`` filter, as the router's answer would leave it.
The upstream answers, so each request is one attempt on the router's own cluster: the filter's header mutation and
Lua run and change nothing. Setups alternate, ``on`` (``envoy/envoy.yaml`` as shipped) and ``off`` (the chains'
upstream filters removed), and the result is Envoy's CPU (utime + stime from ``/proc``) per request under wrk.

``python -m bench.fallback_filter [--rounds N] [--duration S] [--concurrency C]``
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.deploy import hcm, start_upstream
from bench.measure import run_wrk
from bench.procstat import process_cpu_seconds
from bench.stats import median
from bench.workload import write_bodies
from devstack.stack import Stack

__all__ = ["main"]


def _patch(filters: bool) -> Callable[[dict[str, Any]], None]:
    def patch(cfg: dict[str, Any]) -> None:
        manager = hcm(cfg)
        manager.pop("access_log", None)
        manager.pop("tracing", None)
        manager["http_filters"] = [f for f in manager["http_filters"] if f["name"] != "envoy.filters.http.ext_proc"]
        default = manager["route_config"]["virtual_hosts"][0]["routes"][-1]
        default["route"]["cluster"] = "cheap_then_stronger"
        # What the router's answer leaves for the filter: its choice in the model_router metadata.
        chosen = {
            "name": "envoy.filters.http.set_metadata",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config",
                "metadata": [{"metadata_namespace": "model_router", "value": {"cluster": "cheap"}}],
            },
        }
        manager["http_filters"].insert(-1, chosen)
        if not filters:
            for cluster in cfg["static_resources"]["clusters"]:
                if cluster["name"].endswith("_then_stronger"):
                    cluster.pop("typed_extension_protocol_options", None)

    return patch


def _one_run(setup: str, workdir: Path, ports: dict[str, int], bodies: Path, conc: int, duration: float) -> float:
    """Envoy CPU microseconds per request for one wrk run of ``setup`` (``on`` or ``off``)."""
    stack = Stack(workdir=workdir / setup, upstream_ports=ports, envoy_patch=_patch(setup == "on"))
    stack.workdir.mkdir(parents=True)
    try:
        stack.start_envoy()  # only Envoy: the upstream is bench.upstream's, shared by every run
        pid = stack.procs["envoy"].pid
        run_wrk(stack.base_url, bodies, conc, 1)  # warm-up
        before = process_cpu_seconds([pid])
        result = run_wrk(stack.base_url, bodies, conc, duration)
        cpu = process_cpu_seconds([pid]) - before
    finally:
        stack.stop()
    if result.status_errors or result.socket_errors or not result.requests:
        raise RuntimeError(f"{setup}: {result.status_errors} status / {result.socket_errors} socket errors")
    return cpu / result.requests * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fallback_filter", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=8.0, help="seconds per measured wrk run")
    p.add_argument("--concurrency", type=int, default=16)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-fallback-") as tmp:
        workdir = Path(tmp)
        upstream, ports = start_upstream(workdir)
        try:
            bodies = write_bodies(workdir / "bodies.txt").path
            runs: dict[str, list[float]] = {"off": [], "on": []}
            for rnd in range(args.rounds):
                for setup in runs:
                    us = _one_run(setup, workdir / str(rnd), ports, bodies, args.concurrency, args.duration)
                    runs[setup].append(us)
                    print(f"round {rnd + 1} {setup:>3}: {us:6.1f} µs Envoy CPU per request", flush=True)
        finally:
            upstream.terminate()
            upstream.wait(10)
    off, on = median(runs["off"]), median(runs["on"])
    print(f"median: off {off:.1f} µs, on {on:.1f} µs: the filter adds {on - off:+.1f} µs per request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
