"""Opt-in capture of decided requests' prompts, as ``../shared/EVAL.md`` lines to label later.

The router's own traffic is the best training data for its classifier, but prompts are personal data: capture is
off by default (``capture.enabled``), sampled (``capture.sample_rate``), kept only in one local file with mode 0600,
bounded in size and age (:mod:`extproc.spool`), and never put in spans, metrics or logs. One line per captured
decision::

    {"id": <decision id>, "messages": [...], "captured_unix": ..., "schema": ..., "outcome": ...,
     "requested_model": ..., "selected_model": ..., "tenant": ...}

``messages`` is an OpenAI chat ``messages`` list, EVAL.md's form: a Chat Completions request's own messages (the
classifier reads their last user turn, as ``model-router eval`` does); for the other APIs, the text the server
classified (:meth:`~extproc.schemas.ApiSchema.prompt_text`) as one user turn — the live and offline paths then
read the same text, and no API is converted into another.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from extproc.config import CaptureSettings
from extproc.policy import Reason
from extproc.record import DecisionRecord, Outcome
from extproc.request import ParsedRequest
from extproc.schemas.openai_chat import OpenAIChat
from extproc.spool import Spool, SpoolTarget, rotated_path

__all__ = ["CAPTURED_OUTCOMES", "TIME_KEY", "PromptCapture", "capture_line", "capture_messages"]

CAPTURED_OUTCOMES = frozenset({Outcome.ROUTED, Outcome.FALLBACK, Outcome.SHADOW})
"""Decisions worth labelling: the router chose (or would have chosen) a model for the prompt, unless a trusted
caller pinned the model (``trusted_override``: ``model-router label`` replays captured prompts that way)."""
PINNED = Reason.TRUSTED_OVERRIDE.value
TIME_KEY = "captured_unix"


def capture_messages(parsed: ParsedRequest) -> list[Any]:
    """The request's prompt as an OpenAI chat ``messages`` list (see the module docstring)."""
    if isinstance(parsed.schema, OpenAIChat):
        messages = parsed.body.get("messages")
        return [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
    return [{"role": "user", "content": parsed.prompt_text}]


def capture_line(rec: DecisionRecord, parsed: ParsedRequest) -> dict[str, Any]:
    """The capture line of one decision."""
    return {
        "id": rec.decision_id,
        "messages": capture_messages(parsed),
        TIME_KEY: round(rec.started_unix_ns / 1e9, 3),
        "schema": parsed.schema.name,
        "outcome": rec.outcome.value,
        "requested_model": rec.requested_model,
        "selected_model": rec.selected_model,
        "tenant": rec.tenant,
    }


class PromptCapture:
    """Samples decided requests and hands their capture lines to a :class:`~extproc.spool.Spool`."""

    def __init__(self, spool: Spool, rng: Callable[[], float] = random.random) -> None:
        self._spool = spool
        self._rng = rng

    def configure(self, settings: CaptureSettings) -> None:
        """Point the writer at the configured file; when capture is off, only at files left from before (so their
        lines still expire), never creating one."""
        path = settings.path
        keep = path is not None and (settings.enabled or path.exists() or rotated_path(path).exists())
        target = SpoolTarget(path, settings.max_bytes, settings.ttl_hours * 3600.0) if keep and path else None
        self._spool.configure(target)

    def offer(self, settings: CaptureSettings, rec: DecisionRecord, parsed: ParsedRequest) -> bool:
        """Capture this decision's prompt if capture is on and the sample says so; never blocks."""
        if not settings.enabled or rec.outcome not in CAPTURED_OUTCOMES or not parsed.prompt_text.strip():
            return False
        if rec.reason == PINNED:  # a labeller's (or operator's) pinned replay: capturing it would label it again
            return False
        if self._rng() >= settings.sample_rate:
            return False
        return self._spool.offer(capture_line(rec, parsed))

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued and stop the writer."""
        self._spool.close(timeout)
