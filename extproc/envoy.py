"""Builders for ext_proc ``ProcessingResponse`` messages; no decisions are made here.

Header values are sent as ``raw_value`` bytes (the form Envoy itself uses on the ext_proc wire). Headers we own
are always overwritten, never appended.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import orjson
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2

__all__ = [
    "METADATA_NAMESPACE",
    "body_continue",
    "body_rewrite",
    "continue_for",
    "header_mutation",
    "headers_continue",
    "immediate_error",
    "response_headers_set",
]

METADATA_NAMESPACE = "model_router"
"""Dynamic-metadata namespace; Envoy must list it in ``metadata_options.receiving_namespaces.untyped``."""

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_MODE = processing_mode_pb2.ProcessingMode
# A mode override replaces every field, and DEFAULT means SEND for header phases: spell each one out.
_SKIP_BODY = _MODE(
    request_header_mode=_MODE.SKIP,
    response_header_mode=_MODE.SKIP,
    request_body_mode=_MODE.NONE,
    response_body_mode=_MODE.NONE,
    request_trailer_mode=_MODE.SKIP,
    response_trailer_mode=_MODE.SKIP,
)

_CONTINUE = {
    "request_headers": lambda: pb.ProcessingResponse(request_headers=pb.HeadersResponse()),
    "response_headers": lambda: pb.ProcessingResponse(response_headers=pb.HeadersResponse()),
    "request_body": lambda: pb.ProcessingResponse(request_body=pb.BodyResponse()),
    "response_body": lambda: pb.ProcessingResponse(response_body=pb.BodyResponse()),
    "request_trailers": lambda: pb.ProcessingResponse(request_trailers=pb.TrailersResponse()),
    "response_trailers": lambda: pb.ProcessingResponse(response_trailers=pb.TrailersResponse()),
}


def continue_for(kind: str) -> pb.ProcessingResponse | None:
    """The plain "continue, unmodified" answer to a message of ``kind``; None for a kind we cannot answer."""
    build = _CONTINUE.get(kind)
    return build() if build else None


def header_mutation(set_headers: Mapping[str, str], remove: Iterable[str] = ()) -> pb.HeaderMutation:
    """Overwrite ``set_headers`` and remove ``remove``."""
    return pb.HeaderMutation(
        set_headers=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=k, raw_value=v.encode()), append_action=_OVERWRITE
            )
            for k, v in set_headers.items()
        ],
        remove_headers=list(remove),
    )


def _dynamic(metadata: Mapping[str, str]) -> struct_pb2.Struct | None:
    """``metadata`` under the router's namespace (None for none)."""
    if not metadata:
        return None
    dynamic = struct_pb2.Struct()
    dynamic.get_or_create_struct(METADATA_NAMESPACE).update(dict(metadata))
    return dynamic


def headers_continue(
    remove: Iterable[str], skip_body: bool, metadata: Mapping[str, str] | None = None
) -> pb.ProcessingResponse:
    """Answer the request-headers message: drop ``remove``; ``skip_body`` asks Envoy not to send the body."""
    remove = list(remove)
    common = pb.CommonResponse(header_mutation=header_mutation({}, remove)) if remove else None
    return pb.ProcessingResponse(
        request_headers=pb.HeadersResponse(response=common),
        mode_override=_SKIP_BODY if skip_body else None,
        dynamic_metadata=_dynamic(metadata or {}),
    )


def body_continue(metadata: Mapping[str, str], set_headers: Mapping[str, str] | None = None) -> pb.ProcessingResponse:
    """Forward the body unchanged with ``metadata``; ``set_headers`` (a cluster header) also re-runs route
    selection."""
    common = None
    if set_headers:
        common = pb.CommonResponse(header_mutation=header_mutation(set_headers), clear_route_cache=True)
    return pb.ProcessingResponse(request_body=pb.BodyResponse(response=common), dynamic_metadata=_dynamic(metadata))


def body_rewrite(body: bytes, set_headers: Mapping[str, str], metadata: Mapping[str, str]) -> pb.ProcessingResponse:
    """Replace the request body, set headers (incl. ``content-length``) and re-run route selection."""
    return pb.ProcessingResponse(
        request_body=pb.BodyResponse(
            response=pb.CommonResponse(
                header_mutation=header_mutation({**set_headers, "content-length": str(len(body))}),
                body_mutation=pb.BodyMutation(body=body),
                clear_route_cache=True,
            )
        ),
        dynamic_metadata=_dynamic(metadata),
    )


def immediate_error(status: int, message: str, code: str, schema: str = "") -> pb.ProcessingResponse:
    """Answer the client directly with a JSON error in its API's shape (Anthropic's for ``anthropic.*`` schemas,
    else OpenAI's), so its SDK reads the message; the request goes no further."""
    if schema.startswith("anthropic."):
        error: dict[str, object] = {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    else:
        error = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    body = orjson.dumps(error)
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=status),
            headers=header_mutation({"content-type": "application/json"}),
            body=body,
            details=f"model_router_{code}",
        )
    )


def response_headers_set(set_headers: Mapping[str, str]) -> pb.ProcessingResponse:
    """Answer a response-headers message by overwriting ``set_headers`` (used only if Envoy sends that phase)."""
    return pb.ProcessingResponse(
        response_headers=pb.HeadersResponse(response=pb.CommonResponse(header_mutation=header_mutation(set_headers)))
    )
