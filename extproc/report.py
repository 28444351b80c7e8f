"""``model-router report``: turn decision logs into a savings estimate per tenant and model.

Reads the router's JSON log lines (``telemetry.decision_log: true``, or debug level), keeps the decision events
that chose a model (routed, fallback, and shadow — what shadow mode *would* have done), and sums the estimated
cost of each request on the model it asked for (or the default model) against the model chosen.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

__all__ = ["Savings", "read_decisions", "summarise", "write_report"]

_COUNTED = ("routed", "fallback", "shadow")


@dataclass
class Savings:
    """Totals for one (tenant, selected model) group."""

    requests: int = 0
    cost_requested: float = 0.0
    cost_selected: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def saved(self) -> float:
        """Estimated cost saved."""
        return self.cost_requested - self.cost_selected


def read_decisions(paths: Iterable[Path]) -> Iterator[dict[str, object]]:
    """Decision events from log files (plain or .gz); other lines and malformed JSON are skipped."""
    for path in paths:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            for line in f:
                start = line.find("{")
                if start < 0 or '"decision"' not in line:
                    continue
                try:
                    event = json.loads(line[start:])
                except ValueError:
                    continue
                if isinstance(event, dict) and event.get("event") == "decision":
                    yield event


def summarise(events: Iterable[dict[str, object]]) -> tuple[dict[tuple[str, str], Savings], dict[str, int]]:
    """Group counted decisions by (tenant, selected model); also count every outcome seen."""
    groups: dict[tuple[str, str], Savings] = {}
    outcomes: dict[str, int] = {}
    for e in events:
        outcome = str(e.get("outcome"))
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        requested, selected = e.get("cost_requested"), e.get("cost_selected")
        if outcome not in _COUNTED or not isinstance(requested, (int, float)) or not isinstance(selected, (int, float)):
            continue
        key = (str(e.get("tenant") or "-"), str(e.get("selected_model")))
        g = groups.setdefault(key, Savings())
        g.requests += 1
        g.cost_requested += requested
        g.cost_selected += selected
        g.outcomes[outcome] = g.outcomes.get(outcome, 0) + 1
    return groups, outcomes


def write_report(paths: list[Path], out: TextIO, as_json: bool = False) -> int:
    """Print the savings table (or JSON); return 1 if the logs held no decision."""
    groups, outcomes = summarise(read_decisions(paths))
    if not outcomes:
        print("no decision events found: run the router with telemetry.decision_log: true", file=out)
        return 1
    if as_json:
        rows = [
            {
                "tenant": t,
                "model": m,
                "requests": g.requests,
                "cost_requested": g.cost_requested,
                "cost_selected": g.cost_selected,
                "saved": g.saved,
                "outcomes": g.outcomes,
            }
            for (t, m), g in sorted(groups.items())
        ]
        print(json.dumps({"groups": rows, "outcomes": outcomes}, indent=2), file=out)
        return 0
    print(
        f"{'tenant':<16} {'selected model':<28} {'requests':>8} {'without router':>15} {'with router':>12} "
        f"{'saved':>10} {'saved %':>8}",
        file=out,
    )
    tenants: dict[str, Savings] = {}
    for (tenant, model), g in sorted(groups.items()):
        pct = 100 * g.saved / g.cost_requested if g.cost_requested else 0.0
        print(
            f"{tenant:<16} {model:<28} {g.requests:>8} {g.cost_requested:>15.4f} {g.cost_selected:>12.4f} "
            f"{g.saved:>10.4f} {pct:>7.1f}%",
            file=out,
        )
        t = tenants.setdefault(tenant, Savings())
        t.requests += g.requests
        t.cost_requested += g.cost_requested
        t.cost_selected += g.cost_selected
    total = Savings()
    for tenant, t in sorted(tenants.items()):
        pct = 100 * t.saved / t.cost_requested if t.cost_requested else 0.0
        print(
            f"{tenant:<16} {'(all models)':<28} {t.requests:>8} {t.cost_requested:>15.4f} "
            f"{t.cost_selected:>12.4f} {t.saved:>10.4f} {pct:>7.1f}%",
            file=out,
        )
        total.requests += t.requests
        total.cost_requested += t.cost_requested
        total.cost_selected += t.cost_selected
    pct = 100 * total.saved / total.cost_requested if total.cost_requested else 0.0
    print(
        f"total: {total.requests} requests, estimated {total.cost_selected:.4f} instead of "
        f"{total.cost_requested:.4f} ({pct:.1f}% saved); outcomes seen: "
        + ", ".join(f"{k}={v}" for k, v in sorted(outcomes.items())),
        file=out,
    )
    return 0
