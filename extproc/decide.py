"""The ``model_router.v1.ModelRouterService`` servicer: ``Decide`` drives the live per-stream handler on one request.

``Feedback`` hands a score to :class:`~extproc.feedback.FeedbackRecorder` (the same path as ``POST /v1/feedback``).

``Decide`` does not re-implement the request path: it turns the ``DecideRequest`` into the two ext_proc messages
Envoy would send (request headers, then the whole body) and feeds them to a :class:`StreamHandler` built like the
ext_proc servicer's (same snapshot, classifier, sink and conversation memory). Nothing is forwarded anywhere; the
handler's record becomes the answer. Bad request content is a pass-through decision, as on the live path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from classifier.model import success_probability
from extproc.api.model_router.v1 import model_router_pb2 as api
from extproc.api.model_router.v1 import model_router_pb2_grpc as api_grpc
from extproc.constraints import resolve_request_policy
from extproc.conversations import ConversationMemory, Floors, ReadOnlyMemory
from extproc.decision_proto import to_proto
from extproc.envoy import METADATA_NAMESPACE
from extproc.feedback import FeedbackRecorder, FeedbackStatus
from extproc.policy import RequestFacts, estimate_cost, exclusions
from extproc.record import DecisionRecord, DecisionSink, DiscardSink, Outcome
from extproc.request import ParsedRequest, PassReason, parse_request
from extproc.schemas import schema_for_path
from extproc.service import new_decision_id
from extproc.snapshot import Snapshot, SnapshotRef
from extproc.stream import Classify, Stage, StreamHandler
from extproc.tap import DecisionTap

__all__ = ["DECIDE_SERVICE", "DecisionService", "decide", "missing_fields"]

DECIDE_SERVICE = "model_router.v1.ModelRouterService"
_REQUIRED = ("path", "body")


def missing_fields(request: api.DecideRequest) -> list[str]:
    """The required fields ``request`` leaves empty."""
    return [name for name in _REQUIRED if not getattr(request, name)]


def _messages(request: api.DecideRequest) -> tuple[pb.ProcessingRequest, pb.ProcessingRequest]:
    headers = {":method": "POST", "content-type": "application/json"}
    headers.update({k.lower(): v for k, v in request.headers.items() if not k.startswith(":")})
    headers[":path"] = request.path
    first = pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
            ),
            end_of_stream=False,
        )
    )
    second = pb.ProcessingRequest(request_body=pb.HttpBody(body=request.body, end_of_stream=True))
    return first, second


def _estimates(snap: Snapshot, request: api.DecideRequest, decision: api.RoutingDecision) -> list[api.ModelEstimate]:
    """Each model of the request's tenant priced (and scored, if classified) for this request."""
    if not decision.HasField("estimated_input_tokens"):
        return []
    parsed = parse_request(request.path, request.body, snap.routable, snap.settings.limits)
    if not isinstance(parsed, ParsedRequest):
        return []
    in_tokens = parsed.input_tokens
    out_tokens = snap.output_tokens(parsed.max_output_tokens)
    catalog = snap.tenant_view(decision.tenant or None).catalog
    policy = resolve_request_policy({k.lower(): v for k, v in request.headers.items()}, snap)
    facts = RequestFacts(
        parsed.requested_model,
        in_tokens,
        out_tokens,
        0.0,
        policy.max_cost,
        policy.interactive,
        completions=parsed.completions,
    )
    excluded = exclusions(facts, catalog)
    out: list[api.ModelEstimate] = []
    for m in catalog:
        est = api.ModelEstimate(
            name=m.name,
            cluster=m.cluster,
            tier=m.tier,
            ability=m.ability,
            estimated_cost=estimate_cost(m, in_tokens, out_tokens, parsed.completions),
            fits_context=m.context_window >= in_tokens + out_tokens,
            excluded_by=excluded.get(m.name, ""),
        )
        if decision.HasField("difficulty"):
            est.success_probability = success_probability(m.ability, decision.difficulty)
        out.append(est)
    return out


async def decide(
    request: api.DecideRequest,
    snap: Snapshot,
    classify: Classify,
    sink: DecisionSink,
    new_id: Callable[[], str] = new_decision_id,
    memory: Floors | None = None,
    clock: Callable[[], float] = time.perf_counter,
    trace_headers: Mapping[str, str] | None = None,
    wall_clock_ns: Callable[[], int] = time.time_ns,
    tap: DecisionTap | None = None,
) -> api.DecideResponse:
    """The decision the live ext_proc path would make for ``request`` (whose path and body must be set).

    ``request.dry_run`` records nothing: the sink, the tap (capture, feedback) and the memory's writes are left out,
    so an operator's test prompt is neither counted nor stored, and does not raise a real conversation's floor.
    """
    if request.dry_run:
        sink, tap = DiscardSink(), None
        memory = ReadOnlyMemory(memory) if memory is not None else None
    handler = StreamHandler(
        snap,
        classify,
        sink,
        new_id,
        clock,
        trace_headers=trace_headers,
        wall_clock_ns=wall_clock_ns,
        memory=memory,
        tap=tap,
        via_decide=True,
    )
    headers_msg, body_msg = _messages(request)
    await handler.handle(headers_msg)
    token = ""
    if handler.record is None and handler.stage is Stage.WAIT_BODY:
        for answer in await handler.handle(body_msg):
            metadata = answer.dynamic_metadata.fields.get(METADATA_NAMESPACE)
            if metadata is not None and "feedback_token" in metadata.struct_value.fields:
                token = metadata.struct_value.fields["feedback_token"].string_value
    rec = handler.record
    if rec is None:
        # The live path keeps no record for a path that is not an API it routes (and for an internal error, which
        # forwards the request unmodified): both are a pass-through.
        rec = DecisionRecord(
            decision_id=new_id(),
            outcome=Outcome.PASSTHROUGH,
            reason=PassReason.UNKNOWN_PATH.value if schema_for_path(request.path) is None else "",
            started_unix_ns=wall_clock_ns(),
        )
    decision = to_proto(rec)
    decided = rec.outcome is not Outcome.PASSTHROUGH  # constraints count only for a request the router decides
    return api.DecideResponse(
        decision=decision,
        models=_estimates(snap, request, decision),
        feedback_token=token,
        ignored_constraints=handler.ignored_constraints if decided else (),
    )


_FEEDBACK_CODES = {
    FeedbackStatus.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    FeedbackStatus.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    FeedbackStatus.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    FeedbackStatus.TOO_MANY: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class DecisionService(api_grpc.ModelRouterServiceServicer):
    """Serves ``Decide`` beside ext_proc, with the same snapshot, classifier, sink and conversation memory, and
    ``Feedback`` through the recorder (absent when ``feedback.enabled`` is off)."""

    def __init__(
        self,
        snapshots: SnapshotRef,
        classify: Classify,
        sink: DecisionSink,
        memory: ConversationMemory | None = None,
        new_id: Callable[[], str] = new_decision_id,
        tap: DecisionTap | None = None,
        feedback: FeedbackRecorder | None = None,
    ) -> None:
        self._snapshots = snapshots
        self._classify = classify
        self._sink = sink
        self._memory = memory
        self._new_id = new_id
        self._tap = tap
        self._feedback = feedback

    async def Decide(
        self,
        request: api.DecideRequest,
        context: grpc.aio.ServicerContext[api.DecideRequest, api.DecideResponse],
    ) -> api.DecideResponse:
        """Decide for one request; ``INVALID_ARGUMENT`` names a missing required field."""
        missing = missing_fields(request)
        if missing:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(f"{f}: required" for f in missing))
        metadata = {m.key: m.value for m in context.invocation_metadata() or () if isinstance(m.value, str)}
        return await decide(
            request,
            self._snapshots.current,
            self._classify,
            self._sink,
            self._new_id,
            self._memory,
            trace_headers=metadata,
            tap=self._tap,
        )

    async def Feedback(
        self,
        request: api.FeedbackRequest,
        context: grpc.aio.ServicerContext[api.FeedbackRequest, api.FeedbackResponse],
    ) -> api.FeedbackResponse:
        """Record a score for a recent decision of this router; errors as in the proto's comment."""
        if self._feedback is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "feedback is disabled (feedback.enabled: false)")
        assert self._feedback is not None
        score = request.score if request.HasField("score") else None
        model = request.model or None  # an empty model is an absent one
        result = await self._feedback.submit_async(
            request.decision_id,
            score,
            model,
            source="grpc",
            token=request.feedback_token or None,
            idempotency_key=request.idempotency_key or None,
        )
        if result.status is not FeedbackStatus.RECORDED:
            await context.abort(_FEEDBACK_CODES[result.status], result.message)
        return api.FeedbackResponse(decision_id=result.decision_id, model=result.model, score=result.score)
