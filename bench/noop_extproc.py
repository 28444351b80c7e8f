"""The floor: a do-nothing ext_proc server built like the router, to measure what any Python ext_proc costs.

Same gRPC stack as ``extproc.server`` (grpc.aio on uvloop, ``grpc.so_reuseport``, the same message-size option,
a grpc.health.v1 service), served with the same Envoy processing modes (headers SEND, body BUFFERED). It answers
the headers message with a plain "continue" and the body message with what the router's answer costs at least:
the ``model`` value spliced by a byte search (no JSON parse, no classifier, no policy), ``content-length`` and
``clear_route_cache``. The difference between this and the router is the router's own work.

``python -m bench.noop_extproc --listen 127.0.0.1:PORT``
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

__all__ = ["NoopProcessor", "main", "splice_model"]

_FROM = b'"model":"auto"'
_TO = b'"model":"gpt-4o-mini"'
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def splice_model(raw: bytes) -> bytes:
    """``raw`` with the first compact ``"model":"auto"`` replaced (the bench's bodies are compact JSON)."""
    return raw.replace(_FROM, _TO, 1)


def _body_answer(raw: bytes) -> pb.ProcessingResponse:
    body = splice_model(raw)
    length = base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key="content-length", raw_value=str(len(body)).encode()),
        append_action=_OVERWRITE,
    )
    return pb.ProcessingResponse(
        request_body=pb.BodyResponse(
            response=pb.CommonResponse(
                header_mutation=pb.HeaderMutation(set_headers=[length]),
                body_mutation=pb.BodyMutation(body=body),
                clear_route_cache=True,
            )
        )
    )


class NoopProcessor(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]  # generated, untyped
    """Answers every message at once, and ends the stream after the body answer; only that answer carries a
    mutation."""

    async def Process(
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: Any
    ) -> AsyncIterator[pb.ProcessingResponse]:
        """One stream per HTTP request, as Envoy opens them."""
        async for msg in request_iterator:
            kind = msg.WhichOneof("request")
            if kind == "request_headers":
                yield pb.ProcessingResponse(request_headers=pb.HeadersResponse())
            elif kind == "request_body":
                yield _body_answer(msg.request_body.body)
                return  # as the router does: nothing more to answer, so Envoy holds no stream for the response
            elif kind == "response_headers":
                yield pb.ProcessingResponse(response_headers=pb.HeadersResponse())
            elif kind == "response_body":
                yield pb.ProcessingResponse(response_body=pb.BodyResponse())
            elif kind == "request_trailers":
                yield pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
            elif kind == "response_trailers":
                yield pb.ProcessingResponse(response_trailers=pb.TrailersResponse())


async def _serve(listen: str) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1), ("grpc.max_receive_message_length", 64 << 20)])
    pb_grpc.add_ExternalProcessorServicer_to_server(NoopProcessor(), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if server.add_insecure_port(listen) == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    print(f"noop ext_proc ready on {listen}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    """``python -m bench.noop_extproc --listen HOST:PORT``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True)
    args = parser.parse_args()
    import uvloop

    runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    with runner:
        runner.run(_serve(args.listen))


if __name__ == "__main__":
    main()
