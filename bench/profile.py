"""Where the router's CPU goes under load, on one router worker while wrk drives it at a fixed concurrency.

Two views, because a sampling profiler alone misleads on a busy 2-core machine:

1. **Per-thread CPU** (exact, no overhead): utime + stime of every thread from ``/proc/<pid>/task`` over the run,
   grouped by what the thread is — the event-loop thread (router code, gRPC aio's Cython layer, uvloop, protobuf),
   gRPC's C-core threads, the classifier's threads — in µs per request.
2. **py-spy samples of the event-loop thread**, each put in one bucket by its innermost recognisable frame (self
   time), and every router function on the stack credited (inclusive time), scaled to that thread's µs/request.
   Default ``--nonblocking`` (Python frames only: C code under the loop shows as one bucket); ``--native`` also
   unwinds gRPC core, uvloop and protobuf but pauses the process per sample (it then runs several times slower).
   Samples of blocked threads (epoll, condition variables, the GIL) are dropped by their leaf frame.

``python -m bench.profile [--setup R-onnx|R-h|N] [--duration S] [--concurrency C] [--rate HZ] [--native]``; the
raw stacks are kept in ``bench/results/<timestamp>.profile.txt``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from bench.deploy import Deployment, SetupSpec, onnx_model_path, start_upstream
from bench.measure import run_wrk
from bench.workload import write_bodies
from devstack.stack import ROOT

__all__ = [
    "BUCKETS",
    "INCLUSIVE",
    "bucket_of",
    "parse_raw",
    "python_thread_names",
    "split_thread",
    "summarise",
    "thread_cpu",
    "thread_group",
]

_IDLE_LEAVES = frozenset(
    {
        "epoll_wait",
        "epoll_pwait",
        "poll",
        "select",
        "pthread_cond_wait",
        "pthread_cond_timedwait",
        "sem_wait",
        "sem_timedwait",
        "sem_clockwait",
        "nanosleep",
        "clock_nanosleep",
        "accept",
        "accept4",
    }
)
_WAITING = ("PyThread_acquire_lock_timed", "take_gil", "_queue_SimpleQueue_get", "drop_gil")
_SYSCALL_LEAVES = frozenset(
    {"write", "writev", "send", "sendmsg", "sendto", "recv", "recvmsg", "recvfrom", "read", "readv", "epoll_ctl"}
)

BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("classifier", ("classifier/", "onnxruntime", "tokenizers", "numpy")),
    ("policy", ("extproc/policy.py", "extproc/catalog.py")),
    (
        "parsing (request, schema, body edit, orjson)",
        ("extproc/request.py", "extproc/schemas/", "extproc/bodyedit.py", "orjson"),
    ),
    (
        "telemetry (metrics, spans, decision log)",
        ("extproc/telemetry.py", "opentelemetry", "prometheus_client", "extproc/record.py", "logging/", "logs.py"),
    ),
    ("protobuf (building/reading messages)", ("protobuf", "_upb", "extproc/envoy.py", "_pb2")),
    (
        "router handler (stream.py, service.py)",
        ("extproc/stream.py", "extproc/service.py", "extproc/snapshot.py", "bench/noop_extproc.py"),
    ),
    ("classifier hop (threads)", ("concurrent/futures", "threading.py", "extproc/classify.py")),
    ("gRPC (cygrpc + C core)", ("grpc/", "cygrpc", "grpc_core", "libgrpc")),
    ("event loop (uvloop + asyncio)", ("uvloop", "loop.c", "asyncio", "_asynciomodule", "uv__", "uv_run")),
)
"""Bucket name and the substrings of a frame (``name (file:line)``) that put a sample in it, innermost first."""

INCLUSIVE: tuple[tuple[str, str], ...] = (
    ("StreamHandler.handle (everything the router does per message)", "StreamHandler.handle "),
    ("StreamHandler._on_headers", "StreamHandler._on_headers "),
    ("StreamHandler._on_body", "StreamHandler._on_body "),
    ("parse_request", "parse_request "),
    ("classify (hop to the classifier threads + deadline)", "ClassifierThreads.__call__ (extproc/classify.py"),
    ("model.predict (in a classifier thread)", ".predict (classifier/"),
    ("choose_model", "choose_model "),
    ("replace_model", "replace_model "),
    ("envoy response builders", "(extproc/envoy.py"),
    ("telemetry", "(extproc/telemetry.py"),
    ("ExternalProcessorService.Process", "ExternalProcessorService.Process "),
)
"""Router functions whose inclusive share is reported, and the frame text that identifies each."""

IDLE = "idle"
MAIN = "main thread (event loop: router code, gRPC aio, uvloop, protobuf)"
_TICK = float(os.sysconf("SC_CLK_TCK"))
_DUMP_THREAD = re.compile(r'^Thread (\d+) \([^)]*\): "(.*)"')
_RAW_THREAD = re.compile(r"^thread \((\d+)\)")
SYSCALLS = "kernel (socket/pipe syscalls)"
OTHER = "other (interpreter, allocator, gc)"
C_UNDER_LOOP = "uvloop + gRPC aio + protobuf C code (no Python frame)"


def parse_raw(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    """py-spy ``--format raw`` lines (``frame;frame;... count``, outermost first) as (frames, count)."""
    out = []
    for line in lines:
        line = line.rstrip("\n")
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out.append((stack.split(";"), int(count)))
    return out


def _name(frame: str) -> str:
    return frame.split(" (", 1)[0]


def bucket_of(frames: list[str]) -> str:
    """The bucket of one sample: idle, a syscall, or the innermost frame matching a bucket."""
    leaf = _name(frames[-1]) if frames else ""
    if leaf in _IDLE_LEAVES or any(w in f for f in frames[-4:] for w in _WAITING):
        return IDLE
    if leaf in _SYSCALL_LEAVES:
        return SYSCALLS
    if leaf == "Runner.run":  # Python-only stacks: C code below the loop (uvloop, gRPC aio Cython, protobuf)
        return C_UNDER_LOOP
    for frame in reversed(frames):
        for bucket, needles in BUCKETS:
            if any(n in frame for n in needles):
                return bucket
    return OTHER


def summarise(samples: list[tuple[list[str], int]]) -> tuple[Counter[str], Counter[str], int]:
    """(self-time buckets, inclusive router functions, busy samples); idle samples are excluded."""
    buckets: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    busy = 0
    for frames, count in samples:
        bucket = bucket_of(frames)
        if bucket == IDLE:
            continue
        busy += count
        buckets[bucket] += count
        joined = ";".join(frames)
        for label, needle in INCLUSIVE:
            if needle in joined:
                inclusive[label] += count
    return buckets, inclusive, busy


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds (utime + stime) and kernel name (``comm``) of every live thread of ``pid``."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
            comm = (task / "comm").read_text().strip()
        except OSError:
            continue
        out[int(task.name)] = (comm, (int(fields[11]) + int(fields[12])) / _TICK)
    return out


def python_thread_names(spy: str, pid: int) -> dict[int, str]:
    """Thread id -> Python thread name, from ``py-spy dump`` (``Thread 123 (idle): "MainThread"``)."""
    done = subprocess.run([spy, "dump", "-p", str(pid)], capture_output=True, text=True, timeout=30, check=False)
    names = {}
    for line in done.stdout.splitlines():
        m = _DUMP_THREAD.match(line)
        if m:
            names[int(m.group(1))] = m.group(2)
    return names


def thread_group(tid: int, pid: int, comm: str, py_name: str) -> str:
    """Which part of the router a thread is, from its id, kernel name and Python name."""
    if tid == pid:
        return MAIN
    if py_name.startswith("classify"):
        return "classifier threads (model.predict)"
    if "_poll_wrapper" in py_name or comm.startswith(("event_engine", "grpc", "lifeguard")):
        return "gRPC core threads (poller, event engine, timers)"
    if "serve_forever" in py_name:
        return "metrics HTTP server thread"
    return "other threads"


def split_thread(frames: list[str]) -> tuple[int | None, list[str]]:
    """(thread id, frames) of a ``py-spy --threads`` sample, whose first frame is ``thread (id): name``."""
    m = _RAW_THREAD.match(frames[0]) if frames else None
    if not m:
        return None, frames
    return int(m.group(1)), frames[1:]


def _report(groups: dict[str, float], requests: int, buckets: Counter[str], inclusive: Counter[str], busy: int) -> str:
    total = sum(groups.values())
    lines = [f"router CPU by thread over the run: {total / requests * 1e6:,.0f} µs/req in all"]
    for name, sec in sorted(groups.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {sec / requests * 1e6:7,.0f} µs/req  {100 * sec / total:5.1f}%  {name}")
    main_us = groups.get(MAIN, 0.0) / requests * 1e6
    lines += ["", f"main thread ({main_us:,.0f} µs/req) by py-spy samples ({busy} busy), self time:"]
    for name, n in buckets.most_common():
        lines.append(f"  {main_us * n / busy:7,.0f} µs/req  {100 * n / busy:5.1f}%  {name}")
    lines += ["", "main thread, inclusive time of router functions:"]
    for label, _ in INCLUSIVE:
        n = inclusive[label]
        lines.append(f"  {main_us * n / busy:7,.0f} µs/req  {100 * n / busy:5.1f}%  {label}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Profile one router worker under wrk load and print the breakdown."""
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--setup", choices=["R-onnx", "R-h", "N"], default="R-onnx")
    p.add_argument("--duration", type=int, default=15)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument(
        "--native",
        action="store_true",
        help="unwind C frames too (gRPC core, uvloop, protobuf); py-spy then pauses the process per sample, "
        "which slows it several-fold on a busy machine",
    )
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--router-root", type=Path, default=ROOT, help="run the router from another checkout (A/B)")
    args = p.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print(f"bench.profile: py-spy not found; install it with: {sys.executable} -m pip install py-spy")
        return 2
    setup = args.setup
    if setup == "R-onnx" and not onnx_model_path().is_file():
        print("note: the ONNX model is not there yet; profiling R-h instead")
        setup = "R-h"
    spec = {
        "R-onnx": SetupSpec("R-onnx", "router", classifier="onnx"),
        "R-h": SetupSpec("R-h", "router", classifier="heuristic"),
        "N": SetupSpec("N", "noop"),
    }[setup]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    workdir = Path(tempfile.mkdtemp(prefix=f"model-router-profile-{stamp}-"))
    bodies = write_bodies(workdir / "bodies.txt").path
    upstream, ports = start_upstream(workdir)
    dep = Deployment(spec, workdir / spec.label, ports, router_root=args.router_root)
    raw = args.out / f"{stamp}.profile.txt"
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        dep.start()
        run_wrk(dep.url, bodies, args.concurrency, 2)  # warm-up
        pid = dep.ext_proc_pids[0]
        names = python_thread_names(spy, pid)
        before = thread_cpu(pid)
        cmd = [spy, "record", "-p", str(pid), "-r", str(args.rate), "-d", str(args.duration), "--threads"]
        cmd += ["--native"] if args.native else ["--nonblocking"]
        cmd += ["-f", "raw", "-o", str(raw)]
        recorder = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)
        result = run_wrk(dep.url, bodies, args.concurrency, args.duration)
        after = thread_cpu(pid)
        _, err = recorder.communicate(timeout=args.duration + 60)
        if recorder.returncode != 0:
            print(f"py-spy failed: {err.decode(errors='replace')[-1000:]}")
            return 1
    finally:
        dep.stop()
        upstream.terminate()
        upstream.wait(10)
    groups: dict[str, float] = {}
    for tid, (comm, sec) in after.items():
        group = thread_group(tid, pid, comm, names.get(tid, ""))
        groups[group] = groups.get(group, 0.0) + sec - before.get(tid, (comm, 0.0))[1]
    with raw.open() as f:
        main_samples = [(fr, n) for tid, fr, n in ((*split_thread(fr), n) for fr, n in parse_raw(f)) if tid == pid]
    buckets, inclusive, busy = summarise(main_samples)
    print(
        f"profile of {spec.label} worker at c={args.concurrency} for {args.duration}s "
        f"({args.rate} Hz, py-spy {'--native' if args.native else '--nonblocking'}): "
        f"{result.rps:,.0f} rps, {result.requests} requests under the profiler"
    )
    print(_report(groups, max(result.requests, 1), buckets, inclusive, max(busy, 1)))
    print(f"\nraw stacks: {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
