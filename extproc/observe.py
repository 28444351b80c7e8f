"""ResponseObserver: reads the token usage of a decided request's response, from the streams of Envoy's second,
observability-mode ext_proc filter (``model_router_usage`` in ``envoy/envoy.yaml``).

Why a second filter, not the deciding one: a normal ext_proc filter that streams the response body to the router
holds each chunk until the router answers it (a round trip per chunk), drops ``content-length``, and loses the chunks
it was holding when the upstream resets. In observability mode Envoy sends copies and never waits, so the response
reaches the client exactly as without the router (measured with Envoy 1.40: README "Real usage").

Correlation needs no state shared between the two streams, which may reach different router processes: the deciding
stream puts ``decision_id`` and ``usage_model`` (the model the upstream was asked for) into its dynamic metadata, and
Envoy forwards that namespace, and the fallback filter's, with every observed message. A stream without them is a
request the router did not decide on (or decided on with ``telemetry.response_usage`` off): it is ended at once,
which Envoy, with ``failure_mode_allow``, takes as "nothing more to send".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2

from extproc.envoy import METADATA_NAMESPACE
from extproc.policy import ResolvedModel, estimate_cost
from extproc.record import DecisionSink
from extproc.snapshot import Snapshot
from extproc.tap import DecisionTap, tap_safely
from extproc.usage import UsageScanner

__all__ = ["FALLBACK_NAMESPACE", "RESULTS", "USAGE_MODEL_KEY", "CopyCheck", "ResponseObserver"]

_log = logging.getLogger("model_router.observe")

USAGE_MODEL_KEY = "usage_model"
"""The deciding stream's metadata key naming the model whose price the usage is counted at."""
FALLBACK_NAMESPACE = "model_router_fallback"
"""Envoy's fallback filter writes ``model`` here when a retry reached another cluster under another model's name."""
RESULTS = ("read", "not_reported", "unreadable", "unknown_model")
"""What became of a decided response's copy (``model_router_usage_responses_total{result}``): its usage read; none
in it; not readable (a JSON body past the cap, a gzip bomb or corrupt gzip); its model gone from the catalog (a
reload while the request was out)."""


def _string(msg: pb.ProcessingRequest, namespace: str, key: str) -> str:
    fields: struct_pb2.Struct | None = msg.metadata_context.filter_metadata.get(namespace)
    value = fields.fields.get(key) if fields is not None else None
    return value.string_value if value is not None else ""


class CopyCheck:
    """Says once when the two halves of real usage disagree, which otherwise shows nowhere: usage on but no copy for
    many decisions (Envoy's observer filter left disabled, as shipped), or copies arriving with usage off (a stream
    per request for nothing).

    A copy is counted when its response has ended, minutes after the decision for a long answer (a decision stream
    ends at the decision), so "no copy" needs both ``after`` decisions and ``wait_seconds`` since the first of them:
    past Envoy's route timeout (300 s in ``envoy/envoy.yaml``), the first response has ended one way or another."""

    def __init__(
        self, after: int = 100, wait_seconds: float = 600.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._after = after
        self._wait = wait_seconds
        self._clock = clock
        self._first_decided: float | None = None
        self._decided = 0
        self._copies = 0
        self._told_missing = False
        self._told_unwanted = False

    def decided(self) -> None:
        """A request was decided with ``telemetry.response_usage`` on."""
        self._decided += 1
        if self._first_decided is None:
            self._first_decided = self._clock()
        if self._told_missing or self._copies or self._decided < self._after:
            return
        waited = self._clock() - self._first_decided
        if waited >= self._wait:
            self._told_missing = True
            _log.warning(
                "telemetry.response_usage is on, but no response copy came for %d decisions in %.0f s: enable"
                ' Envoy\'s model_router_usage filter (README "Real usage")',
                self._decided,
                waited,
            )

    def copied(self) -> None:
        """A decided response's copy was read."""
        self._copies += 1

    def unwanted(self) -> None:
        """A copy came while ``telemetry.response_usage`` is off."""
        if not self._told_unwanted:
            self._told_unwanted = True
            _log.warning(
                "Envoy sends response copies (filter model_router_usage) but telemetry.response_usage is off: each"
                " costs a stream for nothing; turn usage on, or disable the filter"
            )


class ResponseObserver:
    """Owns one observed response: which decision it answers, at which model's price, and the usage read so far."""

    def __init__(self, snapshot: Snapshot, sink: DecisionSink, tap: DecisionTap | None = None) -> None:
        self._snap = snapshot
        self._sink = sink
        self._tap = tap
        self._decision_id = ""
        self._model: ResolvedModel | None = None
        self._scanner: UsageScanner | None = None
        self._started = False
        self.result: str | None = None
        """One of :data:`RESULTS` once a decided response was read; None for a copy the router had no use for."""
        self.unwanted = False
        """The copy came while ``telemetry.response_usage`` is off."""

    def feed(self, msg: pb.ProcessingRequest) -> bool:
        """Read one message; False once the rest of the stream is not needed (the caller ends it)."""
        if not self._started:
            self._started = True
            self._start(msg)
        if self._scanner is None:
            return False
        if msg.WhichOneof("request") == "response_body":
            self._scanner.feed(msg.response_body.body)
            if msg.response_body.end_of_stream:
                self._finish()
                return False
        return True

    def close(self) -> None:
        """The stream ended. A response whose last chunk never came (the upstream reset it, or the client stopped
        reading after the final SSE event, as the OpenAI SDK does at ``[DONE]``) still reports the usage it carried."""
        if self._scanner is not None:
            self._finish()

    def _start(self, msg: pb.ProcessingRequest) -> None:
        if not self._snap.settings.telemetry.response_usage:
            self.unwanted = True
            return
        decision_id = _string(msg, METADATA_NAMESPACE, "decision_id")
        name = _string(msg, METADATA_NAMESPACE, USAGE_MODEL_KEY)
        if not decision_id or not name:
            return
        model = self._snap.by_name.get(name)
        if model is None:  # a reload removed it while the request was out: its cost must not vanish unnoticed
            self.result = "unknown_model"
            return
        self._decision_id = decision_id
        self._model = self._answered_by(msg, model)
        self._scanner = UsageScanner()

    def _answered_by(self, msg: pb.ProcessingRequest, decided: ResolvedModel) -> ResolvedModel:
        """If Envoy's fallback filter sent the request to another model, usage is that model's (tokens and cost at
        its price) and feedback by id defaults to it. The decision record, span and decision metrics keep the
        router's own choice: they describe the decision, and Envoy's access log describes the retry."""
        name = _string(msg, FALLBACK_NAMESPACE, "model")
        if not name or name == decided.name:
            return decided
        model = self._snap.by_name.get(name)  # the whole catalog: any tenant's fallback names one of it
        if model is None:  # the filter only names catalog models: a foreign config wrote it
            self._sink.error("unknown_fallback_model")
            return decided
        if self._tap is not None:
            tap_safely(self._sink, self._tap.answered_by, self._decision_id, name)
        return model

    def _finish(self) -> None:
        assert self._scanner is not None and self._model is not None
        scanner, self._scanner = self._scanner, None
        usage = scanner.finish()
        if usage is None:
            self.result = "unreadable" if scanner.unreadable else "not_reported"
            if scanner.unreadable:
                self._sink.error("usage_unreadable")  # cost would vanish from the metrics unnoticed
            return
        self.result = "read"
        cost = estimate_cost(self._model, usage.input_tokens, usage.output_tokens)
        self._sink.usage(self._decision_id, self._model.name, usage.input_tokens, usage.output_tokens, cost)
