"""The ``envoy.service.ext_proc.v3.ExternalProcessor`` servicer: one :class:`StreamHandler` per ``Process`` call."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Callable

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from extproc.conversations import ConversationMemory
from extproc.logs import THROTTLED
from extproc.observe import CopyCheck, ResponseObserver
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
        copy_check: CopyCheck | None = None,
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
        self._copies = copy_check or CopyCheck()

    async def Process(
        self,
        request_iterator: AsyncIterator[pb.ProcessingRequest],
        context: grpc.aio.ServicerContext[pb.ProcessingRequest, pb.ProcessingResponse],
    ) -> AsyncIterator[pb.ProcessingResponse]:
        """Answer the messages of one HTTP request's stream, in order, and end it once the request is decided (see
        :attr:`StreamHandler.done`); or, on a stream of the observability-mode filter (which takes no answer), read
        the response's usage."""
        messages = aiter(request_iterator)
        first = await anext(messages, None)
        if first is None:
            return
        if first.observability_mode:
            await self._observe(first, messages)
            return
        in_flight = self._telemetry.streams_in_flight
        in_flight.inc()
        try:
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
            message: pb.ProcessingRequest | None = first
            while message is not None:
                try:
                    responses = await handler.handle(message)
                except ProtocolError as exc:
                    _log.warning("ending stream: %s", exc, extra=THROTTLED)
                    self._telemetry.error("protocol_error")
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                    return
                for response in responses:
                    yield response
                if handler.done:  # a clean close: Envoy sends nothing more and holds no stream for the response
                    break
                message = await anext(messages, None)
            if handler.reads_usage:
                self._copies.decided()
        finally:
            in_flight.dec()

    async def _observe(self, first: pb.ProcessingRequest, rest: AsyncIterator[pb.ProcessingRequest]) -> None:
        """Read one observed response until its usage is known or the router has no use for it; returning ends the
        stream (Envoy, failing open, sends nothing more). An error here only costs that response's usage."""
        observer = ResponseObserver(self._snapshots.current, self._telemetry, self._tap)
        try:
            try:
                message: pb.ProcessingRequest | None = first
                while message is not None and observer.feed(message):
                    message = await anext(rest, None)
            finally:  # also when the stream is cancelled: the usage read so far still counts
                observer.close()
                if observer.result is not None:
                    self._telemetry.usage_responses.labels(result=observer.result).inc()
                    self._copies.copied()
                elif observer.unwanted:
                    self._copies.unwanted()
        except Exception:
            _log.exception("reading a response's usage failed; the response is unaffected")
            self._telemetry.error("handler_exception")
