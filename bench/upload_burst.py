"""Envoy's memory under a burst of large uploads: peak heap and RSS, and what a small request sees meanwhile.

Bodies of the router's APIs are buffered whole (up to 4 MiB) before the router reads them. Here ``--uploads``
HTTP/1.1 clients each declare a 4 MiB chat body, send all but its last 100 kB within ``--spread`` seconds of each
other and stall; a small chat request is sent every 0.25 s meanwhile. Envoy runs ``envoy/envoy.yaml`` (its
overload manager and 256 KiB connection buffer, README "Envoy settings", "Memory") with the router's heuristic
classifier; ``--no-overload`` removes the overload manager and ``--listener-buffer`` sets the connection buffer,
for the comparison. Heap in use is what the overload manager reads (admin ``/memory``: heap minus free and unmapped
pages), sampled every 20 ms.

``python -m bench.upload_burst [--uploads 150] [--spread 0.25] [--hold 3] [--no-overload] [--listener-buffer N]``
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.procstat import resident_kib
from devstack.stack import Stack

__all__ = ["main"]

BODY_BYTES = 4 << 20
SMALL = orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": "What is the capital of France?"}]})


def _stall(port: int, opened: list[socket.socket]) -> None:
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        opened.append(sock)
        head = "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        sock.sendall(f"{head}content-length: {BODY_BYTES}\r\n\r\n".encode())
        sock.sendall(b'{"model":"auto","messages":[{"role":"user","content":"' + b"a" * (BODY_BYTES - 100_000))
    except OSError:  # refused, reset or answered by Envoy's load shedding
        pass


def _patch(overload: bool, listener_buffer: int | None) -> Callable[[dict[str, Any]], None]:
    def patch(cfg: dict[str, Any]) -> None:
        if not overload:
            cfg.pop("overload_manager", None)
        if listener_buffer is not None:
            cfg["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] = listener_buffer

    return patch


def _heap_in_use(admin_port: int) -> int:
    memory = httpx.get(f"http://127.0.0.1:{admin_port}/memory", timeout=5).json()
    return int(memory["heap_size"]) - int(memory["pageheap_free"]) - int(memory["pageheap_unmapped"])


def _probe(url: str) -> str:
    try:
        r = httpx.post(url, content=SMALL, headers={"content-type": "application/json"}, timeout=5)
    except httpx.TransportError as exc:
        return type(exc).__name__
    return str(r.status_code)


def _recovers(url: str, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _probe(url) == "200":
            return True
        time.sleep(0.5)
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run one burst, print the figures."""
    p = argparse.ArgumentParser(prog="python -m bench.upload_burst", description=__doc__.split("\n\n")[0])
    p.add_argument("--uploads", type=int, default=150, help="stalled 4 MiB uploads (default 150)")
    p.add_argument("--spread", type=float, default=0.25, help="seconds over which they start (default 0.25)")
    p.add_argument("--hold", type=float, default=3.0, help="seconds they stay stalled once all started (default 3)")
    p.add_argument("--no-overload", action="store_true", help="remove Envoy's overload manager")
    p.add_argument("--listener-buffer", type=int, help="the listener's per_connection_buffer_limit_bytes")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="model-router-burst-"))
    patch = _patch(not args.no_overload, args.listener_buffer)
    stack = Stack(workdir=workdir, router_overrides={"classifier": {"kind": "heuristic"}}, envoy_patch=patch)
    peak = {"heap": 0, "rss": 0}
    probes: collections.Counter[str] = collections.Counter()
    opened: list[socket.socket] = []
    done = threading.Event()
    try:
        stack.start()
        url, envoy_pid = stack.base_url + "/v1/chat/completions", stack.procs["envoy"].pid
        idle = _heap_in_use(stack.admin_port)

        def sample() -> None:
            while not done.is_set():
                with contextlib.suppress(httpx.HTTPError, OSError, ValueError):
                    peak["heap"] = max(peak["heap"], _heap_in_use(stack.admin_port))
                    peak["rss"] = max(peak["rss"], resident_kib(envoy_pid) << 10)
                time.sleep(0.02)

        def probe() -> None:
            while not done.is_set():
                probes[_probe(url)] += 1
                time.sleep(0.25)

        threads = [threading.Thread(target=f, daemon=True) for f in (sample, probe)]
        for t in threads:
            t.start()
        uploads = []
        for _ in range(args.uploads):
            t = threading.Thread(target=_stall, args=(stack.envoy_port, opened), daemon=True)
            t.start()
            uploads.append(t)
            time.sleep(args.spread / max(args.uploads, 1))
        for t in uploads:
            t.join(10)
        time.sleep(args.hold)
        done.set()
        for t in threads:
            t.join(10)
        for sock in opened:
            sock.close()
        recovered = _recovers(url)
        alive = stack.procs["envoy"].poll() is None
    finally:
        done.set()
        for sock in opened:
            sock.close()
        stack.stop()
    print(
        f"{args.uploads} stalled 4 MiB uploads over {args.spread:g} s, overload manager "
        f"{'off' if args.no_overload else 'on'}, listener buffer {args.listener_buffer or 'as shipped'}"
    )
    print(f"  heap in use: idle {idle / 2**20:.1f} MiB, peak {peak['heap'] / 2**20:.1f} MiB")
    print(f"  Envoy RSS peak: {peak['rss'] / 2**20:.1f} MiB")
    print(f"  small requests meanwhile: {dict(probes)}")
    print(f"  Envoy alive: {alive}; a small request answered 200 after the uploads closed: {recovered}")
    return 0 if alive and recovered else 1


if __name__ == "__main__":
    sys.exit(main())
