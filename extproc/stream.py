"""StreamHandler: the per-stream state machine, and the one error boundary of the router.

Envoy sends request headers (SEND), then the whole request body (BUFFERED; followed by trailers when the request
has any, Envoy's request decompressor adds some, so ``end_of_stream`` is then false). The decision is made in the body
stage: parse once, classify, call the policy, then answer with a body mutation (new ``model``), the cluster
header, ``content-length`` and ``clear_route_cache`` so Envoy routes again. Anything unexpected is answered with
a plain "continue": a failure here degrades to pass-through, never to a dropped or corrupted request.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import orjson
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from classifier.model import DifficultyModel, Prediction
from extproc import envoy
from extproc.bodyedit import find_model_span, replace_at, rewrite_model
from extproc.config import LimitSettings
from extproc.constraints import ConstraintError, RequestPolicy, resolve_request_policy
from extproc.conversations import Floor, Floors, conversation_key, stronger
from extproc.decision_proto import envoy_metadata, response_headers, to_proto
from extproc.logs import THROTTLED
from extproc.observe import USAGE_MODEL_KEY
from extproc.policy import (
    Decision,
    Reason,
    RequestFacts,
    ResolvedModel,
    choose_model,
    estimate_cost,
    fallback_decision,
    pinned_decision,
)
from extproc.record import DecisionRecord, DecisionSink, Outcome
from extproc.request import ParsedRequest, PassReason, Passthrough, parse_request
from extproc.schemas import ROUTER_PATHS, TOKEN_COUNT_PATHS, HasConversation, schema_for_path
from extproc.snapshot import Snapshot
from extproc.tap import DecisionTap, tap_safely

__all__ = [
    "CLUSTER_HEADER",
    "HEADER_PREFIX",
    "Classify",
    "ProtocolError",
    "Stage",
    "StreamHandler",
    "add_header",
]

HEADER_PREFIX = "x-model-router-"
CLUSTER_HEADER = HEADER_PREFIX + "cluster"
OVERRIDE_HEADER = HEADER_PREFIX + "override"
OVERRIDE_TOKEN_HEADER = HEADER_PREFIX + "override-token"
_TRACE_HEADERS = ("traceparent", "tracestate")
_BUFFERED = ProcessingMode.BUFFERED

Classify = Callable[[DifficultyModel, str, float], Awaitable[Prediction]]
"""Runs the model on one text within a deadline in seconds; raises on failure or timeout."""

_log = logging.getLogger("model_router.stream")
_T = TypeVar("_T")


async def _settled(job: Awaitable[_T]) -> _T | Exception:
    """``job``'s result, or the exception it raised (awaited jobs are gathered without losing either's outcome)."""
    try:
        return await job
    except Exception as exc:
        return exc


class ProtocolError(Exception):
    """A message the handler cannot answer at all (unknown or empty kind): the stream ends with a gRPC status."""


class Stage(enum.Enum):
    """Where the stream is in Envoy's phases."""

    WAIT_HEADERS = enum.auto()
    WAIT_BODY = enum.auto()
    FINISHED = enum.auto()
    """Decision made or pass-through chosen; only "continue" (and decision headers) from here."""


@dataclass(frozen=True, slots=True)
class _Request:
    path: str
    headers: Mapping[str, str]
    policy: RequestPolicy
    unclassified: PassReason | None = None
    """Set when the body is read only to send the request where it would go without the router."""


def add_header(headers: dict[str, str], name: str, value: str) -> None:
    """Add one header line to ``headers`` (lower-case names). An ``x-model-router-*`` header sent several times is
    one comma-joined value, as HTTP defines it, so a repeated constraint header is malformed (ignored, or a 400), not
    silently the last copy's. Other repeats keep the last copy (Envoy joins the standard ones itself): a gateway that
    appends the tenant header after a client's copy still selects its own tenant, not an unknown one (the global
    policy)."""
    name = name.lower()
    headers[name] = f"{headers[name]}, {value}" if name in headers and name.startswith(HEADER_PREFIX) else value


@dataclass(frozen=True, slots=True)
class _HeaderLoad:
    """What Envoy counts against its request-header limits: every header line (a repeated name counts each time)
    and their names' and values' bytes, without the client's ``x-model-router-*`` ones the router removes."""

    count: int
    size: int

    @classmethod
    def of(cls, headers: pb.HttpHeaders, removed: Sequence[str]) -> _HeaderLoad:
        count = size = 0
        for h in headers.headers.headers:
            if h.key not in removed:
                count += 1
                size += len(h.key) + len(h.raw_value or h.value.encode())  # names are ASCII (HTTP tokens)
        return cls(count, size)

    def fits(self, limits: LimitSettings, added: Sequence[tuple[str, int]] = ()) -> bool:
        """Within Envoy's limits with ``added`` headers (name, value length) too."""
        count = self.count + len(added)
        size = self.size + sum(len(name) + length for name, length in added)
        return count <= limits.max_request_headers and size <= limits.max_request_headers_kb * 1024


_LENGTH = ("content-length", 20)
"""A ``content-length`` the router adds to a body it rewrites, if the request had none."""


def _header_map(headers: pb.HttpHeaders) -> dict[str, str]:
    """One value per header name (:func:`add_header`)."""
    out: dict[str, str] = {}
    for h in headers.headers.headers:
        add_header(out, h.key, h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value)
    return out


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _header_pass_reason(h: Mapping[str, str], end_of_stream: bool) -> PassReason | None:
    """Why a request will not be routed, if that is already clear from its headers."""
    path = h.get(":path", "").split("?", 1)[0]
    if path not in ROUTER_PATHS:
        return PassReason.UNKNOWN_PATH
    if h.get(":method") != "POST":
        return PassReason.NOT_POST
    if end_of_stream:
        return PassReason.NO_BODY
    if not _is_json(h.get("content-type", "")):
        return PassReason.NOT_JSON_CONTENT_TYPE
    if h.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
        return PassReason.CONTENT_ENCODED
    if path in TOKEN_COUNT_PATHS:
        return PassReason.TOKEN_COUNT
    return None


class StreamHandler:
    """Owns all state of one ext_proc stream; shares only the immutable snapshot (and the conversation memory)."""

    def __init__(
        self,
        snapshot: Snapshot,
        classify: Classify,
        sink: DecisionSink,
        new_id: Callable[[], str],
        clock: Callable[[], float] = time.perf_counter,
        trace_headers: Mapping[str, str] | None = None,
        wall_clock_ns: Callable[[], int] = time.time_ns,
        memory: Floors | None = None,
        tap: DecisionTap | None = None,
        via_decide: bool = False,
    ) -> None:
        self._snap = snapshot
        self._via_decide = via_decide
        """A ``Decide`` call, not an Envoy stream: no Envoy applies its header changes (so Envoy's header limits do not
        bind them), and its record says so (``report --envoy-log`` does not look for it in Envoy's access logs)."""
        self._classify = classify
        self._sink = sink
        self._new_id = new_id
        self._clock = clock
        self._wall_clock_ns = wall_clock_ns
        self._memory = memory
        self._tap = tap
        self.stage = Stage.WAIT_HEADERS
        self._request: _Request | None = None
        self._record: DecisionRecord | None = None
        # Envoy's ext_proc gRPC call carries the trace context of its span (a child of the request span) in
        # the call metadata; the request's own traceparent header is the fallback.
        self._trace = {k: v for k, v in (trace_headers or {}).items() if k in _TRACE_HEADERS}
        self._started_ns = 0
        self.reads_usage = False
        """The decision asked the usage observer to read its response (``telemetry.response_usage``)."""
        self._awaits_response_headers = False
        self._opening_failed = False
        """The conversation's opening turn could not be classified: this turn's choice is no floor to remember."""
        self._whole_body = False
        """Envoy said (its first message's ``protocol_config``) that it sends the request body BUFFERED: one message
        with all of it, ``end_of_stream`` false only when trailers follow. Without that word, only a message that
        ends the stream is known to be the whole body."""

    @property
    def record(self) -> DecisionRecord | None:
        """The decision record of this stream, once there is one."""
        return self._record

    @property
    def ignored_constraints(self) -> tuple[str, ...]:
        """The constraint headers this request's policy ignored (none before its headers are read)."""
        return self._request.policy.ignored if self._request else ()

    @property
    def done(self) -> bool:
        """Nothing is left to answer: the request is decided (or passed) and no decision headers wait for the
        response (``server.decision_headers_on_response``). Ending the stream then is a clean close, which tells
        Envoy that processing is complete, so a long response holds no router stream (nor a slot of the router
        cluster's circuit breaker) while it streams."""
        return self.stage is Stage.FINISHED and not self._awaits_response_headers

    async def handle(self, msg: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        """Answer one message from Envoy; the only place that catches broad exceptions."""
        kind = msg.WhichOneof("request")
        if kind is None or envoy.continue_for(kind) is None:
            raise ProtocolError(f"cannot answer a message of kind {kind!r}")
        try:
            match kind, self.stage:
                case "request_headers", Stage.WAIT_HEADERS:
                    self._whole_body = msg.protocol_config.request_body_mode == _BUFFERED
                    return self._on_headers(msg.request_headers)
                case "request_body", Stage.WAIT_BODY:
                    return await self._on_body(msg.request_body)
                case "response_headers", _ if self._record is not None and self._record.outcome in _ROUTED:
                    self._awaits_response_headers = False
                    return [envoy.response_headers_set(self._decision_headers(self._record))]
                case _:
                    return [self._continue(kind)]
        except Exception:
            _log.exception("unexpected error in stream handler; forwarding %s unchanged", kind)
            self._sink.error("handler_exception")
            self.stage = Stage.FINISHED
            self._record = None  # the request goes on unchanged: no decision of this stream stands, nor its headers
            self._awaits_response_headers = False
            return [self._continue(kind)]

    @staticmethod
    def _continue(kind: str) -> pb.ProcessingResponse:
        response = envoy.continue_for(kind)
        assert response is not None  # checked in handle()
        return response

    def _emit(self, rec: DecisionRecord) -> None:
        if self._via_decide:
            rec = replace(rec, via_decide=True)
        self.stage = Stage.FINISHED
        self._record = rec
        on_response = self._snap.settings.server.decision_headers_on_response
        self._awaits_response_headers = on_response and rec.outcome in _ROUTED
        self._sink.record(rec)

    def _context_fields(self) -> dict[str, Any]:
        return {
            "started_unix_ns": self._started_ns or self._wall_clock_ns(),
            "traceparent": self._trace.get("traceparent"),
            "tracestate": self._trace.get("tracestate"),
            "tenant": self._request.policy.tenant if self._request else None,
        }

    def _pass(
        self, reason: PassReason, model: ResolvedModel | None = None, requested: str | None = None
    ) -> DecisionRecord:
        """Record a pass-through; ``model`` is the catalog model that serves it (the one the client named, or the
        default model an alias was renamed to) and ``requested`` the alias, if it differs."""
        rec = DecisionRecord(
            decision_id=self._new_id(),
            outcome=Outcome.PASSTHROUGH,
            reason=reason.value,
            requested_model=requested or (model.name if model else None),
            selected_model=model.name if model else None,
            cluster=model.cluster if model else None,
            tier=model.tier if model else None,
            **self._context_fields(),
        )
        self._emit(rec)
        return rec

    def _pass_body(self, reason: PassReason) -> list[pb.ProcessingResponse]:
        """Forward the body untouched; the metadata tells Envoy's fail-open filter that the router answered."""
        return [envoy.body_continue(self._pass_metadata(self._pass(reason)))]

    def _pass_to_own_cluster(
        self, raw: bytes, model: ResolvedModel, reason: PassReason, span: tuple[int, int] | None
    ) -> list[pb.ProcessingResponse]:
        """A catalog model the client named itself (not a routable alias): the body stays as it is, and the request
        goes to the model's cluster, not the default route (which may be another provider that does not serve it).
        Envoy's fallback filter may rename it on a stronger cluster, as for any routed request. ``span`` is where
        the model value is (:func:`find_model_span`)."""
        assert self._request is not None
        if span is None:  # a duplicate key: which one the upstream reads is unknown, so the default route
            return self._pass_body(reason)
        metadata = self._pass_metadata(self._pass(reason, model))
        metadata.update(_client_fallback_fields(self._request.policy, model.name, raw, span))
        return [envoy.body_continue(metadata, {CLUSTER_HEADER: model.cluster})]

    def _pass_unclassified(self, raw: bytes, reason: PassReason, parsed: bool) -> list[pb.ProcessingResponse]:
        """A body the router will not classify (a limit) or cannot give its choice (the renamed body would pass the
        body limit) goes where it would without the router, as Envoy's fail-open filter and shadow mode send it.
        Sent as is, a routable alias such as "auto" reaches an upstream that serves no such model (a 404 where a
        router outage would have served it): it becomes the default model, unless the rename would itself pass the
        limit. A catalog model goes to its cluster. A model value that cannot be located unambiguously, or any
        other model, is forwarded untouched on the default route. ``parsed``: ``raw`` was parsed as a JSON object
        (:func:`find_model_span`; otherwise only a whole object's top-level model is found)."""
        assert self._request is not None
        policy = self._request.policy
        span = find_model_span(raw, parsed)
        name = _string_at(raw, span)
        named = policy.model(name)
        if span is None or name is None or (named is None and name not in self._snap.routable):
            return self._pass_body(reason)
        if named is not None:
            return self._pass_to_own_cluster(raw, named, reason, span)
        body, renamed = replace_at(raw, span, policy.default.name)
        if len(body) > self._snap.settings.limits.max_body_bytes:
            return self._pass_body(reason)
        metadata = self._pass_metadata(self._pass(reason, policy.default, requested=name))
        metadata.update(_fallback_fields(policy, policy.default.name, renamed))
        return [envoy.body_rewrite(body, {CLUSTER_HEADER: policy.default.cluster}, metadata)]

    def _reject(self, error: ConstraintError, schema: str) -> list[pb.ProcessingResponse]:
        """``policy.invalid_constraint: reject``: a malformed constraint header on a request the router would decide
        gets a 400 naming it, in the error shape of the request's API."""
        return self._refuse("invalid_constraint", schema, 400, str(error), "invalid_model_router_constraint")

    def _refuse(self, reason: str, schema: str, status: int, message: str, code: str) -> list[pb.ProcessingResponse]:
        """Record a rejection and answer the client ``status`` with ``message`` in the error shape of ``schema``."""
        rec = DecisionRecord(
            decision_id=self._new_id(),
            outcome=Outcome.REJECTED,
            reason=reason,
            schema=schema or None,
            **self._context_fields(),
        )
        self._emit(rec)
        return [envoy.immediate_error(status, message, code, schema)]

    def _on_headers(self, headers: pb.HttpHeaders) -> list[pb.ProcessingResponse]:
        h = _header_map(headers)
        if "traceparent" not in self._trace:
            self._trace = {k: h[k] for k in _TRACE_HEADERS if k in h}
        owned = sorted(k for k in h if k.startswith(HEADER_PREFIX))
        reason = _header_pass_reason(h, headers.end_of_stream)
        # Not declared as JSON, but possibly JSON all the same (curl -d sends a form type), or a token count: read it,
        # not to classify, but so that "auto" does not reach an upstream that serves no such model (Envoy's
        # fail-open filter, too, renames it whatever the content type).
        unclassified = reason if reason in _READ_UNCLASSIFIED else None
        limits = self._snap.settings.limits
        if reason is not None and unclassified is None:
            if reason is PassReason.UNKNOWN_PATH:
                self.stage = Stage.FINISHED  # not our API: no record, no metrics noise
                metadata = _UNKNOWN_PATH_METADATA
            else:
                metadata = self._pass_metadata(self._pass(reason))
            # Past Envoy's limits even the removal would be refused (a bare 500); the route strips them anyway.
            fits = not owned or self._via_decide or _HeaderLoad.of(headers, owned).fits(limits)
            return [envoy.headers_continue(owned if fits else (), skip_body=True, metadata=metadata)]
        if not self._via_decide:
            load = _HeaderLoad.of(headers, owned)
            routing = [(CLUSTER_HEADER, self._snap.widest_cluster), *([] if "content-length" in h else [_LENGTH])]
            if not load.fits(limits, added=routing):
                return self._reject_headers_full(h.get(":path", ""), load, limits)
        policy = resolve_request_policy(h, self._snap)
        for ignored in policy.ignored:
            self._sink.error("constraint_ignored")
            _log.debug("ignoring constraint header %s", ignored)
        self._request = _Request(path=h.get(":path", ""), headers=h, policy=policy, unclassified=unclassified)
        self.stage = Stage.WAIT_BODY
        return [envoy.headers_continue(owned, skip_body=False)]

    def _reject_headers_full(self, path: str, load: _HeaderLoad, limits: LimitSettings) -> list[pb.ProcessingResponse]:
        """No room under Envoy's header limits (``limits.max_request_headers*``) for ``x-model-router-cluster``:
        Envoy refuses any header change of ext_proc's that leaves the request past them with a bare 500 (measured:
        from 95 client headers; Envoy adds 5 of its own). Leaving the request to the fail-open filter instead would
        let any client shed its tenant's models and constraints with junk headers, so: a 431 that says why, in the
        error shape of the request's API, and no header change (the route strips the client's x-model-router-*)."""
        path = path.split("?", 1)[0]
        schema = schema_for_path(path) or schema_for_path(path.removesuffix("/count_tokens"))
        message = (
            f"the request has {load.count} headers ({load.size} bytes) after the gateway's own; model-router routes"
            f" a request only with room for one more under {limits.max_request_headers} headers and"
            f" {limits.max_request_headers_kb} KiB: send fewer or smaller headers"
        )
        name = schema.name if schema else ""
        return self._refuse("headers_full", name, 431, message, "request_headers_too_large")

    async def _on_body(self, body: pb.HttpBody) -> list[pb.ProcessingResponse]:
        start = self._clock()
        self._started_ns = self._wall_clock_ns()
        raw = body.body
        if not (body.end_of_stream or self._whole_body):  # a chunk (STREAMED or BUFFERED_PARTIAL mode)
            return self._pass_body(PassReason.STREAMED_BODY)
        assert self._request is not None  # WAIT_BODY is only reached through the headers stage
        if len(raw) > self._snap.settings.limits.max_body_bytes:  # a catalog model still goes to its cluster
            return self._pass_unclassified(raw, PassReason.BODY_TOO_LARGE, parsed=False)
        if self._request.unclassified is not None:
            return self._pass_unclassified(raw, self._request.unclassified, parsed=False)
        policy = self._request.policy
        parsed = parse_request(self._request.path, raw, self._snap.routable, self._snap.settings.limits)
        if isinstance(parsed, Passthrough):
            if parsed.reason in _UNCLASSIFIED:  # the model is known only if the body was parsed
                return self._pass_unclassified(raw, parsed.reason, parsed=parsed.model is not None)
            named = policy.model(parsed.model)
            if named is None:
                return self._pass_body(parsed.reason)
            return self._pass_to_own_cluster(raw, named, parsed.reason, find_model_span(raw))
        if policy.invalid is not None:  # refused only now: a request the router does not decide is not its to refuse
            return self._reject(policy.invalid, parsed.schema.name)
        memory_key = self._conversation_key(parsed)
        if not self._snap.settings.capture.enabled:  # the body's last reader: free it while the classifier runs
            parsed = parsed.without_body()
        decision, prediction, classify_seconds, candidate = await self._decide(parsed, policy, memory_key)
        rewritten = rewrite_model(raw, decision.model.name)
        if rewritten is None:  # a duplicate key, or too costly to locate: ambiguous, do not touch
            return self._pass_body(PassReason.AMBIGUOUS_MODEL)
        if len(rewritten[0]) > self._snap.settings.limits.max_body_bytes and not policy.shadow:
            # A longer model name must not push a body that Envoy accepted over its buffer limit (a 413 we caused):
            # the request goes as without the router (the default model's name may still fit).
            return self._pass_unclassified(raw, PassReason.BODY_TOO_LARGE, parsed=True)
        # Only a choice on the merits sets a conversation's floor: not a pinned request (a labeller replaying a
        # captured conversation), and not a fallback (an image-only turn or a classifier timeout would otherwise
        # lock the rest of the conversation onto the default model, often the dearest). A fallback turn keeps an
        # existing floor alive, as any turn of the conversation does, without raising it. Nor does a turn whose
        # opening could not be classified: its choice, made without the opening's floor, would stand in for that
        # floor for the rest of the conversation; the next turn replays the opening again. In shadow mode the floor
        # is the router's own choice, applied or not, under a key of its own (``conversation_key``): its decisions
        # (and the savings report) then follow a conversation as live routing would, and the opening is replayed
        # once, not on every turn.
        if memory_key is not None and self._memory is not None and decision.reason is not Reason.TRUSTED_OVERRIDE:
            ttl = self._snap.settings.policy.stickiness.ttl_seconds  # the running config's: reload applies
            held = self._current(self._memory.floor(memory_key))
            if not decision.fallback and not self._opening_failed:
                used = Floor(decision.model.name, decision.model.ability)
                self._memory.remember(memory_key, stronger(held, used), ttl)
            elif held is not None:
                self._memory.remember(memory_key, held, ttl)
        self._emit(self._build_record(parsed, policy, decision, prediction, classify_seconds, start, candidate))
        # Shadow mode changed nothing: the upstream served the requested model (or the default route's).
        unchanged = self._snap.by_name.get(parsed.requested_model, policy.default)
        served = unchanged if policy.shadow else decision.model
        observed = self._observe(parsed, served.name)
        if self._snap.settings.telemetry.response_usage:  # for the response observer (extproc/observe.py)
            observed = {**observed, USAGE_MODEL_KEY: served.name}
            self.reads_usage = True
        if policy.shadow:
            return self._shadow(raw, parsed.requested_model, served, policy, observed)
        assert self._record is not None
        new_body, span = rewritten
        metadata = {
            **self._metadata(self._record),
            **observed,
            **_fallback_fields(policy, decision.model.name, span),
        }
        headers = {CLUSTER_HEADER: decision.model.cluster}
        return [envoy.body_rewrite(new_body, headers, metadata)]

    def _shadow(
        self, raw: bytes, requested: str, served: ResolvedModel, policy: RequestPolicy, observed: Mapping[str, str]
    ) -> list[pb.ProcessingResponse]:
        """Shadow mode: the request goes where it would without the router. A catalog model keeps its body and goes
        to its cluster; an alias such as "auto", which no upstream serves, becomes the default model (as Envoy's
        fail-open filter does), the baseline the decision record's costs assume. Envoy's fallback filter renames
        it on a retry, as for a routed request. The decision id and feedback token go to the client (feedback on
        shadow decisions is for the served model); the shadow choice does not, as it would pass for the served one."""
        assert self._record is not None
        metadata = {
            "outcome": Outcome.SHADOW.value,
            "cluster": served.cluster,
            "decision_id": self._record.decision_id,
            **observed,
        }
        headers = {CLUSTER_HEADER: served.cluster}
        if requested == served.name:
            span = find_model_span(raw)
            fallback = _client_fallback_fields(policy, served.name, raw, span) if span else {}
            return [envoy.body_continue({**metadata, **fallback}, headers)]
        rewritten = rewrite_model(raw, served.name)
        if rewritten is None or len(rewritten[0]) > self._snap.settings.limits.max_body_bytes:
            return [envoy.body_continue({k: v for k, v in metadata.items() if k != "cluster"})]  # default route
        body, span = rewritten
        return [envoy.body_rewrite(body, headers, {**metadata, **_fallback_fields(policy, served.name, span)})]

    def _observe(self, parsed: ParsedRequest, served_model: str) -> Mapping[str, str]:
        """Hand the decision to the tap (feedback store, token, prompt capture); its failure never touches the
        request. Returns the tap's dynamic metadata."""
        if self._tap is None or self._record is None:
            return {}
        return tap_safely(self._sink, self._tap.decided, self._snap.settings, self._record, parsed, served_model) or {}

    def _conversation_key(self, parsed: ParsedRequest) -> str | None:
        if self._memory is None or self._request is None:
            return None
        settings = self._snap.settings.policy.stickiness
        if not settings.enabled:
            return None
        session = self._request.headers.get(settings.session_header) if settings.session_header else None
        seed = parsed.schema.conversation_seed(parsed.body) if isinstance(parsed.schema, HasConversation) else ""
        # The tenant as sent, not its view: tenants without a configured view share the default view, not keys.
        tenant_header = self._snap.settings.policy.tenant_header
        tenant = self._request.headers.get(tenant_header) if tenant_header else None
        return conversation_key(tenant, session, seed, shadow=self._request.policy.shadow)

    def _trusted_pin(self, policy: RequestPolicy) -> ResolvedModel | None:
        """The pinned model if the request carries one and proves it is trusted; every other case is ignored."""
        assert self._request is not None
        pin = self._request.headers.get(OVERRIDE_HEADER)
        if pin is None:
            return None
        expected = self._snap.settings.security.override.token_sha256
        token = self._request.headers.get(OVERRIDE_TOKEN_HEADER)
        if expected is None or token is None:
            self._sink.error("untrusted_override")
            return None
        if not hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(), expected):
            self._sink.error("untrusted_override")
            return None
        model = policy.model(pin.strip())
        if model is None:
            self._sink.error("unknown_override_model")
        return model

    async def _decide(
        self, parsed: ParsedRequest, policy: RequestPolicy, memory_key: str | None
    ) -> tuple[Decision, Prediction | None, float | None, _Candidate | None]:
        snap = self._snap
        pinned = self._trusted_pin(policy)
        if pinned is not None:
            return pinned_decision(pinned), None, None, None
        fallback = policy.model(parsed.requested_model) or policy.default
        timeout = snap.settings.server.classifier_timeout_ms / 1000.0
        facts = RequestFacts(
            requested_model=parsed.requested_model,
            input_tokens=parsed.input_tokens,
            output_tokens=snap.output_tokens(parsed.max_output_tokens),
            quality_target=policy.quality_target,
            max_cost=policy.max_cost,
            interactive=policy.interactive,
            completions=parsed.completions,
        )
        held = self._current(self._memory.floor(memory_key)) if self._memory is not None and memory_key else None
        floor = held.ability if held is not None else None
        opening = parsed.opening_text if floor is None and self._replays_opening(parsed) else ""
        if not parsed.prompt_text.strip():
            if opening:
                floor = self._opening_floor(await _settled(self._classify(snap.model, opening, timeout)), facts, policy)
            return fallback_decision(fallback, Reason.NO_PROMPT_TEXT, policy.catalog, floor, facts), None, None, None
        t0 = self._clock()
        try:
            if opening:
                predicted, opening_prediction = await asyncio.gather(
                    _settled(self._predict(parsed.prompt_text, timeout)),
                    _settled(self._classify(snap.model, opening, timeout)),
                )
                floor = self._opening_floor(opening_prediction, facts, policy)
                if isinstance(predicted, Exception):
                    raise predicted
            else:
                predicted = await self._predict(parsed.prompt_text, timeout)
            prediction, candidate_prediction = predicted
            if math.isnan(prediction.difficulty):
                raise ValueError("the classifier returned NaN")
        except Exception as exc:  # the classifier's failure is a fallback, never a failed request
            decision = fallback_decision(fallback, Reason.CLASSIFIER_FAILED, policy.catalog, floor, facts)
            name, model = type(exc).__name__, decision.model.name
            _log.warning("classifier failed (%s); using fallback model %s", name, model, extra=THROTTLED)
            return decision, None, self._clock() - t0, None
        classify_seconds = self._clock() - t0
        facts = replace(facts, min_ability=floor)
        decision = choose_model(prediction, facts, policy.catalog, fallback)
        candidate = None
        if candidate_prediction is not None:
            candidate = _Candidate(
                choose_model(candidate_prediction, facts, policy.catalog, fallback), candidate_prediction
            )
        return decision, prediction, classify_seconds, candidate

    def _current(self, floor: Floor | None) -> Floor | None:
        """A remembered floor at its model's ability in the running catalog (a reload may have recalibrated it), else
        at the one it had when it was used (a reload removed it: the closest model left then holds the conversation)."""
        model = self._snap.by_name.get(floor.model) if floor is not None else None
        return floor if model is None or floor is None else Floor(floor.model, model.ability)

    def _replays_opening(self, parsed: ParsedRequest) -> bool:
        """Whether the conversation's opening turn must be classified to find its floor (no floor is remembered).

        Without a session header, the opening turn's own decision could not be remembered (no reply identified the
        conversation yet), and a conversation spread over several router processes has no floor on the others. So a
        hard task's short follow-up ("Are you sure? Check again.") would go to the cheap model. Replaying the
        opening's decision gives the floor stickiness promises, at the cost of one more classification, run beside
        the turn's own, once per conversation per process (later turns find the floor this turn remembers).
        """
        text = parsed.opening_text
        return bool(text.strip()) and text != parsed.prompt_text and self._snap.settings.policy.stickiness.enabled

    def _opening_floor(
        self, prediction: Prediction | Exception, facts: RequestFacts, policy: RequestPolicy
    ) -> float | None:
        """The ability of the model the opening turn gets on its merits under this request's constraints; None if it
        could not be classified (counted: the turn is then decided without a floor) or no model fits."""
        if isinstance(prediction, Exception) or math.isnan(prediction.difficulty):
            reason = type(prediction).__name__ if isinstance(prediction, Exception) else "NaN"
            _log.warning(
                "classifier failed on the conversation's opening turn (%s); no floor from it", reason, extra=THROTTLED
            )
            self._sink.error("opening_failed")
            self._opening_failed = True
            return None
        decision = choose_model(prediction, facts, policy.catalog, policy.default)
        return None if decision.fallback else decision.model.ability

    async def _predict(self, text: str, timeout: float) -> tuple[Prediction, Prediction | None]:
        """The live model's prediction and, beside it (concurrently), the candidate's; only the live one may fail
        the request over to the fallback: a failing candidate is counted and ignored."""
        snap = self._snap
        if snap.candidate is None:
            return await self._classify(snap.model, text, timeout), None
        live, candidate = await asyncio.gather(
            self._classify(snap.model, text, timeout),
            self._classify(snap.candidate, text, timeout),
            return_exceptions=True,
        )
        if isinstance(live, BaseException):
            raise live
        if isinstance(candidate, BaseException) or math.isnan(candidate.difficulty):  # NaN: as for the live model
            reason = type(candidate).__name__ if isinstance(candidate, BaseException) else "NaN"
            _log.warning("candidate classifier failed (%s); the live decision stands", reason, extra=THROTTLED)
            self._sink.error("candidate_failed")
            return live, None
        return live, candidate

    def _build_record(
        self,
        parsed: ParsedRequest,
        policy: RequestPolicy,
        decision: Decision,
        prediction: Prediction | None,
        classify_seconds: float | None,
        start: float,
        candidate: _Candidate | None = None,
    ) -> DecisionRecord:
        snap = self._snap
        out_tokens = snap.output_tokens(parsed.max_output_tokens)

        def price(model: ResolvedModel) -> float:
            return estimate_cost(model, parsed.input_tokens, out_tokens, parsed.completions)

        baseline = snap.by_name.get(parsed.requested_model, policy.default)
        excerpt = parsed.prompt_text[:200] if snap.settings.telemetry.log_prompts else None
        outcome = Outcome.FALLBACK if decision.fallback else Outcome.ROUTED
        outcome = Outcome.SHADOW if policy.shadow else outcome
        return DecisionRecord(
            decision_id=self._new_id(),
            outcome=outcome,
            reason=decision.reason.value,
            schema=parsed.schema.name,
            requested_model=parsed.requested_model,
            selected_model=decision.model.name,
            cluster=decision.model.cluster,
            tier=decision.model.tier,
            difficulty=prediction.difficulty if prediction else None,
            confidence=prediction.confidence if prediction else None,
            success_probability=decision.success_probability,
            quality_target=policy.quality_target,
            input_tokens=parsed.input_tokens,
            cost_requested=price(baseline),
            cost_selected=price(decision.model),
            classify_seconds=classify_seconds,
            total_seconds=self._clock() - start,
            stream=parsed.stream,
            prompt_excerpt=excerpt,
            **_candidate_fields(candidate, price),
            **self._context_fields(),
        )

    @staticmethod
    def _decision_headers(rec: DecisionRecord) -> dict[str, str]:
        """The ``x-model-router-*`` response headers, from the ``RoutingDecision`` message (one definition)."""
        return response_headers(to_proto(rec), HEADER_PREFIX)

    @staticmethod
    def _metadata(rec: DecisionRecord) -> dict[str, str]:
        """Dynamic metadata Envoy turns into response headers and access-log fields (no response phase needed)."""
        return envoy_metadata(to_proto(rec))

    @classmethod
    def _pass_metadata(cls, rec: DecisionRecord) -> dict[str, str]:
        """A pass-through's metadata: its outcome tells Envoy's fail-open filter that the router answered. No decision
        id: no response header should invite feedback on a request the router did not route."""
        return {k: v for k, v in cls._metadata(rec).items() if v and k != "decision_id"}


_ROUTED = (Outcome.ROUTED, Outcome.FALLBACK)
_READ_UNCLASSIFIED = (PassReason.NOT_JSON_CONTENT_TYPE, PassReason.TOKEN_COUNT)
"""Known from the headers, but the body is read all the same, only to locate its model (``_pass_unclassified``)."""
_UNCLASSIFIED = frozenset(
    {PassReason.TOO_COMPLEX, PassReason.TOO_DEEP, PassReason.TOO_MANY_MESSAGES, PassReason.INVALID_JSON}
)
"""Limits, and JSON the parser refuses, that pass a request through unclassified whatever its model (a routable
alias, or a catalog model when the body was not parsed). Sent untouched instead, a body another parser reads
(``PassReason.INVALID_JSON``) would take "auto" to an upstream that serves no such model, where a router outage
would have served it (Envoy's fail-open filter renames it)."""


def _string_at(raw: bytes, span: tuple[int, int] | None) -> str | None:
    """The JSON string at ``span`` (escapes decoded), or None."""
    if span is None:
        return None
    try:
        value = orjson.loads(raw[span[0] : span[1]])
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, str) else None


_UNKNOWN_PATH_METADATA = {"outcome": Outcome.PASSTHROUGH.value, "reason": PassReason.UNKNOWN_PATH.value}


def _fallback_fields(policy: RequestPolicy, model: str, span: tuple[int, int]) -> dict[str, str]:
    """For Envoy's fallback filter: where the model value (the plain quoted name) is in the body sent, and what to
    name on each cluster a retry may reach."""
    return {"model_span": f"{span[0]}-{span[1]}", "fallback_models": policy.fallbacks.get(model, "")}


def _client_fallback_fields(policy: RequestPolicy, model: str, body: bytes, span: tuple[int, int]) -> dict[str, str]:
    """:func:`_fallback_fields` for a body as the client wrote it: none when the value is not the plain quoted name
    (escapes), which the filter would not recognise (an error logged on every retry). A body the router rewrote
    holds the plain name by construction."""
    return _fallback_fields(policy, model, span) if body[span[0] : span[1]] == orjson.dumps(model) else {}


@dataclass(frozen=True, slots=True)
class _Candidate:
    """What ``classifier.candidate_model_dir``'s model would have chosen for the request (it routes nothing)."""

    decision: Decision
    prediction: Prediction


def _candidate_fields(candidate: _Candidate | None, price: Callable[[ResolvedModel], float]) -> dict[str, Any]:
    """The record's ``candidate_*`` fields (none without a candidate)."""
    if candidate is None:
        return {}
    model = candidate.decision.model
    return {
        "candidate_selected_model": model.name,
        "candidate_tier": model.tier,
        "candidate_difficulty": candidate.prediction.difficulty,
        "candidate_success_probability": candidate.decision.success_probability,
        "cost_candidate": price(model),
    }
