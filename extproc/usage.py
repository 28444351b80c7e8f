"""Reads the real token usage from an upstream response as it streams back through Envoy.

Off by default (``telemetry.response_usage``): it makes Envoy send every response chunk to the router, which keeps
the ext_proc stream open for the whole response and adds a round trip per chunk. JSON bodies are buffered up to a
cap and parsed at the end; SSE streams are scanned line by line and only ``data:`` events that mention ``usage``
are parsed (OpenAI chat/completions final chunk with ``stream_options.include_usage``, Responses
``response.completed``, Anthropic ``message_start``/``message_delta``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["Usage", "UsageScanner"]

_INPUT_KEYS = ("prompt_tokens", "input_tokens")
_OUTPUT_KEYS = ("completion_tokens", "output_tokens")


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts the upstream reported."""

    input_tokens: int
    output_tokens: int


def _usage_objects(event: Any) -> list[dict[str, Any]]:
    if not isinstance(event, dict):
        return []
    found = [event.get("usage")]
    for wrapper in ("response", "message"):
        inner = event.get(wrapper)
        if isinstance(inner, dict):
            found.append(inner.get("usage"))
    return [u for u in found if isinstance(u, dict)]


def _count(usage: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = usage.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


class UsageScanner:
    """Feed response chunks in order; ``finish()`` returns the usage, or None if the response reported none."""

    def __init__(self, max_json_bytes: int = 1 << 20) -> None:
        self._max = max_json_bytes
        self._buffer = bytearray()
        self._sse: bool | None = None
        self._overflow = False
        self._input: int | None = None
        self._output: int | None = None

    def _take(self, event: Any) -> None:
        for usage in _usage_objects(event):
            tokens_in, tokens_out = _count(usage, _INPUT_KEYS), _count(usage, _OUTPUT_KEYS)
            if tokens_in is not None:
                self._input = max(tokens_in, self._input or 0)
            if tokens_out is not None:
                self._output = max(tokens_out, self._output or 0)

    def _scan_line(self, line: bytes) -> None:
        if line.startswith(b"data:") and b'"usage"' in line:
            with contextlib.suppress(orjson.JSONDecodeError):
                self._take(orjson.loads(line[5:].strip()))

    def feed(self, chunk: bytes) -> None:
        """Consume one response chunk."""
        if self._sse is None:
            self._buffer += chunk
            head = bytes(self._buffer).lstrip()
            if len(head) < 6 and not head.startswith((b"{", b"[")):
                return  # too little to tell SSE from JSON yet
            self._sse = head.startswith((b"data:", b"event:", b":"))
            chunk, self._buffer = bytes(self._buffer), bytearray()
        if self._sse:
            self._buffer += chunk
            *lines, rest = bytes(self._buffer).split(b"\n")
            self._buffer = bytearray(rest[: self._max])
            for line in lines:
                self._scan_line(line.rstrip(b"\r"))
        elif not self._overflow:
            self._buffer += chunk
            if len(self._buffer) > self._max:
                self._overflow, self._buffer = True, bytearray()

    def finish(self) -> Usage | None:
        """The usage seen, once the response has ended."""
        if self._sse:
            self._scan_line(bytes(self._buffer).rstrip(b"\r"))
        elif self._buffer and not self._overflow:  # JSON, or too short to tell: try it as JSON
            with contextlib.suppress(orjson.JSONDecodeError):
                self._take(orjson.loads(bytes(self._buffer)))
        self._buffer = bytearray()
        if self._input is None and self._output is None:
            return None
        return Usage(self._input or 0, self._output or 0)
