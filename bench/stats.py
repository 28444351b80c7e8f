"""Pure pieces of the benchmark: parse wrk's summary line, aggregate rounds, compute ratios and targets.

Nothing here runs a process or reads a clock, so all of it is unit-tested (``tests/unit/bench``).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Sample",
    "WrkResult",
    "added",
    "median",
    "parse_wrk_output",
    "ratio",
]

_MARK = "WRK_JSON "


@dataclass(frozen=True, slots=True)
class WrkResult:
    """What ``bench/wrk.lua``'s ``done()`` printed for one wrk run; latencies in microseconds."""

    requests: int
    duration_us: int
    socket_errors: int
    """connect + read + write + timeout errors."""
    status_errors: int
    """Responses with a status >= 400."""
    p50_us: float
    p90_us: float
    p99_us: float

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return self.requests / (self.duration_us / 1e6) if self.duration_us > 0 else 0.0


def parse_wrk_output(text: str) -> WrkResult:
    """The result in wrk's output (the ``WRK_JSON`` line our Lua script prints); ValueError if absent."""
    for line in text.splitlines():
        if line.startswith(_MARK):
            d = json.loads(line[len(_MARK) :])
            return WrkResult(
                requests=int(d["requests"]),
                duration_us=int(d["duration_us"]),
                socket_errors=int(d["connect"]) + int(d["read"]) + int(d["write"]) + int(d["timeout"]),
                status_errors=int(d["status"]),
                p50_us=float(d["p50_us"]),
                p90_us=float(d["p90_us"]),
                p99_us=float(d["p99_us"]),
            )
    raise ValueError(f"no {_MARK.strip()} line in wrk output:\n{text[-2000:]}")


@dataclass(frozen=True, slots=True)
class Sample:
    """One measured run of one setup at one concurrency in one round."""

    setup: str
    workers: int
    concurrency: int
    round: int
    rps: float
    p50_us: float
    p90_us: float
    p99_us: float
    errors: int
    requests: int
    router_cpu_us_per_req: float | None
    """CPU of the ext_proc processes (router workers, or the no-op server) per completed request; None for E."""


def median(values: Sequence[float]) -> float:
    """The median; ValueError for no values."""
    if not values:
        raise ValueError("median of nothing")
    return float(statistics.median(values))


def ratio(value: float | None, base: float | None) -> float | None:
    """``value / base``; None when either is missing or the base is zero."""
    if value is None or base is None or base == 0:
        return None
    return value / base


def added(values: Sequence[float], bases: Sequence[float]) -> float | None:
    """Median over rounds of ``value - base``, pairing each value with the base measured in the same round.

    Pairing within a round cancels slow drift in the machine's load (other engineers' jobs), which is why setups
    are interleaved round by round. None when there is nothing to pair.
    """
    diffs = [v - b for v, b in zip(values, bases, strict=False)]
    return median(diffs) if diffs else None
