"""What a stream hands to the learning-from-traffic features once it has decided: the decision store and capture.

The stream handler knows nothing about files or feedback; it calls one :class:`DecisionTap` method per decided
request (routed, fallback or shadow). :class:`LearningTap` is the server's: it remembers the decision for feedback,
signs its feedback token (which the stream passes to Envoy as dynamic metadata) and offers the prompt to the
capture. All are optional, so tests and ``model-router explain`` pass nothing.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from extproc.capture import PromptCapture
from extproc.config import Settings
from extproc.feedback import DecisionEntry, DecisionStore
from extproc.feedback_token import TokenSigner
from extproc.record import DecisionRecord, DecisionSink
from extproc.request import ParsedRequest

__all__ = ["DecisionTap", "LearningTap", "tap_safely"]

_log = logging.getLogger("model_router.tap")
_T = TypeVar("_T")


def tap_safely(sink: DecisionSink, call: Callable[..., _T], *args: Any) -> _T | None:
    """Call the tap; its failure is logged and counted (``tap_exception``), and never touches the request."""
    try:
        return call(*args)
    except Exception as exc:
        _log.error("decision tap failed (%s); the request is unaffected", type(exc).__name__)
        sink.error("tap_exception")
        return None


class DecisionTap(Protocol):
    """Observes decided requests with their parsed body; must not block (it runs on the event loop)."""

    def decided(
        self, settings: Settings, rec: DecisionRecord, parsed: ParsedRequest, served_model: str
    ) -> Mapping[str, str]:
        """One request was decided under ``settings`` (the stream's snapshot); ``served_model`` answers it.
        Returns dynamic metadata for Envoy (the feedback token), possibly empty."""
        ...

    def answered_by(self, decision_id: str, model: str) -> None:
        """Envoy's upstream fallback sent the decided request to ``model`` instead (seen in the response phase)."""
        ...


@dataclass(frozen=True, slots=True)
class LearningTap:
    """Feeds the decision store (if feedback is on) and the prompt capture (if there is one)."""

    decisions: DecisionStore | None = None
    capture: PromptCapture | None = None
    via_decide: bool = False
    """This tap serves the ``Decide`` API: its prompts are offered for capture only with ``capture.include_decide``
    (its decisions are still remembered: an application that acted on a decision may send feedback on it)."""

    signer: TokenSigner | None = None
    """Signs each remembered decision's feedback token (``feedback.signing_key_file``)."""

    def decided(
        self, settings: Settings, rec: DecisionRecord, parsed: ParsedRequest, served_model: str
    ) -> Mapping[str, str]:
        """Remember the decision, offer its prompt for capture, and return its feedback token (if signing)."""
        metadata: dict[str, str] = {}
        if self.decisions is not None:
            # Interned: tenants and routable model names are few, and the store holds tens of thousands of entries.
            entry = DecisionEntry(
                requested_model=sys.intern(parsed.requested_model),
                selected_model=rec.selected_model or served_model,
                served_model=served_model,
                tenant=sys.intern(rec.tenant) if rec.tenant else None,
                decided_unix=round(rec.started_unix_ns / 1e9, 3),
            )
            self.decisions.remember(rec.decision_id, entry)
            if self.signer is not None:
                metadata["feedback_token"] = self.signer.sign(entry.token_fields(rec.decision_id))
        if self.capture is not None and (settings.capture.include_decide or not self.via_decide):
            self.capture.offer(settings.capture, rec, parsed)
        return metadata

    def answered_by(self, decision_id: str, model: str) -> None:
        """Feedback by decision id now defaults to the model that answered (a token already sent keeps its model:
        the README tells senders to name the fallback model)."""
        if self.decisions is not None:
            self.decisions.answered_by(decision_id, sys.intern(model))
