"""The ``envoy.service.ext_proc.v3.ExternalProcessor`` servicer: one :class:`StreamHandler` per ``Process`` call."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Callable

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from extproc.conversations import ConversationMemory
from extproc.snapshot import SnapshotRef
from extproc.stream import Classify, ProtocolError, StreamHandler
from extproc.tap import DecisionTap
from extproc.telemetry import Telemetry

__all__ = ["ExternalProcessorService", "new_decision_id"]

_log = logging.getLogger("model_router.service")


def new_decision_id() -> str:
    """A random 16-hex-digit id, shown to the client and in logs and spans."""
    return secrets.token_hex(8)


class ExternalProcessorService(pb_grpc.ExternalProcessorServicer):  # type: ignore[misc]  # generated, untyped
    """Serves Envoy's ext_proc streams."""

    def __init__(
        self,
        snapshots: SnapshotRef,
        classify: Classify,
        telemetry: Telemetry,
        new_id: Callable[[], str] = new_decision_id,
        memory: ConversationMemory | None = None,
        tap: DecisionTap | None = None,
    ) -> None:
        self._snapshots = snapshots
        self._classify = classify
        self._telemetry = telemetry
        self._new_id = new_id
        if memory is None:
            sticky = snapshots.current.settings.policy.stickiness
            memory = ConversationMemory(sticky.max_entries, sticky.ttl_seconds)
        self._memory = memory
        self._tap = tap

    async def Process(
        self,
        request_iterator: AsyncIterator[pb.ProcessingRequest],
        context: grpc.aio.ServicerContext[pb.ProcessingRequest, pb.ProcessingResponse],
    ) -> AsyncIterator[pb.ProcessingResponse]:
        """Answer every message of one HTTP request's stream, in order."""
        metadata = {m.key: m.value for m in context.invocation_metadata() or () if isinstance(m.value, str)}
        handler = StreamHandler(
            self._snapshots.current,
            self._classify,
            self._telemetry,
            self._new_id,
            trace_headers=metadata,
            memory=self._memory,
            tap=self._tap,
        )
        in_flight = self._telemetry.streams_in_flight
        in_flight.inc()
        try:
            async for message in request_iterator:
                try:
                    responses = await handler.handle(message)
                except ProtocolError as exc:
                    _log.warning("ending stream: %s", exc)
                    self._telemetry.error("protocol_error")
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                    return
                for response in responses:
                    yield response
        finally:
            handler.close()
            in_flight.dec()
