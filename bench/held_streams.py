"""What a response still streaming costs the router: open router streams, its memory, and how it stops.

An LLM answer can stream for minutes after its decision. Here ``--streams`` SSE answers are held open at once (each
after its first event: the fake upstreams' ``POST /_hold``), each decided while the earlier ones still stream. With
them in flight the script reads Envoy's open streams to the router (``cluster.model_router.upstream_rq_active``)
and the router's resident memory, then sends the router SIGTERM and times its exit (it drains streams for up to
``server.grace_seconds``, 10 s in ``envoy/model-router.yaml``), releases the answers and counts those that arrived
whole. ``--router-root`` runs the router from another checkout: the A/B of a router change.

``python -m bench.held_streams [--streams 200] [--router-root DIR]``
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import orjson

from bench.deploy import Deployment, SetupSpec
from bench.procstat import resident_kib
from devstack.stack import ROOT, Stack

__all__ = ["main"]

BODY = orjson.dumps(
    {"model": "auto", "messages": [{"role": "user", "content": "Explain how a hash map works."}], "stream": True}
)


async def _measure(deployment: Deployment, upstreams: Stack, streams: int) -> dict[str, float]:
    stack, (router,) = deployment.stack, deployment.workers
    assert stack is not None
    url, failed_stat = deployment.url + "/v1/chat/completions", "http.llm.ext_proc.streams_failed"
    rss_before, failed_before = resident_kib(router.pid), stack.envoy_stat(failed_stat)
    limits = httpx.Limits(max_connections=streams + 10)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        held: list[tuple[httpx.Response, AsyncIterator[bytes]]] = []
        upstreams.hold_streams(after=1)
        try:
            for _ in range(streams):
                request = client.build_request("POST", url, content=BODY, headers={"content-type": "application/json"})
                response = await client.send(request, stream=True)
                chunks = response.aiter_raw()
                await anext(chunks)  # its first event arrived; the upstream holds the rest
                held.append((response, chunks))
            await asyncio.sleep(0.5)
            open_streams = stack.envoy_stat("cluster.model_router.upstream_rq_active")
            rss_held = resident_kib(router.pid)
            start = time.monotonic()
            router.send_signal(signal.SIGTERM)
            await asyncio.to_thread(router.wait, 60)
            exit_seconds = time.monotonic() - start
            upstreams.hold_streams(after=0)
            whole = 0
            for _, chunks in held:
                whole += b"".join([c async for c in chunks]).endswith(b"data: [DONE]\n\n")
        finally:
            upstreams.hold_streams(after=0)
            for response, _ in held:
                await response.aclose()
    return {
        "open_router_streams": open_streams,
        "router_rss_growth_mib": (rss_held - rss_before) / 1024,
        "sigterm_exit_s": exit_seconds,
        "failed_ext_proc_streams": stack.envoy_stat(failed_stat) - failed_before,
        "answers_whole": whole,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Hold the answers, measure, print one line per figure."""
    p = argparse.ArgumentParser(prog="python -m bench.held_streams", description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=200, help="answers streaming at once (default 200)")
    p.add_argument("--router-root", type=Path, default=ROOT, help="run the router from another checkout")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="model-router-held-"))
    upstreams = Stack(workdir=workdir / "upstreams")
    upstreams.workdir.mkdir(parents=True)
    deployment = Deployment(
        SetupSpec("held", "router", classifier="heuristic"),
        workdir / "router",
        upstreams.upstream_ports,
        router_root=args.router_root,
    )
    try:
        upstreams.start_upstreams()
        deployment.start()
        figures = asyncio.run(_measure(deployment, upstreams, args.streams))
    finally:
        deployment.stop()
        upstreams.stop()
    print(f"{args.streams} answers streaming at once, router from {args.router_root}")
    for name, value in figures.items():
        print(f"  {name:<24} {value:,.2f}")
    return 0 if figures["answers_whole"] == args.streams else 1


if __name__ == "__main__":
    sys.exit(main())
