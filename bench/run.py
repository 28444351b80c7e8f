"""``make bench``: the router's cost in the gateway path, against Envoy alone and a do-nothing ext_proc, in one run.

Setups, all behind the repo's Envoy (``--concurrency 1``) on 127.0.0.1, sharing one fast upstream
(``bench.upstream``) that reads every body:

- **E**: Envoy alone (no ext_proc filter);
- **N**: Envoy + ``bench.noop_extproc``, the floor any Python ext_proc built like ours pays;
- **R-h**: Envoy + the router, heuristic classifier;
- **R-onnx**: Envoy + the router, the shipped ONNX classifier (skipped with a note while the model file is absent);
- **R-onnx-u** (only on request, ``--setups``): R-onnx with ``telemetry.response_usage`` and Envoy's usage observer;
- the router with 2 workers at concurrency 16 (the ONNX one, or the heuristic one without the model).

Rounds interleave the setups (for each round, for each concurrency: E, N, R-h, R-onnx, ...), so slow drift in the
shared machine's load hits every setup alike; rows are medians over rounds. wrk (Debian package ``wrk``) posts real
prompts (``bench.workload``). Results: a table on the terminal, ``bench/results/<timestamp>.jsonl`` (one line per
setup and concurrency) and ``<timestamp>.summary.json`` (ratios, targets, machine, per-run detail).

``python -m bench.run [--quick] [--rounds N] [--duration S]``; the default run takes 6 to 7 minutes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.deploy import Deployment, SetupSpec, onnx_model_path, start_upstream
from bench.measure import Run, measure, run_wrk
from bench.procstat import machine_info
from bench.report import aggregate, comparisons, evaluate_targets, format_table, format_targets, write_results
from bench.stats import Sample, median
from bench.workload import DEFAULT_PROMPTS, write_bodies
from devstack.stack import ROOT

__all__ = ["main"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CLASSIFIER_BENCH = Path(__file__).resolve().parent / "classifier_bench.py"
WORKERS_CONCURRENCY = 16


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, 3 s per measurement")
    p.add_argument("--rounds", type=int, help="rounds (default 3; 1 with --quick)")
    p.add_argument("--duration", type=float, help="seconds per measured wrk run (default 8; 3 with --quick)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up before each run (default 1; 0 for none)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--setups", nargs="+", default=["E", "N", "R-h", "R-onnx"], help="subset of E N R-h R-onnx R-onnx-u")
    p.add_argument("--no-workers", action="store_true", help="skip the 2-worker measurement")
    p.add_argument(
        "--router-root",
        type=Path,
        default=ROOT,
        help="run the router setups from another checkout's extproc/ (A/B of a proposed router change)",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the whole bench (and every process it starts) N nice levels above normal priority (root only), "
        "so other jobs on a shared machine preempt it less; 0 (default) leaves priorities alone",
    )
    p.add_argument("--no-classifier-bench", action="store_true", help="do not run bench/classifier_bench.py")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (3.0 if args.quick else 8.0)
    args.warmup = args.warmup if args.warmup is not None else 1.0
    return args


def _specs(names: list[str]) -> tuple[list[SetupSpec], list[str]]:
    """The setups to run and notes about skipped ones."""
    notes = []
    known = {
        "E": SetupSpec("E", "none", workers=0),
        "N": SetupSpec("N", "noop"),
        "R-h": SetupSpec("R-h", "router", classifier="heuristic"),
        "R-onnx": SetupSpec("R-onnx", "router", classifier="onnx"),
        "R-onnx-u": SetupSpec("R-onnx-u", "router", classifier="onnx", usage=True),
    }
    specs = []
    for name in names:
        if name not in known:
            raise SystemExit(f"unknown setup {name!r}; choose from {', '.join(known)}")
        if name.startswith("R-onnx") and not onnx_model_path().is_file():
            notes.append(
                f"note: R-onnx skipped: {onnx_model_path().relative_to(ROOT)} does not exist yet (the shipped ONNX "
                "classifier is being trained); its rows appear once the file exists"
            )
            continue
        specs.append(known[name])
    return specs, notes


def _start(spec: SetupSpec, workdir: Path, ports: dict[str, int], root: Path, notes: list[str]) -> Deployment | None:
    """A started deployment, or None (with a note) when the ONNX router cannot start: the model may be mid-training."""
    dep = Deployment(spec, workdir / spec.label, ports, router_root=root)
    try:
        dep.start()
    except Exception as exc:
        if spec.server == "router" and spec.classifier == "onnx":
            notes.append(f"note: {spec.label} skipped: the router did not start with the ONNX model: {exc}".strip())
            print(notes[-1], flush=True)
            return None
        raise
    return dep


def _sample(spec: SetupSpec, conc: int, rnd: int, run: Run, check_routed: bool) -> Sample:
    w = run.wrk
    unrouted = run.unrouted if check_routed else 0
    return Sample(
        setup=spec.name,
        workers=spec.workers,
        concurrency=conc,
        round=rnd,
        rps=w.rps,
        p50_us=w.p50_us,
        p90_us=w.p90_us,
        p99_us=w.p99_us,
        errors=w.socket_errors + w.status_errors + unrouted,
        requests=w.requests,
        router_cpu_us_per_req=run.ext_proc_cpu_us_per_req,
    )


def _classifier_bench(quick: bool) -> None:
    if not CLASSIFIER_BENCH.is_file():
        print("\nnote: bench/classifier_bench.py is not there yet; classifier micro-benchmark skipped")
        return
    print("\n== classifier micro-benchmark (bench/classifier_bench.py) ==", flush=True)
    try:
        argv = [sys.executable, str(CLASSIFIER_BENCH)] + (["--runs", "300"] if quick else [])
        subprocess.run(argv, cwd=ROOT, timeout=90 if quick else 240, check=False)
    except subprocess.TimeoutExpired:
        print("note: classifier micro-benchmark stopped after its time limit")


def _start_all(
    args: argparse.Namespace, specs: list[SetupSpec], workdir: Path, ports: dict[str, int], notes: list[str]
) -> list[Deployment]:
    """Start every setup, then the 2-worker router (ONNX if it started, else heuristic)."""
    deployments = []
    for spec in specs:
        dep = _start(spec, workdir, ports, args.router_root, notes)
        if dep is not None:
            deployments.append(dep)
    routers = [d.spec for d in deployments if d.spec.server == "router"]
    if routers and not args.no_workers and WORKERS_CONCURRENCY in args.concurrency:
        r = next((s for s in routers if s.classifier == "onnx"), routers[0])
        two = SetupSpec(r.name, "router", 2, r.classifier)
        dep = _start(two, workdir, ports, args.router_root, notes)
        if dep is not None:
            deployments.append(dep)
    return deployments


def _progress(rnd: int, spec: SetupSpec, s: Sample, run: Run) -> str:
    cpu = "-" if s.router_cpu_us_per_req is None else f"{s.router_cpu_us_per_req:,.0f}"
    unrouted = f" (fail-open {run.unrouted})" if spec.server != "none" else ""
    return (
        f"  round {rnd + 1} c={s.concurrency:<3} {spec.label:<9} {s.rps:>7,.0f} rps  "
        f"p50 {s.p50_us / 1000:6.2f} ms  p99 {s.p99_us / 1000:6.2f} ms  errors {s.errors}{unrouted}  "
        f"ext_proc cpu {cpu} µs/req  envoy cpu {run.envoy_cpu_us_per_req:,.0f} µs/req  "
        f"other load {run.other_load_cores:.2f} cores"
        + (f"  worker CPU shares {list(run.ext_proc_cpu_share)}" if len(run.ext_proc_cpu_share) > 1 else "")
    )


def _measure_rounds(
    args: argparse.Namespace, deployments: list[Deployment], bodies: Path, upstream_pid: int, upstream_port: int
) -> tuple[list[Sample], list[dict[str, Any]]]:
    """For each round, for each concurrency, every setup in turn: warm-up, then one measured run."""
    samples: list[Sample] = []
    runs: list[dict[str, Any]] = []
    for rnd in range(args.rounds):
        for conc in args.concurrency:
            for dep in deployments:
                spec = dep.spec
                if spec.workers > 1 and conc != WORKERS_CONCURRENCY:
                    continue
                if args.warmup > 0:
                    run_wrk(dep.url, bodies, conc, args.warmup)
                run = measure(
                    dep.url, bodies, conc, args.duration, dep.ext_proc_pids, dep.envoy_pid, upstream_pid, upstream_port
                )
                sample = _sample(spec, conc, rnd, run, check_routed=spec.server != "none")
                samples.append(sample)
                runs.append({**asdict(run), "wrk": asdict(run.wrk), **asdict(sample)})
                print(_progress(rnd, spec, sample, run), flush=True)
    return samples, runs


def _free_cores(runs: list[dict[str, Any]], cores: float) -> float | None:
    """Cores left for router workers in the 2-worker runs: all, minus other jobs, Envoy, wrk and the upstream."""
    worker_runs = [r for r in runs if r["workers"] > 1]
    if not worker_runs:
        return None
    return median(
        [
            cores
            - r["other_load_cores"]
            - (r["envoy_cpu_us_per_req"] + r["upstream_cpu_us_per_req"] + r["wrk_cpu_us_per_req"]) * r["rps"] / 1e6
            for r in worker_runs
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 0 when it completed (targets are reported, not enforced), 2 on set-up failure."""
    args = _args(argv)
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed; as root: apt-get update && apt-get install -y wrk", file=sys.stderr)
        return 2
    if args.nice:
        os.nice(-args.nice)  # children (Envoy, routers, wrk, upstream) inherit it
    started = time.monotonic()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    workdir = Path(tempfile.mkdtemp(prefix=f"model-router-bench-{stamp}-"))
    specs, notes = _specs(args.setups)
    for note in notes:
        print(note)
    machine_before = machine_info()
    print(
        f"bench: {args.rounds} round(s) x {len(specs)} setups x concurrency {args.concurrency}, "
        f"{args.duration:g}s each (+{args.warmup:g}s warm-up); Envoy --concurrency 1; nice {-args.nice}; "
        f"{machine_before['cores']} cores, load average {machine_before['loadavg']}; logs in {workdir}",
        flush=True,
    )
    workload = write_bodies(workdir / "bodies.txt")
    print(
        f"workload: {workload.count} real prompts from {DEFAULT_PROMPTS.name} as OpenAI chat bodies "
        f"(median {workload.median_bytes} B, p90 {workload.p90_bytes} B, max {workload.max_bytes} B)"
    )
    upstream, ports = start_upstream(workdir)
    first_port = next(iter(ports.values()))
    deployments: list[Deployment] = []
    try:
        direct = run_wrk(f"http://127.0.0.1:{first_port}", workload.path, 64, min(args.duration, 3.0))
        print(f"upstream alone (wrk -> bench upstream, c=64): {direct.rps:,.0f} rps, p99 {direct.p99_us:,.0f} µs")
        deployments = _start_all(args, specs, workdir, ports, notes)
        print(f"setups up: {', '.join(d.spec.label for d in deployments)}", flush=True)
        samples, runs = _measure_rounds(args, deployments, workload.path, upstream.pid, first_port)
    finally:
        for dep in deployments:
            dep.stop()
        upstream.terminate()
        upstream.wait(10)

    rows = aggregate(samples)
    up_specs = [d.spec for d in deployments]
    router = next((s.name for s in up_specs if s.name == "R-onnx"), None) or next(
        (s.name for s in up_specs if s.server == "router"), "R-onnx"
    )
    free_cores = _free_cores(runs, float(os.cpu_count() or 1))
    targets = evaluate_targets(rows, router, free_cores)
    other = [r["other_load_cores"] for r in runs]
    machine_after = machine_info()
    print()
    print(format_table(rows))
    print()
    print(f"targets ({router}):")
    print(format_targets(targets))
    print(
        f"\nmachine: {machine_before['cores']} cores ({machine_before['cpu_model']}), "
        f"load from outside the bench during runs: median {median(other) if other else 0:.2f} cores "
        f"(max {max(other, default=0):.2f}); load average before {machine_before['loadavg']}, "
        f"after {machine_after['loadavg']}"
    )
    out = args.out / f"{stamp}.jsonl"
    summary = {
        "timestamp": stamp,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"before": machine_before, "after": machine_after},
        "other_load_cores": {"median": median(other) if other else None, "max": max(other, default=None)},
        "envoy_concurrency": 1,
        "upstream_alone_c64": asdict(direct),
        "workload": {**asdict(workload), "path": str(workload.path)},
        "notes": notes,
        "router_for_targets": router,
        "free_cores_for_workers": free_cores,
        "comparisons": comparisons(rows),
        "targets": [asdict(t) for t in targets],
        "runs": runs,
        "seconds": round(time.monotonic() - started, 1),
    }
    summary_path = write_results(out, rows, summary)
    print(f"\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} and {summary_path.name}")
    if not args.no_classifier_bench:
        _classifier_bench(args.quick)
    print(f"bench took {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
