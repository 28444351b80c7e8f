"""``POST /v1/feedback`` over HTTP: the gRPC ``Feedback`` method for applications that only speak HTTP.

Both go through the same :class:`~extproc.feedback.FeedbackRecorder`. The server is the standard library's threaded
WSGI server, bounded (``extproc/wsgi_server.py``, as for ``/metrics``): each request is handled on its own thread,
never on the event loop. It listens on ``feedback.listen``, its own port rather than the metrics one, because it
accepts writes and the metrics port is often open to every scraper. ``envoy/envoy.yaml`` forwards
``/model-router/v1/feedback`` here, so an application can post through the gateway. Request::

    POST /v1/feedback  {"decision_id": "3f2a...", "score": 1, "model": "gpt-4o-mini"}   (model optional)
    POST /v1/feedback  {"feedback_token": "v1....", "score": 1}    (any replica with the signing key)

and either may carry ``"idempotency_key"`` (the same on every retry of one score; ``model-router outcomes`` counts
the score once).

Answers: 200 ``{"decision_id", "model", "score"}``; 400 / 404 / 503 ``{"error": {"code", "message"}}`` (also 405,
411, 413 for the wrong method, neither a length nor chunked encoding, or a body over 4 KiB; chunked bodies, which
Envoy sends for HTTP/2 requests without ``content-length``, are decoded here). No access log: Envoy keeps one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import orjson

from extproc.feedback import FeedbackRecorder, FeedbackStatus
from extproc.wsgi_server import serve_wsgi

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["FEEDBACK_PATH", "MAX_BODY_BYTES", "feedback_app", "start_feedback_server"]

FEEDBACK_PATH = "/v1/feedback"
MAX_BODY_BYTES = 4096
_FIELDS = ("decision_id", "score", "model", "feedback_token", "idempotency_key")
_STATUS = {
    FeedbackStatus.RECORDED: "200 OK",
    FeedbackStatus.INVALID: "400 Bad Request",
    FeedbackStatus.NOT_FOUND: "404 Not Found",
    FeedbackStatus.UNAVAILABLE: "503 Service Unavailable",
    FeedbackStatus.TOO_MANY: "429 Too Many Requests",
}


def _reply(
    start_response: StartResponse, status: str, body: dict[str, Any], extra: Iterable[tuple[str, str]] = ()
) -> list[bytes]:
    data = orjson.dumps(body)
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *extra])
    return [data]


def _error(start_response: StartResponse, status: str, code: str, message: str, *extra: tuple[str, str]) -> list[bytes]:
    return _reply(start_response, status, {"error": {"code": code, "message": message}}, extra)


class _TooLarge(Exception):
    """The body is over :data:`MAX_BODY_BYTES` (413)."""


def _read_chunked(stream: Any, limit: int) -> bytes:
    """A ``Transfer-Encoding: chunked`` body (what Envoy forwards for an HTTP/2 request without ``content-length``;
    the standard library's WSGI server does not decode it). :class:`_TooLarge` past ``limit`` bytes, ValueError if
    malformed. Trailers are read and ignored; the server closes the connection after each request."""
    body = b""
    for _ in range(limit + 1):  # a chunk holds at least one byte: more chunks than that is over the limit anyway
        size = int(stream.readline(80).split(b";", 1)[0].strip() or b"x", 16)
        if size < 0:
            raise ValueError("negative chunk size")
        if size == 0:
            for _ in range(64):  # trailers, up to the blank line
                if not stream.readline(1024).strip():
                    return body
            raise ValueError("too many trailers")
        if len(body) + size > limit:
            raise _TooLarge
        chunk = stream.read(size)
        if len(chunk) != size or stream.readline(4).strip():
            raise ValueError("chunk shorter than its size")
        body += chunk
    raise _TooLarge


def _read_body(environ: WSGIEnvironment) -> bytes | None:
    """The request body; None when there is neither a length nor chunked encoding (411). :class:`_TooLarge` past
    :data:`MAX_BODY_BYTES`, ValueError if malformed."""
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return _read_chunked(environ["wsgi.input"], MAX_BODY_BYTES)
    try:
        length = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None
    if length < 0 or length > MAX_BODY_BYTES:
        raise _TooLarge
    data: bytes = environ["wsgi.input"].read(length)
    return data


def _read_json(environ: WSGIEnvironment, start_response: StartResponse) -> dict[str, Any] | list[bytes]:
    """The request's JSON object, or the error response already started."""
    try:
        raw = _read_body(environ)
    except _TooLarge:
        return _error(start_response, "413 Content Too Large", "too_large", f"body: at most {MAX_BODY_BYTES} bytes")
    except ValueError:
        return _error(start_response, "400 Bad Request", "invalid_argument", "body: malformed chunked encoding")
    if raw is None:
        message = "Content-Length or Transfer-Encoding: chunked: required"
        return _error(start_response, "411 Length Required", "length_required", message)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _error(start_response, "400 Bad Request", "invalid_argument", "body: not valid JSON")
    if not isinstance(body, dict):
        return _error(start_response, "400 Bad Request", "invalid_argument", "body: expected a JSON object")
    if not set(body) <= set(_FIELDS):
        message = f"body: unknown field (allowed: {', '.join(_FIELDS)})"
        return _error(start_response, "400 Bad Request", "invalid_argument", message)
    try:
        repeated = _repeated_field(raw)
    except RecursionError:  # the stdlib parser's limit (about 1,000 levels) is below orjson's (1,024)
        return _error(start_response, "400 Bad Request", "invalid_argument", "body: nested too deeply")
    if repeated:  # parsers disagree on which copy counts (orjson: the last): refuse rather than guess
        return _error(start_response, "400 Bad Request", "invalid_argument", f"{repeated}: given more than once")
    return body


def _repeated_field(raw: bytes) -> str | None:
    """A top-level field the body gives twice (the body is a JSON object with only known fields, at most 4 KiB)."""
    objects: list[list[tuple[str, Any]]] = []

    def keep(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        objects.append(pairs)
        return dict(pairs)

    json.loads(raw, object_pairs_hook=keep)
    names = [name for name, _ in objects[-1]]  # the outermost object is completed last
    return next((name for name in _FIELDS if names.count(name) > 1), None)


def feedback_app(recorder: FeedbackRecorder) -> WSGIApplication:
    """The WSGI application serving ``POST /v1/feedback`` (every other path is 404)."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != FEEDBACK_PATH:
            return _error(start_response, "404 Not Found", "not_found", f"no such route; POST {FEEDBACK_PATH}")
        if environ.get("REQUEST_METHOD") != "POST":
            return _error(start_response, "405 Method Not Allowed", "method_not_allowed", "use POST", ("Allow", "POST"))
        body = _read_json(environ, start_response)
        if isinstance(body, list):
            return body
        result = recorder.submit(
            body.get("decision_id"),
            body.get("score"),
            body.get("model"),
            source="http",
            token=body.get("feedback_token"),
            idempotency_key=body.get("idempotency_key"),
        )
        if result.status is FeedbackStatus.RECORDED:
            answer = {"decision_id": result.decision_id, "model": result.model, "score": result.score}
            return _reply(start_response, _STATUS[result.status], answer)
        return _error(start_response, _STATUS[result.status], result.status.value, result.message)

    return app


def start_feedback_server(listen: str, recorder: FeedbackRecorder, poll_interval: float = 0.5) -> Callable[[], None]:
    """Serve the feedback endpoint on ``listen`` (``host:port``, ``[v6]:port``) in a thread; return a stop function.

    ``poll_interval`` is how often the server checks for a stop request (the stop function waits up to that long).
    """
    return serve_wsgi(listen, feedback_app(recorder), "feedback-http", poll_interval)
