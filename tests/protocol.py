"""Helpers to build ext_proc messages and replay a full request cycle through a handler."""

from __future__ import annotations

from collections.abc import Mapping

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from extproc.stream import StreamHandler


def headers_msg(
    headers: Mapping[str, str], end_of_stream: bool = False, body_mode: int | None = None
) -> pb.ProcessingRequest:
    """A request-headers message as Envoy sends it (values in ``raw_value``); ``body_mode`` is the request body mode
    Envoy announces in the stream's first message (``protocol_config``; older Envoys send none)."""
    msg = pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
            ),
            end_of_stream=end_of_stream,
        )
    )
    if body_mode is not None:
        msg.protocol_config.request_body_mode = body_mode  # type: ignore[assignment]
    return msg


def body_msg(body: bytes, end_of_stream: bool = True) -> pb.ProcessingRequest:
    """A request-body message."""
    return pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=end_of_stream))


def chat_headers(path: str = "/v1/chat/completions", **extra: str) -> dict[str, str]:
    """Headers of a typical JSON POST."""
    return {":method": "POST", ":path": path, "content-type": "application/json", **extra}


async def replay(handler: StreamHandler, headers: Mapping[str, str], body: bytes) -> list[pb.ProcessingResponse]:
    """Send headers then a buffered body; return every response in order."""
    out = await handler.handle(headers_msg(headers))
    out += await handler.handle(body_msg(body))
    return out


def router_metadata(response: pb.ProcessingResponse) -> dict[str, str]:
    """The ``model_router`` dynamic metadata of an answer (what Envoy's access log and fail-open filter read)."""
    fields = response.dynamic_metadata.fields
    if "model_router" not in fields:
        return {}
    return {k: v.string_value for k, v in fields["model_router"].struct_value.fields.items()}


def forwards_unchanged(response: pb.ProcessingResponse, outcome: str | None = "passthrough") -> bool:
    """A body answer that changes nothing (no header or body mutation); with ``outcome``, it also tells Envoy's
    fail-open filter that the router answered (``None``: no metadata at all, the handler's error boundary)."""
    if response.WhichOneof("response") != "request_body" or response.request_body.HasField("response"):
        return False
    return router_metadata(response).get("outcome") == outcome
