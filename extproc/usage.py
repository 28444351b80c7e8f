"""Reads the real token usage from an upstream response as it streams back through Envoy.

Off by default (``telemetry.response_usage``); the chunks come from Envoy's observability-mode ext_proc filter
(``extproc/observe.py``), copies that the response does not wait for. JSON bodies are buffered up to a
cap and parsed at the end (past the cap, only the last 64 KiB are kept and the last ``"usage"`` object in them is
read: the APIs put it after the output); SSE streams are scanned line by line and only ``data:`` events that
mention ``usage`` are parsed (OpenAI chat/completions final chunk with ``stream_options.include_usage``, Responses
``response.completed``, Anthropic ``message_start``/``message_delta``).
"""

from __future__ import annotations

import contextlib
import json
import re
import zlib
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["Usage", "UsageScanner"]

_INPUT_KEYS = ("prompt_tokens", "input_tokens")
_SSE_FIELDS = (b"data:", b"event:", b"id:", b"retry:", b":")
_LONGEST_FIELD = 6
_BOM = b"\xef\xbb\xbf"
_GZIP = b"\x1f\x8b"
_MAX_INFLATE = 256
_LINE_END = re.compile(rb"\r\n|\r|\n")
_OUTPUT_KEYS = ("completion_tokens", "output_tokens")
_TAIL_BYTES = 64 * 1024
_USAGE_KEY = b'"usage"'
_USAGE_WINDOW = 4096  # a usage object is a few hundred bytes
_TAIL_TRIES = 8  # the last few "usage" strings of the tail, not every one an upstream can pack into 64 KiB
_DECODER = json.JSONDecoder()


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
    """Feed response chunks in order; ``finish()`` returns the usage, or None if the response reported none.

    Every step costs time in proportion to the chunk, never to what came before: leading whitespace is dropped as it
    arrives, SSE lines are cut at ``\\n``, ``\\r\\n`` or ``\\r`` (the SSE spec allows all three) by searching only
    the new chunk, and a line longer than the cap is dropped whole rather than cut. A gzip body (the OpenAI SDK asks
    for gzip) is inflated as it streams, at most ``_MAX_INFLATE`` times the compressed size (a bomb gives no usage,
    not memory).
    """

    def __init__(self, max_json_bytes: int = 1 << 20) -> None:
        self._max = max_json_bytes
        self._prefix: bytes | None = b""  # the first raw bytes, until gzip or not is known
        self._inflate: Any = None
        self._head = b""  # the first bytes after whitespace (and a BOM), until SSE or JSON is known
        self._sse: bool | None = None
        self._buffer = bytearray()
        self._skip_line = False
        self._overflow = False
        self._tail: bytes | None = None  # a JSON body past the cap: its last _TAIL_BYTES
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
        if self._overflow:  # a JSON body over the cap, a gzip bomb or a corrupt gzip stream: nothing more to read
            return
        if self._prefix is not None:
            self._prefix += chunk
            if len(self._prefix) < len(_GZIP):
                return
            chunk, self._prefix = self._prefix, None
            if chunk.startswith(_GZIP):
                self._inflate = zlib.decompressobj(wbits=31)
        if self._inflate is not None:
            chunk = self._inflated(chunk)
        self._feed_text(chunk)

    def _inflated(self, chunk: bytes) -> bytes:
        try:
            out: bytes = self._inflate.decompress(chunk, _MAX_INFLATE * len(chunk) + (1 << 20))
        except zlib.error:
            self._overflow = True
            return b""
        if self._inflate.unconsumed_tail:  # more than the ratio allows: a bomb, not a response
            self._overflow = True
            return b""
        return out

    def _feed_text(self, data: bytes) -> None:
        if self._overflow:
            return
        if self._sse is None:
            data = self._head + (data if self._head else data.lstrip())
            if data.startswith(_BOM):
                data = data[len(_BOM) :].lstrip()
            if len(data) < _LONGEST_FIELD and not data.startswith((b"{", b"[")):
                self._head = data
                return  # too little to tell SSE from JSON yet
            self._head = b""
            self._sse = data.startswith(_SSE_FIELDS)
        if self._sse:
            self._feed_sse(data)
        elif self._tail is not None:
            self._tail = (self._tail + data)[-_TAIL_BYTES:]
        else:
            self._buffer += data
            if len(self._buffer) > self._max:
                self._tail, self._buffer = bytes(self._buffer[-_TAIL_BYTES:]), bytearray()

    def _feed_sse(self, data: bytes) -> None:
        start = 0
        for end in _LINE_END.finditer(data):
            self._end_line(data[start : end.start()])
            start = end.end()
        if not self._skip_line:
            self._buffer += data[start:]
            if len(self._buffer) > self._max:
                self._skip_line, self._buffer = True, bytearray()

    def _end_line(self, piece: bytes) -> None:
        if self._skip_line:
            self._skip_line = False  # the end of a line that outgrew the cap: dropped whole
        elif self._buffer:
            self._buffer += piece
            self._scan_line(bytes(self._buffer))
        else:
            self._scan_line(piece)
        self._buffer.clear()

    def finish(self) -> Usage | None:
        """The usage seen, once the response has ended."""
        if self._prefix:
            self._feed_text(self._prefix)
        if self._sse:
            self._end_line(b"")
        elif self._tail is not None:
            self._take_from_tail(self._tail)
        elif not self._overflow and (self._buffer or self._head):  # JSON, or too short to tell: try it as JSON
            with contextlib.suppress(orjson.JSONDecodeError):
                self._take(orjson.loads(bytes(self._buffer or self._head)))
        self._buffer = bytearray()
        if self._input is None and self._output is None:
            return None
        return Usage(self._input or 0, self._output or 0)

    @property
    def unreadable(self) -> bool:
        """The response could not be read whole (a JSON body past the cap, a gzip bomb or corrupt gzip): a missing
        usage then means "not found", not "not reported"."""
        return self._overflow or self._tail is not None

    def _take_from_tail(self, tail: bytes) -> None:
        """The last ``"usage": {...}`` object in the end of an oversized JSON body. Inside a JSON string a quote is
        escaped, so an unescaped ``"usage"`` followed by a colon is a key."""
        at = tail.rfind(_USAGE_KEY)
        for _ in range(_TAIL_TRIES):
            if at < 0:
                return
            rest = tail[at + len(_USAGE_KEY) : at + len(_USAGE_KEY) + _USAGE_WINDOW].lstrip()
            if rest.startswith(b":"):
                with contextlib.suppress(ValueError):
                    value, _ = _DECODER.raw_decode(rest[1:].lstrip().decode("utf-8", "replace"))
                    if isinstance(value, dict):
                        self._take({"usage": value})
                        return
            at = tail.rfind(_USAGE_KEY, 0, at)
