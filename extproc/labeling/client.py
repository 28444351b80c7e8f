"""One OpenAI-compatible Chat Completions endpoint (the gateway, or the judge), one attempt per call.

Every failure becomes a :class:`~extproc.labeling.retry.CallError` with a reason code and whether it is worth
retrying; retrying itself is :func:`~extproc.labeling.retry.with_retries`' job, so this stays one request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from extproc.labeling.retry import CallError, parse_retry_after

__all__ = ["ChatEndpoint", "ChatReply"]


@dataclass(frozen=True, slots=True)
class ChatReply:
    """The assistant text of a successful response, its reported token usage and its headers (lower-case names)."""

    text: str
    input_tokens: int | None
    output_tokens: int | None
    headers: Mapping[str, str] = field(default_factory=dict)


def _usage_tokens(usage: object, key: str) -> int | None:
    if not isinstance(usage, Mapping):
        return None
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _reply_of(response: httpx.Response) -> ChatReply:
    """The reply in a 2xx Chat Completions response; a body without assistant text is a ``bad_response``."""
    try:
        body = orjson.loads(response.content)
        message = body["choices"][0]["message"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        raise CallError("bad_response", retryable=True) from None
    text = message.get("content") if isinstance(message, Mapping) else None
    if not isinstance(text, str):
        raise CallError("no_content", retryable=False)
    usage = body.get("usage") if isinstance(body, Mapping) else None
    headers = {k.lower(): v for k, v in response.headers.items()}
    return ChatReply(text, _usage_tokens(usage, "prompt_tokens"), _usage_tokens(usage, "completion_tokens"), headers)


@dataclass(frozen=True, slots=True)
class ChatEndpoint:
    """``POST {base_url}/chat/completions`` with fixed headers, a timeout and a shared concurrency limit."""

    http: httpx.AsyncClient
    base_url: str
    headers: Mapping[str, str]
    timeout: float
    limiter: asyncio.Semaphore
    wall_clock: Callable[[], float]
    """For ``Retry-After`` given as an HTTP date."""

    @property
    def url(self) -> str:
        """The Chat Completions URL (``base_url`` ends where the OpenAI SDK's does, e.g. ``.../v1``)."""
        return self.base_url.rstrip("/") + "/chat/completions"

    async def complete(self, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> ChatReply:
        """Send one request; return the reply or raise ``CallError``."""
        all_headers = {**self.headers, **(headers or {}), "content-type": "application/json"}
        try:
            async with self.limiter:
                response = await self.http.post(
                    self.url, content=orjson.dumps(body), headers=all_headers, timeout=self.timeout
                )
        except httpx.TimeoutException:
            raise CallError("timeout", retryable=True) from None
        except httpx.TransportError:
            raise CallError("connection_error", retryable=True) from None
        except httpx.RequestError:  # e.g. a response body that cannot be decoded
            raise CallError("request_error", retryable=True) from None
        status = response.status_code
        if status == 429 or status >= 500:
            retry_after = parse_retry_after(response.headers.get("retry-after"), self.wall_clock())
            raise CallError(f"http_{status}", retryable=True, retry_after=retry_after)
        if not 200 <= status < 300:
            raise CallError(f"http_{status}", retryable=False)
        return _reply_of(response)
