"""``make soak``: real prompts through real Envoy + router at a steady rate for a bounded time.

Every request carries the digest of its body without the ``model`` value; the fake upstream checks it, so a single
corrupted byte fails the run. Reports failures, router RSS over time (bounded growth) and open streams at the end.
Traffic goes to 127.0.0.1 only, and the run stops by itself after ``--duration`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from devstack.stack import ROOT, Stack
from devstack.upstream import EXPECT_HEADER, digest_without_model

__all__ = ["SoakResult", "run_soak"]

PROMPTS = ROOT.parent / "shared" / "data" / "prompts.jsonl.gz"


@dataclass
class SoakResult:
    """What a soak run saw."""

    sent: int = 0
    ok: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    rss_kb: list[tuple[float, int]] = field(default_factory=list)
    streams_in_flight_end: float = -1.0
    routed: int = 0

    def rss_growth_kb(self) -> int:
        """RSS at the end minus RSS after the warm-up (the first quarter of the run)."""
        if len(self.rss_kb) < 2:
            return 0
        warm = self.rss_kb[len(self.rss_kb) // 4][1]
        return self.rss_kb[-1][1] - warm


def _bodies(limit: int = 5000) -> list[bytes]:
    bodies = []
    with gzip.open(PROMPTS, "rt", encoding="utf-8") as f:
        for line in f:
            prompt = json.loads(line)["prompt"]
            bodies.append(
                orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": prompt}], "temperature": 0.7})
            )
            if len(bodies) >= limit:
                break
    return bodies


def _rss_kb(pid: int) -> int:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) if match else 0


async def run_soak(stack: Stack, duration: float, rate: float, concurrency: int) -> SoakResult:
    """Send requests at ``rate``/s for ``duration`` seconds with at most ``concurrency`` in flight."""
    bodies = _bodies()
    digests = [digest_without_model(b) for b in bodies]
    result = SoakResult()
    pid = stack.procs["router"].pid
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def one(i: int) -> None:
            body = bodies[i % len(bodies)]
            headers = {"content-type": "application/json", EXPECT_HEADER: digests[i % len(bodies)]}
            try:
                r = await client.post(stack.base_url + "/v1/chat/completions", content=body, headers=headers)
                if r.status_code == 200:
                    result.ok += 1
                    result.routed += "x-model-router-decision-id" in r.headers  # none when Envoy failed open
                else:
                    key = f"http_{r.status_code}"
                    result.failures[key] = result.failures.get(key, 0) + 1
            except httpx.HTTPError as exc:
                key = type(exc).__name__
                result.failures[key] = result.failures.get(key, 0) + 1
            finally:
                gate.release()

        start = time.monotonic()
        next_rss = start
        tasks: set[asyncio.Task[None]] = set()
        i = 0
        while (now := time.monotonic()) - start < duration:
            if now >= next_rss:
                result.rss_kb.append((now - start, _rss_kb(pid)))
                next_rss += max(1.0, duration / 30)
            due = start + i / rate
            if due > now:
                await asyncio.sleep(due - now)
            await gate.acquire()
            task = asyncio.create_task(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            result.sent += 1
            i += 1
        await asyncio.gather(*tasks)
        result.rss_kb.append((time.monotonic() - start, _rss_kb(pid)))
        await asyncio.sleep(0.5)
        metrics = (await client.get(stack.metrics_url)).text
    match = re.search(r"^model_router_streams_in_flight (\S+)$", metrics, re.MULTILINE)
    result.streams_in_flight_end = float(match.group(1)) if match else -1.0
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the soak and print a verdict; exit 1 on any failure, corruption, RSS growth or leaked stream."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load (default 300)")
    parser.add_argument("--rate", type=float, default=60.0, help="requests per second")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-rss-growth-mb", type=float, default=25.0)
    parser.add_argument(
        "--min-routed-share",
        type=float,
        default=0.9,
        help="share of requests the router must have decided (the rest failed open, served unrouted; default 0.9)",
    )
    parser.add_argument("--classifier", choices=["onnx", "heuristic"], default="onnx")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="model-router-soak-"))
    print(f"soak: {args.duration:.0f}s at {args.rate:.0f} req/s, concurrency {args.concurrency} (logs: {workdir})")
    with Stack(workdir=workdir, router_overrides={"classifier": {"kind": args.classifier}}) as stack:
        result = asyncio.run(run_soak(stack, args.duration, args.rate, args.concurrency))
    growth_mb = result.rss_growth_kb() / 1024
    print(f"sent {result.sent}, ok {result.ok}, routed {result.routed}, failures {result.failures or 'none'}")
    print("router RSS (MB) over time: " + ", ".join(f"{t:.0f}s={kb / 1024:.1f}" for t, kb in result.rss_kb[::5]))
    print(f"RSS growth after warm-up: {growth_mb:+.1f} MB (bound {args.max_rss_growth_mb} MB)")
    print(f"streams in flight at the end: {result.streams_in_flight_end:.0f}")
    ok = (
        not result.failures
        and result.ok == result.sent
        and growth_mb <= args.max_rss_growth_mb
        and result.streams_in_flight_end == 0
        and result.routed >= args.min_routed_share * result.sent  # a router failing open still answers 200
    )
    print("SOAK PASSED" if ok else "SOAK FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
