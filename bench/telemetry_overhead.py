"""CPU cost of telemetry per decision: spans (sampling 1.0, batched export) + metrics, against a logging-only sink.

Process CPU time (all threads, so the exporter's thread counts) per recorded decision. Spans go to the router's own
OTLP exporter (:mod:`extproc.otlp`) with the gRPC call replaced by one that drops the bytes: queueing, batching and
encoding are paid, the network is not. Run: ``.venv/bin/python -m bench.telemetry_overhead``.

Each round measures the logging-only sink and the full telemetry back to back on fresh records; the verdict is on
the median over rounds of their difference, and the spread is printed beside it: on a shared VM single rounds vary
by a factor of two (measured: 28-56 µs in 15 rounds of the same code).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import time

from devstack.samples import SAMPLE_ROUTED
from extproc.config import TelemetrySettings
from extproc.otlp import FinishedSpan, OtlpSpanExporter, exporter_options
from extproc.record import DecisionRecord, LogSink
from extproc.telemetry import SpanSink, Telemetry

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
_LOGGER = logging.getLogger("bench.decisions")


def _record(i: int) -> DecisionRecord:
    return dataclasses.replace(
        SAMPLE_ROUTED, decision_id=f"{i:016x}", started_unix_ns=time.time_ns(), traceparent=PARENT
    )


def _exporter(queue: int) -> OtlpSpanExporter:
    """The production exporter (default batch size and delay) whose gRPC call drops the encoded bytes."""
    options = dataclasses.replace(exporter_options("http://127.0.0.1:4317", {}), max_queue_size=queue)
    return OtlpSpanExporter(options, [("service.name", "model-router")], "model_router", export=lambda *a, **k: None)


class _Discard:
    """Builds nothing further: measures the span's construction alone."""

    def submit(self, span: FinishedSpan) -> None:
        pass

    def shutdown(self) -> None:
        pass


def _cpu_us_per_call(sink: LogSink | Telemetry, records: list[DecisionRecord]) -> float:
    start = time.process_time()
    for rec in records:
        sink.record(rec)
    if isinstance(sink, Telemetry):
        sink.shutdown()  # flush: the exporter thread's work is part of the cost
    return (time.process_time() - start) / len(records) * 1e6


def _telemetry(spans: SpanSink | None) -> Telemetry:
    return Telemetry(TelemetrySettings(metrics_listen=None), _LOGGER, spans)


def main() -> None:
    """Print the median over rounds of CPU µs per decision for both sinks, the difference, and its parts."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    _LOGGER.setLevel(logging.INFO)  # decision lines are at debug: not emitted, as in production
    runs: dict[str, list[float]] = {"logging only": [], "metrics": [], "metrics + span built": [], "full": []}
    overheads = []
    for _ in range(args.rounds):
        records = [_record(i) for i in range(args.n)]
        runs["logging only"].append(_cpu_us_per_call(LogSink(_LOGGER), records))
        runs["full"].append(_cpu_us_per_call(_telemetry(_exporter(args.n)), records))
        overheads.append(runs["full"][-1] - runs["logging only"][-1])
        runs["metrics"].append(_cpu_us_per_call(_telemetry(None), records))
        runs["metrics + span built"].append(_cpu_us_per_call(_telemetry(_Discard()), records))
    med = {name: statistics.median(values) for name, values in runs.items()}
    overhead = statistics.median(overheads)
    verdict = "PASS" if overhead <= 50 else "FAIL"
    print(f"logging only:                    {med['logging only']:7.1f} µs CPU per decision")
    print(f"spans (1.0, batched) + metrics:  {med['full']:7.1f} µs CPU per decision")
    print(
        f"telemetry overhead:              {overhead:7.1f} µs CPU per decision (budget 50 µs) -> {verdict}"
        f"  [{args.rounds} rounds: min {min(overheads):.1f}, max {max(overheads):.1f}]"
    )
    print(f"  metrics                        {med['metrics'] - med['logging only']:7.1f} µs")
    print(f"  building the span              {med['metrics + span built'] - med['metrics']:7.1f} µs")
    print(f"  queue + batch + OTLP encoding  {med['full'] - med['metrics + span built']:7.1f} µs")


if __name__ == "__main__":
    main()
