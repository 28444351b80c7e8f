"""One measured wrk run against one deployment, with the CPU every process spent and the machine's other load.

wrk is bounded by ``-d`` (and by a subprocess timeout on top); it always targets 127.0.0.1. Before each measured
run a short warm-up at the same concurrency opens the connections and warms caches, so the first requests of a
cold connection do not count against one setup.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.procstat import children_cpu_seconds, machine_times, process_cpu_seconds
from bench.stats import WrkResult, parse_wrk_output

__all__ = ["LUA", "Run", "measure", "run_wrk", "upstream_counts"]

LUA = Path(__file__).resolve().parent / "wrk.lua"


def run_wrk(url: str, bodies: Path, concurrency: int, duration: float, threads: int = 1) -> WrkResult:
    """Run wrk for ``duration`` seconds (whole, rounded up) at ``concurrency`` connections; parse its summary."""
    argv = [
        "wrk",
        "-t",
        str(min(threads, concurrency)),
        "-c",
        str(concurrency),
        "-d",
        f"{max(math.ceil(duration), 1)}s",  # wrk takes whole seconds only
        "--timeout",
        "2s",
        "-s",
        str(LUA),
        url,
        "--",
        str(bodies),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-2000:]}")
    return parse_wrk_output(done.stdout)


def upstream_counts(port: int) -> tuple[int, int]:
    """(requests, unrouted) summed over every port of the bench upstream that listens on ``port``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stats", timeout=5) as r:
        d = json.loads(r.read())
    return sum(d["requests"].values()), sum(d["unrouted"].values())


@dataclass(frozen=True, slots=True)
class Run:
    """A wrk result plus what it cost: CPU per request of each part, and load from outside the bench."""

    wrk: WrkResult
    unrouted: int
    """Requests that reached the upstream with ``"model":"auto"`` still in the body."""
    upstream_requests: int
    ext_proc_cpu_us_per_req: float | None
    ext_proc_cpu_share: tuple[float, ...]
    """Each worker's share of the ext_proc CPU: are the workers equally loaded?"""
    envoy_cpu_us_per_req: float
    upstream_cpu_us_per_req: float
    wrk_cpu_us_per_req: float
    wall_s: float
    machine_busy_cores: float
    other_load_cores: float
    """Machine busy time not spent by the bench's processes, in cores: other engineers' jobs."""


def measure(
    url: str,
    bodies: Path,
    concurrency: int,
    duration: float,
    ext_proc_pids: list[int],
    envoy_pid: int,
    upstream_pid: int,
    upstream_port: int,
) -> Run:
    """One measured wrk run with CPU accounting around it."""
    req0, unrouted0 = upstream_counts(upstream_port)
    ext0 = [process_cpu_seconds([pid]) for pid in ext_proc_pids]
    env0 = process_cpu_seconds([envoy_pid])
    up0 = process_cpu_seconds([upstream_pid])
    wrk0 = children_cpu_seconds()
    m0 = machine_times()
    t0 = time.monotonic()
    result = run_wrk(url, bodies, concurrency, duration)
    wall_s = time.monotonic() - t0
    m1 = machine_times()
    wrk_cpu = children_cpu_seconds() - wrk0
    by_worker = [process_cpu_seconds([pid]) - t0 for pid, t0 in zip(ext_proc_pids, ext0, strict=True)]
    ext = sum(by_worker)
    env = process_cpu_seconds([envoy_pid]) - env0
    up = process_cpu_seconds([upstream_pid]) - up0
    req1, unrouted1 = upstream_counts(upstream_port)
    n = max(result.requests, 1)
    busy = m1.busy - m0.busy
    ours = ext + env + up + wrk_cpu
    return Run(
        wrk=result,
        unrouted=unrouted1 - unrouted0,
        upstream_requests=req1 - req0,
        ext_proc_cpu_us_per_req=ext / n * 1e6 if ext_proc_pids else None,
        ext_proc_cpu_share=tuple(round(w / ext, 3) if ext > 0 else 0.0 for w in by_worker),
        envoy_cpu_us_per_req=env / n * 1e6,
        upstream_cpu_us_per_req=up / n * 1e6,
        wrk_cpu_us_per_req=wrk_cpu / n * 1e6,
        wall_s=wall_s,
        machine_busy_cores=busy / wall_s,
        other_load_cores=max(busy - ours, 0.0) / wall_s,
    )
