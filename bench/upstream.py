"""A minimal, fast HTTP/1.1 upstream for the benchmark: reads each whole request body, answers a fixed completion.

Why not ``devstack.upstream``: aiohttp costs far more CPU per request than Envoy itself, so at concurrency 64 it
would be the bottleneck of "Envoy alone" and hide the router's cost. This is a raw uvloop ``Protocol``: it frames
requests by ``Content-Length`` (so Envoy must send the whole body, and ext_proc sees it), keeps connections alive,
and answers a small fixed ``chat.completion`` JSON.

It also counts, per listening port, the requests whose body still says ``"model":"auto"``: behind an ext_proc
server every body should have been rewritten, so an unmodified one means Envoy failed open (ext_proc timeout or
error) and the benchmark counts it as an error. ``GET /_stats`` returns the counters as JSON.

``python -m bench.upstream --port P [--port P2 ...]`` serves every port from one process.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import signal
from dataclasses import dataclass, field
from typing import cast

__all__ = ["Counters", "UpstreamProtocol", "main"]

_UNROUTED = b'"model":"auto"'
_BODY = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":0,"model":"bench",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"ok","refusal":null},'
    b'"logprobs":null,"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}'
)
_OK = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(_BODY)).encode()
    + b"\r\n\r\n"
    + _BODY
)
_CHUNKED = b"HTTP/1.1 411 Length Required\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_MAX_HEAD = 64 * 1024


@dataclass
class Counters:
    """Requests answered and requests that arrived unrouted, per listening port."""

    requests: dict[int, int] = field(default_factory=dict)
    unrouted: dict[int, int] = field(default_factory=dict)

    def as_json(self) -> bytes:
        """The counters, keys as strings."""
        return json.dumps(
            {
                "requests": {str(k): v for k, v in self.requests.items()},
                "unrouted": {str(k): v for k, v in self.unrouted.items()},
            }
        ).encode()


def _content_length(head: bytes) -> int | None:
    """The Content-Length of a request head; None if the body is chunked (not supported here)."""
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding":
            return None
    return length


class UpstreamProtocol(asyncio.Protocol):
    """One keep-alive connection: frame requests by Content-Length, answer each with the fixed body."""

    def __init__(self, port: int, counters: Counters) -> None:
        self._port = port
        self._counters = counters
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        """Answer every complete request in the buffer."""
        self._buf += data
        transport = self._transport
        assert transport is not None
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > _MAX_HEAD:
                    transport.close()
                return
            head = bytes(self._buf[:end])
            length = _content_length(head)
            if length is None:
                transport.write(_CHUNKED)
                transport.close()
                return
            total = end + 4 + length
            if len(self._buf) < total:
                return
            body = bytes(self._buf[end + 4 : total])
            del self._buf[:total]
            if head.startswith(b"GET /_stats"):
                stats = self._counters.as_json()
                transport.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                    + str(len(stats)).encode()
                    + b"\r\n\r\n"
                    + stats
                )
                continue
            c = self._counters
            c.requests[self._port] = c.requests.get(self._port, 0) + 1
            if _UNROUTED in body:
                c.unrouted[self._port] = c.unrouted.get(self._port, 0) + 1
            transport.write(_OK)


async def _serve(ports: list[int]) -> None:
    loop = asyncio.get_running_loop()
    counters = Counters()
    servers = []
    for port in ports:
        counters.requests[port] = 0
        counters.unrouted[port] = 0
        servers.append(
            await loop.create_server(
                functools.partial(UpstreamProtocol, port, counters),
                "127.0.0.1",
                port,
                reuse_port=True,
                backlog=1024,
            )
        )
    print(f"bench upstream ready on {ports}", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def main() -> None:
    """``python -m bench.upstream --port P [--port P ...]``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, action="append", required=True)
    args = parser.parse_args()
    import uvloop

    uvloop.run(_serve(args.port))


if __name__ == "__main__":
    main()
