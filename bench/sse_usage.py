"""What real usage costs on streamed answers: chunk lag, time to last byte and CPU per request, usage off and on.

``make bench`` measures small non-streamed JSON answers. With ``telemetry.response_usage`` the router reads a copy of
every response chunk (README "Real usage"), so its cost grows with the number of chunks of an SSE answer. Here one
SSE upstream (``--serve-upstream``, a subprocess) answers every cluster with ``--chunks`` chat-completion chunks
``--gap-ms`` apart, each stamped with the time it was written; the client (aiohttp) reads them through Envoy and
takes arrival minus that stamp as the chunk's lag. The setups run the router with the heuristic classifier (the
classifier is not what this measures) and alternate per round, so slow drift in the machine's load hits both alike.

``python -m bench.sse_usage [--chunks 50] [--gap-ms 10] [--concurrency 1 8] [--requests 100] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from bench.deploy import Deployment, SetupSpec, spawn, wait_until
from bench.procstat import process_cpu_seconds
from devstack.stack import UPSTREAM_CLUSTERS, free_port

__all__ = ["Sample", "main", "read_stream"]

BODY = orjson.dumps(
    {
        "model": "auto",
        "messages": [{"role": "user", "content": "Explain how a hash map works."}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
)
SETUPS = (
    SetupSpec("usage-off", "router", classifier="heuristic"),
    SetupSpec("usage-on", "router", classifier="heuristic", usage=True),
)


async def _chat(request: web.Request) -> web.StreamResponse:
    """An OpenAI chat-completions SSE answer: the chunks, a final usage chunk, then ``[DONE]``."""
    body = orjson.loads(await request.read())
    chunks, gap = int(request.headers["x-bench-chunks"]), float(request.headers["x-bench-gap-ms"]) / 1000
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": body["model"]}
    for i in range(chunks + 1):
        if gap and i < chunks:
            await asyncio.sleep(gap)
        event = {**base, "choices": [{"index": 0, "delta": {"content": f"tok{i} "}}]} if i < chunks else {
            **base, "choices": [], "usage": {"prompt_tokens": 14, "completion_tokens": chunks}
        }  # fmt: skip
        await response.write(b"data: " + orjson.dumps({**event, "x_sent_ns": time.time_ns()}) + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def _serve_upstream(ports: Sequence[int]) -> None:
    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", _chat)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        for port in ports:
            await web.TCPSite(runner, "127.0.0.1", port).start()
        print(f"sse upstream ready on {list(ports)}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


@dataclass
class Sample:
    """What one setup measured at one concurrency."""

    lags_ms: list[float] = field(default_factory=list)
    ttlb_ms: list[float] = field(default_factory=list)
    errors: int = 0


def read_stream(arrivals: Sequence[tuple[int, bytes]], chunks: int) -> list[float] | None:
    """Per-chunk lags in ms from ``(arrival_ns, bytes)`` reads of one SSE answer; None unless the answer was whole
    (every chunk, the usage chunk, then ``[DONE]``)."""
    lags, buffer, done = [], b"", False
    for arrived, data in arrivals:
        buffer += data
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            if event == b"data: [DONE]":
                done = True
            elif event.startswith(b"data: {"):
                lags.append((arrived - orjson.loads(event[6:])["x_sent_ns"]) / 1e6)
    return lags if done and len(lags) == chunks + 1 else None


async def _one(session: aiohttp.ClientSession, url: str, chunks: int, gap_ms: float, sample: Sample) -> None:
    headers = {"content-type": "application/json", "x-bench-chunks": str(chunks), "x-bench-gap-ms": str(gap_ms)}
    start, arrivals = time.time_ns(), []
    async with session.post(url, data=BODY, headers=headers) as response:
        async for data in response.content.iter_any():
            arrivals.append((time.time_ns(), data))
    lags = read_stream(arrivals, chunks) if response.status == 200 else None
    if lags is None:
        sample.errors += 1
        return
    sample.lags_ms += lags
    sample.ttlb_ms.append((arrivals[-1][0] - start) / 1e6)


async def _run(url: str, requests: int, concurrency: int, chunks: int, gap_ms: float) -> Sample:
    sample, queue = Sample(), list(range(requests))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:

        async def worker() -> None:
            while queue:
                queue.pop()
                await _one(session, url, chunks, gap_ms, sample)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sample


def _p(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the setups, print a table (medians over rounds)."""
    p = argparse.ArgumentParser(prog="python -m bench.sse_usage", description=__doc__.split("\n\n")[0])
    p.add_argument("--chunks", type=int, default=50)
    p.add_argument("--gap-ms", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--requests", type=int, default=100, help="measured requests per setup, concurrency and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--serve-upstream", type=int, nargs="+", metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_upstream:
        _serve_upstream(args.serve_upstream)
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="model-router-sse-bench-"))
    ports = {c: free_port() for c in UPSTREAM_CLUSTERS}
    argv_up = [sys.executable, "-m", "bench.sse_usage", "--serve-upstream", *map(str, ports.values())]
    upstream = spawn(argv_up, workdir / "upstream.log")
    deployments: list[Deployment] = []
    rows: dict[tuple[str, int], list[tuple[Sample, float, float]]] = {}
    try:
        log = workdir / "upstream.log"
        wait_until(lambda: "ready" in log.read_text(), "sse upstream", upstream, log, 20)
        for spec in SETUPS:
            deployment = Deployment(spec, workdir / spec.name, ports)
            deployments.append(deployment)
            deployment.start()
        for _ in range(args.rounds):
            for concurrency in args.concurrency:
                for d in deployments:
                    url = d.url + "/v1/chat/completions"
                    asyncio.run(_run(url, 3, 1, args.chunks, args.gap_ms))  # warm-up
                    pids = (d.ext_proc_pids, [d.envoy_pid])
                    before = [process_cpu_seconds(p) for p in pids]
                    sample = asyncio.run(_run(url, args.requests, concurrency, args.chunks, args.gap_ms))
                    router, envoy = (process_cpu_seconds(p) - b for p, b in zip(pids, before, strict=True))
                    per = 1e6 / args.requests
                    rows.setdefault((d.spec.name, concurrency), []).append((sample, router * per, envoy * per))
    finally:
        for d in deployments:
            d.stop()
        upstream.terminate()
        try:
            upstream.wait(10)
        except subprocess.TimeoutExpired:
            upstream.kill()
    print(f"\n{args.chunks} chunks {args.gap_ms:g} ms apart, {args.requests} requests x {args.rounds} rounds (medians)")
    print(f"{'setup':<10} {'c':>3} {'lag p50':>8} {'lag p99':>8} {'ttlb p50':>9} {'ttlb p99':>9} "
          f"{'router µs/req':>14} {'envoy µs/req':>13} {'errors':>6}")  # fmt: skip
    for (name, concurrency), runs in rows.items():
        med = statistics.median
        print(
            f"{name:<10} {concurrency:>3} {med(_p(s.lags_ms, 0.5) for s, _, _ in runs):>8.2f} "
            f"{med(_p(s.lags_ms, 0.99) for s, _, _ in runs):>8.2f} {med(_p(s.ttlb_ms, 0.5) for s, _, _ in runs):>9.1f} "
            f"{med(_p(s.ttlb_ms, 0.99) for s, _, _ in runs):>9.1f} {med(r for _, r, _ in runs):>14,.0f} "
            f"{med(e for _, _, e in runs):>13,.0f} {sum(s.errors for s, _, _ in runs):>6}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
