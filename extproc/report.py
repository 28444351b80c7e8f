"""``model-router report``: decision logs -> savings by tenant, model and day, traffic per tier; text, JSON or HTML.

Reads the router's JSON log lines (``telemetry.decision_log: true``, or debug level). Every decision line is read as
a ``model_router.v1.RoutingDecision`` — lines written before that message existed are mapped onto it — and lines
that look like decisions but cannot be read are skipped and counted. A decision seen twice (its ``decision_id``: the
same log given twice, or a log and its ``.gz`` copy) is counted once, and the copies are counted. Savings count the
decisions that chose a model (routed, fallback, and shadow: what shadow mode *would* have saved): the estimated cost
of each request on the model it asked for (or the default model) against the model chosen. With ``--eval`` scores
and their EVAL.md data, the HTML report adds the cost-quality curve of those scores.

With ``--envoy-log``, the decisions are checked against Envoy's access logs: the router logs a decision even when its
answer reached Envoy after ``message_timeout`` and the request went on unrouted (fail-open), so a routed, fallback or
shadow decision (the outcomes whose dynamic metadata carries the decision id) that is missing from the access logs
was not applied, and is left out of the savings. Decisions made through ``Decide`` never reach Envoy, and decisions
from outside the time the access logs cover cannot be told apart from another gateway's: both are not checked.
"""

from __future__ import annotations

import gzip
import html
import io
import json
import math
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from google.protobuf import json_format

from classifier.atomic_file import clash, write_whole
from classifier.jsonl import READ_ERRORS, first_of_each_id, io_reason, starts_gzip
from extproc.api.model_router.v1 import model_router_pb2 as api
from extproc.decision_proto import from_legacy_dict, label
from extproc.policy import Reason

__all__ = [
    "CandidateComparison",
    "EnvoyCheck",
    "EnvoyLog",
    "EvalCurve",
    "EvalInput",
    "LogReader",
    "ReportError",
    "Savings",
    "Summary",
    "eval_curve",
    "read_envoy_logs",
    "render_html",
    "summarise",
    "write_report",
]

_COUNTED = ("routed", "fallback", "shadow")
_DUPLICATES = "duplicate decision(s) (a decision_id seen before: the same log given twice?)"
NOT_ROUTED = "(not routed)"
PINNED = "(pinned)"
"""The tier of decisions a trusted caller pinned (``trusted_override``, e.g. ``model-router label``'s replays): not
the router's choice, so not its savings."""
"""The tier label of pass-throughs and rejections in the traffic shares."""


@dataclass
class Savings:
    """Totals for one group of counted decisions."""

    requests: int = 0
    cost_requested: float = 0.0
    cost_selected: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def saved(self) -> float:
        """Estimated cost saved."""
        return self.cost_requested - self.cost_selected

    @property
    def saved_pct(self) -> float:
        """Estimated cost saved, in percent of the cost without the router."""
        return 100 * self.saved / self.cost_requested if self.cost_requested else 0.0

    def add(self, outcome: str, requested: float, selected: float) -> None:
        """Count one decision."""
        self.requests += 1
        self.cost_requested += requested
        self.cost_selected += selected
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


@dataclass
class CandidateComparison:
    """The candidate model (``classifier.candidate_model_dir``) against the live one, on the same requests.

    Costs are the catalog estimates of each one's choice; the predicted success of each choice is its own model's
    (each calibrated on the same scale), so the difference is what the candidate expects to give up or gain.
    """

    requests: int = 0
    agree: int = 0
    moves: dict[tuple[str, str], int] = field(default_factory=dict)
    """(live choice, candidate choice) -> requests, for the disagreements."""
    cost_live: float = 0.0
    cost_candidate: float = 0.0
    success_live: float = 0.0
    success_candidate: float = 0.0
    """Sums of predicted success, over the requests where both models predicted it."""
    with_success: int = 0

    def add(self, d: api.RoutingDecision) -> None:
        """Count one decision that carries a candidate choice."""
        self.requests += 1
        if d.candidate_selected_model == d.selected_model:
            self.agree += 1
        else:
            key = (d.selected_model, d.candidate_selected_model)
            self.moves[key] = self.moves.get(key, 0) + 1
        self.cost_live += d.estimated_cost_selected
        self.cost_candidate += d.estimated_cost_candidate
        if d.HasField("success_probability") and d.HasField("candidate_success_probability"):
            self.with_success += 1
            self.success_live += d.success_probability
            self.success_candidate += d.candidate_success_probability

    @property
    def cost_change_pct(self) -> float:
        """The candidate's estimated cost change against the live model's, in percent."""
        return 100 * (self.cost_candidate - self.cost_live) / self.cost_live if self.cost_live else 0.0

    def mean_success(self) -> tuple[float, float]:
        """Mean predicted success of the live and of the candidate choices."""
        n = self.with_success or 1
        return self.success_live / n, self.success_candidate / n


@dataclass
class Summary:
    """Everything the report shows."""

    by_tenant_model: dict[tuple[str, str], Savings] = field(default_factory=dict)
    by_model: dict[str, Savings] = field(default_factory=dict)
    by_tenant: dict[str, Savings] = field(default_factory=dict)
    by_day: dict[str, Savings] = field(default_factory=dict)
    total: Savings = field(default_factory=Savings)
    tiers: dict[str, int] = field(default_factory=dict)
    """Every decision by the tier it was sent to (:data:`NOT_ROUTED` for pass-throughs and rejections, :data:`PINNED`
    for pinned requests)."""
    outcomes: dict[str, int] = field(default_factory=dict)
    bad_lines: int = 0
    duplicates: int = 0
    """Decisions whose ``decision_id`` was seen before (left out)."""
    candidate: CandidateComparison = field(default_factory=CandidateComparison)
    envoy: EnvoyCheck | None = None
    """With ``--envoy-log``: which decisions Envoy applied."""


class ReportError(Exception):
    """An input that cannot be read or used, or an output that cannot be written: one line for the user, exit 2."""


_SHIPPER_STREAMS = ("stdout", "stderr")
"""The values of the ``stream`` key that log shippers (Docker's json-file driver, Fluent Bit, Vector) add to a JSON
line: ``RoutingDecision`` has a ``stream`` field too (a bool), which these strings are never."""
_OUTCOMES = frozenset(api.Outcome.values())


def _lines(path: Path) -> Iterator[str]:
    """The text lines of ``path``, gunzipped if it is gzip: by its magic bytes too, as ``classifier.jsonl`` reads (a
    log copied out of a pod as router.log is often compressed all the same, and read as text it held no line)."""
    with open(path, "rb") as raw:
        gzipped = path.suffix == ".gz" or starts_gzip(raw)
        binary: Any = gzip.open(raw) if gzipped else raw  # noqa: SIM115 - the text wrapper closes it
        with io.TextIOWrapper(binary, encoding="utf-8", errors="replace") as f:
            yield from f


class LogReader:
    """Reads decision lines from log files (plain or gzip) and counts the bad ones."""

    def __init__(self) -> None:
        self.bad_lines = 0
        self.via_decide: set[str] = set()
        """The ids of decisions made through ``Decide`` (``"via_decide": true``): no Envoy applies them."""

    def decisions(self, paths: Iterable[Path]) -> Iterator[api.RoutingDecision]:
        """Every decision in ``paths``; other log lines are ignored, unreadable decision lines counted. A file that
        cannot be read (missing, not gzip, a truncated or corrupt .gz) raises :class:`ReportError` naming it."""
        for path in paths:
            try:
                yield from self._read(path)
            except READ_ERRORS as exc:
                raise ReportError(f"cannot read {path} ({io_reason(exc)})") from None

    def _read(self, path: Path) -> Iterator[api.RoutingDecision]:
        for line in _lines(path):
            if '"decision"' not in line or '"event"' not in line:
                continue
            decision = self._parse(line)
            if decision is not None:
                yield decision

    def _parse(self, line: str) -> api.RoutingDecision | None:
        """The decision on ``line``; None (counted) if it cannot be read, or holds a cost that is negative or not
        finite or an outcome the proto does not define (a corrupt line: what it would add to the savings, or
        whether it counts at all, is unknown), None (not counted) if it is another event."""
        start = line.find("{")
        try:
            event = json.loads(line[start:]) if start >= 0 else None
        except ValueError:
            event = None
        if not isinstance(event, dict):
            self.bad_lines += 1
            return None
        if event.get("event") != "decision":
            return None
        if event.get("via_decide") is True and isinstance(event.get("decision_id"), str):
            self.via_decide.add(event["decision_id"])
        if event.get("stream") in _SHIPPER_STREAMS:
            event = {k: v for k, v in event.items() if k != "stream"}
        try:
            decision = json_format.ParseDict(from_legacy_dict(event), api.RoutingDecision())
        except (json_format.ParseError, TypeError, ValueError):
            self.bad_lines += 1
            return None
        d = decision  # an unset cost reads as 0.0
        costs = (d.estimated_cost_requested, d.estimated_cost_selected, d.estimated_cost_candidate)
        if decision.outcome not in _OUTCOMES or not all(math.isfinite(c) and c >= 0 for c in costs):
            self.bad_lines += 1
            return None
        return decision


_ENVOY_TEXT = re.compile(
    r'\[(?P<start>[^\]]+)\] "[^"]*" \S+ \S+ outcome=\S* reason=\S* model=\S* '
    r"decision=(?P<decision>\S*) (?P<ms>\S+)ms\s*$"
)
"""An access-log line of ``k8s/base/envoy.yaml``'s text format (searched, not matched: a log collector may prefix
its own timestamp)."""
_ABSENT = ("", "-")
"""What Envoy writes for a missing dynamic metadata value: JSON ``null`` (read as None), ``-`` in text."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = 1_000_000


def _unix_ns(text: object) -> int | None:
    """An ISO 8601 time (``%START_TIME%``: ``2025-11-23T10:00:00.123Z``; without a zone read as UTC, as Envoy writes
    it) in nanoseconds since the epoch, or None."""
    if not isinstance(text, str):
        return None
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return ((t if t.tzinfo else t.replace(tzinfo=UTC)) - _EPOCH) // timedelta(microseconds=1) * 1000


@dataclass
class EnvoyLog:
    """What Envoy's access logs (``--envoy-log``) hold: the decision ids it applied, and the time the logs cover."""

    ids: set[str] = field(default_factory=set)
    access_lines: int = 0
    skipped_lines: int = 0
    """Lines in neither access-log format (Envoy's own messages in a container log, another program's lines)."""
    first_ns: int | None = None
    """The earliest request start."""
    last_ns: int | None = None
    """The latest request end (start + duration, + 1 ms for Envoy's rounding to milliseconds)."""

    def add(self, line: str) -> None:
        """Read one line: an access-log line in either format, or a skipped one."""
        entry = _access_entry(line)
        if entry is None:
            self.skipped_lines += 1
            return
        start, end, decision_id = entry
        self.access_lines += 1
        if decision_id is not None:
            self.ids.add(decision_id)
        self.first_ns = start if self.first_ns is None else min(self.first_ns, start)
        self.last_ns = end if self.last_ns is None else max(self.last_ns, end)

    def covers(self, ns: int) -> bool:
        """Whether a request started at ``ns`` is within the time the logs cover."""
        return self.first_ns is not None and self.last_ns is not None and self.first_ns <= ns <= self.last_ns


def _access_entry(line: str) -> tuple[int, int, str | None] | None:
    """(start, end, decision id or None) of an access-log line of ``envoy/envoy.yaml`` (JSON) or
    ``k8s/base/envoy.yaml`` (text); None for any other line, or one without a readable start time."""
    if (m := _ENVOY_TEXT.search(line)) is not None:
        start, ms, decision = m["start"], m["ms"], m["decision"]
    else:
        brace = line.find("{")
        try:
            entry = json.loads(line[brace:]) if brace >= 0 else None
        except ValueError:
            return None
        if not isinstance(entry, dict) or not isinstance(entry.get("model_router"), dict):
            return None
        start, ms, decision = (
            entry.get("start_time"),
            entry.get("duration_ms"),
            entry["model_router"].get("decision_id"),
        )
    start_ns = _unix_ns(start)
    if start_ns is None:
        return None
    duration = int(ms) if isinstance(ms, int) or (isinstance(ms, str) and ms.isdigit()) else 0  # "-": no response
    decision_id = decision if isinstance(decision, str) and decision not in _ABSENT else None
    return start_ns, start_ns + (duration + 1) * _MS, decision_id


def read_envoy_logs(paths: Iterable[Path]) -> EnvoyLog:
    """The access-log lines of ``paths`` (plain or gzip); :class:`ReportError` naming a file that cannot be read, or
    if no file holds an access-log line (the wrong file, or a format this reader does not know)."""
    log = EnvoyLog()
    paths = list(paths)
    for path in paths:
        try:
            for line in _lines(path):
                if line.strip():
                    log.add(line)
        except READ_ERRORS as exc:
            raise ReportError(f"cannot read --envoy-log {path} ({io_reason(exc)})") from None
    if not log.access_lines:
        names = ", ".join(str(p) for p in paths)
        raise ReportError(
            f"--envoy-log {names}: no Envoy access-log line ({log.skipped_lines} line(s) in neither the JSON format of"
            " envoy/envoy.yaml nor the text format of k8s/base/envoy.yaml)"
        )
    return log


@dataclass
class EnvoyCheck:
    """The decisions that should have reached Envoy (routed, fallback, shadow) against its access logs."""

    log: EnvoyLog
    applied: int = 0
    not_applied: int = 0
    """In the logs' time span but not in them: Envoy had failed open (left out of the savings)."""
    not_applied_by_tenant: dict[str, int] = field(default_factory=dict)
    outside_span: int = 0
    """Not in the logs, and decided outside the time they cover (or at an unknown time, or without an id): not
    checked, kept."""
    via_decide: int = 0
    """Made through ``Decide``: never sent to Envoy, not checked, kept."""

    def stands(self, d: api.RoutingDecision, via_decide: bool) -> bool:
        """Count ``d``; False if Envoy did not apply it."""
        if via_decide:
            self.via_decide += 1
        elif d.decision_id in self.log.ids:
            self.applied += 1
        elif not d.decision_id or not d.HasField("decided_at") or not self.log.covers(d.decided_at.ToNanoseconds()):
            self.outside_span += 1
        else:
            self.not_applied += 1
            tenant = d.tenant or "-"
            self.not_applied_by_tenant[tenant] = self.not_applied_by_tenant.get(tenant, 0) + 1
            return False
        return True


def summarise(
    decisions: Iterable[api.RoutingDecision],
    bad_lines: int = 0,
    envoy: EnvoyLog | None = None,
    via_decide: frozenset[str] | set[str] = frozenset(),
) -> Summary:
    """Group counted decisions by tenant and model, model, tenant and day; count tiers and outcomes. A decision whose
    ``decision_id`` was seen before is left out and counted: decision ids are random, so it is a copy. With ``envoy``,
    a decision Envoy did not apply is sent nowhere (:data:`NOT_ROUTED`) and left out of the savings
    (:meth:`EnvoyCheck.stands`); ``via_decide`` are the ids of decisions made through ``Decide``."""
    s = Summary(bad_lines=bad_lines, envoy=EnvoyCheck(envoy) if envoy is not None else None)
    seen: set[str] = set()
    for d in decisions:
        if d.decision_id:
            if d.decision_id in seen:
                s.duplicates += 1
                continue
            seen.add(d.decision_id)
        outcome = label("outcome", d.outcome) if d.outcome else "unspecified"
        s.outcomes[outcome] = s.outcomes.get(outcome, 0) + 1
        applied = s.envoy is None or outcome not in _COUNTED or s.envoy.stands(d, d.decision_id in via_decide)
        pinned = label("reason", d.reason) == Reason.TRUSTED_OVERRIDE.value if d.reason else False
        chose = outcome in _COUNTED and bool(d.selected_model) and not pinned and applied
        tier = (d.tier or "-") if chose else (PINNED if pinned and applied else NOT_ROUTED)
        s.tiers[tier] = s.tiers.get(tier, 0) + 1
        if chose and d.candidate_selected_model and d.HasField("estimated_cost_candidate"):
            s.candidate.add(d)
        if not chose or not d.HasField("estimated_cost_requested") or not d.HasField("estimated_cost_selected"):
            continue
        tenant = d.tenant or "-"
        day = d.decided_at.ToDatetime().date().isoformat() if d.HasField("decided_at") else "unknown"
        cost = (outcome, d.estimated_cost_requested, d.estimated_cost_selected)
        s.by_tenant_model.setdefault((tenant, d.selected_model), Savings()).add(*cost)
        for groups, key in ((s.by_model, d.selected_model), (s.by_tenant, tenant), (s.by_day, day)):
            groups.setdefault(key, Savings()).add(*cost)
        s.total.add(*cost)
    return s


@dataclass(frozen=True, slots=True)
class EvalInput:
    """``model-router eval`` scores and the EVAL.md data they were computed on."""

    scores: Path
    data: Path
    weak: str | None = None
    strong: str | None = None


@dataclass(frozen=True, slots=True)
class EvalCurve:
    """Quality against the share of requests sent to the strong model, for the router's scores."""

    weak: str
    strong: str
    items: int
    fraction: tuple[float, ...]
    quality: tuple[float, ...]
    q_weak: float
    q_strong: float
    apgr: float
    s95: float
    unscored: int = 0
    """Items of ``--data`` that have no score in ``--eval`` (or no id): left out of the curve."""
    without_pair: int = 0
    """Items with a score but without outcomes for both models: left out of the curve."""
    repeated: int = 0
    """Items of ``--data`` whose id an earlier item has: left out, as ``eval`` leaves them out of its scores."""

    @property
    def left_out(self) -> int:
        """The ``--data`` items left out of the curve, for any reason."""
        return self.unscored + self.without_pair + self.repeated


def _eval_items(option: str, path: Path, skip_torn: bool = False) -> list[dict[str, Any]]:
    """The items of an ``--eval`` or ``--data`` file; :class:`ReportError` naming the option if unreadable."""
    from classifier.evaluate import EvalError, load_items

    try:
        return load_items(option, path, skip_torn)
    except EvalError as exc:
        raise ReportError(str(exc)) from None


def _numbers(scores: Mapping[str, Any]) -> dict[str, float]:
    """The outcomes that are numbers in [0, 1], as ``model-router eval`` reads them (``null``, text, ``NaN`` or 50
    is no score)."""
    from classifier.jsonl import unit_score

    return {str(k): n for k, v in scores.items() if (n := unit_score(v)) is not None}


def _duplicate_ids(option: str, path: Path, ids: Iterable[str]) -> None:
    """:class:`ReportError` if an id occurs twice in ``--eval``: scores join items by id, so which score an item gets
    (and the APGR) would depend on the order of the lines (``eval`` writes one score per id)."""
    seen: set[str] = set()
    repeated: list[str] = []
    for item_id in ids:
        if item_id in seen:
            repeated.append(item_id)
        seen.add(item_id)
    if repeated:
        raise ReportError(
            f"{option} {path}: {len(repeated)} duplicate id(s) (first {repeated[0]!r}); scores are joined to --data"
            " items by id, so each item needs its own"
        )


def eval_curve(evaluation: EvalInput, points: int = 101) -> EvalCurve:
    """The cost-quality curve of ``evaluation`` (EVAL.md's two-model definition); raises :class:`ReportError`
    naming the option on an unreadable file or data it cannot use: an id twice in ``--eval``, the same model as weak
    and strong, or two models that tie on average (the gain over the weak model, PGR, is then undefined). An id twice
    in ``--data`` is read as ``eval`` reads it: the first item with it is used, the later ones left out and counted."""
    import numpy as np

    from classifier.metrics import routing_curve

    if evaluation.weak is not None and evaluation.weak == evaluation.strong:
        raise ReportError("--weak and --strong must name different models")
    lines = [
        item
        for item in _eval_items("--eval", evaluation.scores)
        if item.get("id") is not None and isinstance(item.get("score"), (int, float))  # null: a torn --data line
    ]
    _duplicate_ids("--eval", evaluation.scores, (str(item["id"]) for item in lines))
    scores = {str(item["id"]): float(item["score"]) for item in lines}
    data = _eval_items("--data", evaluation.data, skip_torn=True)  # eval gave a torn line no id
    first, again = first_of_each_id(data)  # as eval scores them: the first item with an id, once
    data = [data[i] for i in first]
    scored = [item for item in data if item.get("id") is not None and str(item["id"]) in scores]
    outcomes = [
        (scores[str(item["id"])], _numbers(item["scores"])) for item in scored if isinstance(item.get("scores"), dict)
    ]
    if not outcomes:
        raise ReportError(f"no item of --data {evaluation.data} has both a score in --eval and model outcomes")
    pair = (evaluation.weak, evaluation.strong)
    if pair[0] is None or pair[1] is None:
        from classifier.evaluate import choose_pair  # as eval chooses: never the named model for the other side

        chosen = choose_pair([o for _, o in outcomes if o], evaluation.weak, evaluation.strong)
        if chosen is None:
            raise ReportError(f"--data {evaluation.data}: fewer than two models with outcomes")
        pair = chosen
    weak, strong = pair
    assert weak is not None and strong is not None
    rows = [(s, o[weak], o[strong]) for s, o in outcomes if weak in o and strong in o]
    if not rows:
        raise ReportError(f"--data {evaluation.data}: no item has outcomes for both {weak} and {strong}")
    curve = routing_curve([r[0] for r in rows], np.array([r[1] for r in rows]), np.array([r[2] for r in rows]))
    if math.isnan(curve.apgr):
        raise ReportError(
            f"--data {evaluation.data}: {weak} and {strong} tie on average ({curve.q_weak:.3f} over {len(rows)}"
            " items): the gain over the weak model (PGR) is undefined; name another pair with --weak/--strong"
        )
    step = max(1, (len(curve.fraction) - 1) // (points - 1))
    keep = list(range(0, len(curve.fraction), step))
    if keep[-1] != len(curve.fraction) - 1:
        keep.append(len(curve.fraction) - 1)
    return EvalCurve(
        weak=weak,
        strong=strong,
        items=len(rows),
        fraction=tuple(float(curve.fraction[i]) for i in keep),
        quality=tuple(float(curve.quality[i]) for i in keep),
        q_weak=curve.q_weak,
        q_strong=curve.q_strong,
        apgr=curve.apgr,
        s95=curve.s95,
        unscored=len(data) - len(scored),
        without_pair=len(scored) - len(rows),
        repeated=len(again),
    )


def _json(s: Summary) -> dict[str, Any]:
    def group(g: Savings) -> dict[str, Any]:
        return {
            "requests": g.requests,
            "cost_requested": g.cost_requested,
            "cost_selected": g.cost_selected,
            "saved": g.saved,
            "outcomes": g.outcomes,
        }

    return {
        "groups": [{"tenant": t, "model": m, **group(g)} for (t, m), g in sorted(s.by_tenant_model.items())],
        "by_model": {k: group(g) for k, g in sorted(s.by_model.items())},
        "by_tenant": {k: group(g) for k, g in sorted(s.by_tenant.items())},
        "by_day": {k: group(g) for k, g in sorted(s.by_day.items())},
        "total": group(s.total),
        "tiers": dict(sorted(s.tiers.items())),
        "outcomes": s.outcomes,
        "bad_lines": s.bad_lines,
        "duplicate_decisions": s.duplicates,
        "candidate": _candidate_json(s.candidate) if s.candidate.requests else None,
        "envoy": _envoy_json(s.envoy) if s.envoy is not None else None,
    }


def _envoy_json(e: EnvoyCheck) -> dict[str, Any]:
    return {
        "totals": "as Envoy applied them",
        "applied": e.applied,
        "not_applied": e.not_applied,
        "not_applied_by_tenant": dict(sorted(e.not_applied_by_tenant.items())),
        "outside_span": e.outside_span,
        "via_decide": e.via_decide,
        "access_lines": e.log.access_lines,
        "skipped_lines": e.log.skipped_lines,
        "span": list(_span(e.log)),
    }


def _span(log: EnvoyLog) -> tuple[str, str]:
    """The time the access logs cover, as ISO 8601 UTC (to the millisecond)."""
    assert log.first_ns is not None and log.last_ns is not None  # read_envoy_logs refuses logs without a line

    def iso(ns: int) -> str:
        return (_EPOCH + timedelta(microseconds=ns // 1000)).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    return iso(log.first_ns), iso(log.last_ns)


def _envoy_text(e: EnvoyCheck) -> str:
    """The check against Envoy's access logs, in one paragraph (text output and HTML page)."""
    first, last = _span(e.log)
    tenants = ", ".join(f"{t} {n}" for t, n in sorted(e.not_applied_by_tenant.items()))
    parts = [
        f"totals as Envoy applied them: of the routed, fallback and shadow decisions, {e.applied} applied,"
        f" {e.not_applied} not applied (Envoy failed open: sent unrouted; left out"
        + (f"; by tenant: {tenants})" if tenants else ")"),
        f"{e.outside_span} outside the Envoy logs' time span {first} .. {last} (not checked, kept)",
    ]
    if e.via_decide:
        parts.append(f"{e.via_decide} made through Decide (never sent to Envoy; kept)")
    skipped = f"; {e.log.skipped_lines} line(s) in neither access-log format skipped" if e.log.skipped_lines else ""
    return f"{', '.join(parts)}. Read {e.log.access_lines} access-log line(s){skipped}."


def _candidate_json(c: CandidateComparison) -> dict[str, Any]:
    live, candidate = c.mean_success()
    return {
        "requests": c.requests,
        "agree": c.agree,
        "moves": [{"live": a, "candidate": b, "requests": n} for (a, b), n in sorted(c.moves.items())],
        "cost_live": c.cost_live,
        "cost_candidate": c.cost_candidate,
        "cost_change_pct": c.cost_change_pct,
        "predicted_success_live": live,
        "predicted_success_candidate": candidate,
    }


def _candidate_text(c: CandidateComparison, out: TextIO) -> None:
    live, candidate = c.mean_success()
    print(
        f"candidate model: decided beside the live one on {c.requests} requests; same choice on {c.agree}"
        f" ({100 * c.agree / c.requests:.1f}%). Estimated cost {c.cost_candidate:.4f} vs {c.cost_live:.4f} live"
        f" ({c.cost_change_pct:+.1f}%); mean predicted success {candidate:.3f} vs {live:.3f} live.",
        file=out,
    )
    for (a, b), n in sorted(c.moves.items(), key=lambda kv: -kv[1]):
        print(f"  live {a} -> candidate {b}: {n}", file=out)


def _text(s: Summary, out: TextIO) -> None:
    print(
        f"{'tenant':<16} {'selected model':<28} {'requests':>8} {'without router':>15} {'with router':>12} "
        f"{'saved':>10} {'saved %':>8}",
        file=out,
    )
    rows = [(t, m, g) for (t, m), g in sorted(s.by_tenant_model.items())]
    rows += [(t, "(all models)", g) for t, g in sorted(s.by_tenant.items())]
    for tenant, model, g in rows:
        print(
            f"{tenant:<16} {model:<28} {g.requests:>8} {g.cost_requested:>15.4f} {g.cost_selected:>12.4f} "
            f"{g.saved:>10.4f} {g.saved_pct:>7.1f}%",
            file=out,
        )
    t, applied = s.total, " (as Envoy applied them)" if s.envoy is not None else ""
    print(
        f"total{applied}: {t.requests} requests, estimated {t.cost_selected:.4f} instead of {t.cost_requested:.4f} "
        f"({t.saved_pct:.1f}% saved); outcomes seen: " + ", ".join(f"{k}={v}" for k, v in sorted(s.outcomes.items())),
        file=out,
    )


def write_report(
    paths: list[Path],
    out: TextIO,
    as_json: bool = False,
    html: Path | None = None,
    evaluation: EvalInput | None = None,
    err: TextIO | None = None,
    envoy_logs: list[Path] | None = None,
) -> int:
    """Print the savings table (or JSON), and write the HTML report if asked; 1 if the logs held no decision (said on
    ``err``, so ``--json`` output stays empty rather than not JSON); 2, with one ``model-router report: ...`` line on
    ``err`` (default: the process's stderr), if a file cannot be read or used, or the HTML report cannot be written."""
    err = sys.stderr if err is None else err
    try:
        return _write_report(paths, out, as_json, html, evaluation, err, envoy_logs or [])
    except ReportError as exc:
        out.flush()  # what was printed so far, then the reason, in that order on a terminal
        print(f"model-router report: {exc}", file=err)
        return 2


def _refuse_input_as_output(
    html: Path, paths: list[Path], evaluation: EvalInput | None, envoy_logs: list[Path]
) -> None:
    """:class:`ReportError` if ``--html`` names one of the inputs: writing it would replace a decision log (often the
    only copy), an Envoy log or the eval files with the page."""
    inputs = [("an input log", p) for p in paths] + [("an --envoy-log", p) for p in envoy_logs]
    if evaluation is not None:
        inputs += [("the --eval file", evaluation.scores), ("the --data file", evaluation.data)]
    if (message := clash(("--html", html), inputs)) is not None:
        raise ReportError(message)


def _write_report(
    paths: list[Path],
    out: TextIO,
    as_json: bool,
    html: Path | None,
    evaluation: EvalInput | None,
    err: TextIO,
    envoy_logs: list[Path],
) -> int:
    """The body of :func:`write_report`; raises :class:`ReportError` for what the operator must fix."""
    if html is not None:
        _refuse_input_as_output(html, paths, evaluation, envoy_logs)
    envoy = read_envoy_logs(envoy_logs) if envoy_logs else None
    reader = LogReader()
    # via_decide grows as lines are read: a decision's mark is on its own line, read before it is summarised.
    summary = summarise(reader.decisions(paths), 0, envoy, reader.via_decide)
    summary.bad_lines = reader.bad_lines
    if not summary.outcomes:
        print(
            "model-router report: no decision events found: run the router with telemetry.decision_log: true", file=err
        )
        if summary.bad_lines:
            print(f"model-router report: skipped {summary.bad_lines} unreadable decision line(s)", file=err)
        return 1
    curve = eval_curve(evaluation) if evaluation is not None else None
    if html is not None:  # before anything is printed: a failed run prints only its error
        try:
            page = render_html(summary, [str(p) for p in paths], curve).encode()
            write_whole(html, lambda fh: fh.write(page))
        except OSError as exc:
            raise ReportError(f"cannot write --html {html} ({io_reason(exc)})") from None
    if as_json:
        print(json.dumps(_json(summary), indent=2), file=out)
    else:
        _text(summary, out)
        if summary.candidate.requests:
            _candidate_text(summary.candidate, out)
        if summary.bad_lines:
            print(f"skipped {summary.bad_lines} unreadable decision line(s)", file=out)
        if summary.duplicates:
            print(f"skipped {summary.duplicates} {_DUPLICATES}", file=out)
        if summary.envoy is not None:
            print(_envoy_text(summary.envoy), file=out)
        if html is not None:
            print(f"HTML report written to {html}", file=out)
        if curve is not None and curve.left_out:
            print(f"cost-quality curve on {curve.items} EVAL items: {_left_out(curve)}", file=out)
    return 0


# --- HTML -------------------------------------------------------------------------------------------------------

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px auto; max-width: 1000px; color: #1d2733; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
.muted { color: #5b6775; } .warn { color: #9a3412; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; }
.card { border: 1px solid #d6dde5; border-radius: 6px; padding: 10px 14px; min-width: 150px; }
.card .v { font-size: 20px; font-weight: 600; }
table { border-collapse: collapse; width: 100%; margin-top: 6px; }
th, td { padding: 4px 8px; border-bottom: 1px solid #e5e9ef; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
td.bar { width: 30%; } .bar span { display: block; height: 10px; background: #2f7d5b; border-radius: 2px; }
.tiers { display: flex; height: 22px; border-radius: 4px; overflow: hidden; margin-top: 6px; }
.tiers div { height: 100%; }
svg text { font: 11px system-ui, sans-serif; fill: #1d2733; }
"""
_TIER_COLOURS = ("#2f7d5b", "#3b82c4", "#b45309", "#7c3aed", "#be123c", "#0f766e", "#64748b")


def _fig(name: str, value: float, text: str) -> str:
    """A figure the browser test reads back: exact value in ``data-value``, formatted text as content."""
    return f'<td data-figure="{html.escape(name)}" data-value="{value!r}">{html.escape(text)}</td>'


def _savings_table(title: str, key_name: str, prefix: str, groups: Mapping[str, Savings]) -> str:
    peak = max((g.saved for g in groups.values()), default=0.0)
    rows = []
    for key, g in sorted(groups.items()):
        width = 100 * g.saved / peak if peak > 0 and g.saved > 0 else 0.0
        p = f"{prefix}:{key}"
        rows.append(
            f"<tr><td>{html.escape(key)}</td>{_fig(p + ':requests', g.requests, str(g.requests))}"
            f"{_fig(p + ':without', g.cost_requested, f'{g.cost_requested:.6f}')}"
            f"{_fig(p + ':with', g.cost_selected, f'{g.cost_selected:.6f}')}"
            f"{_fig(p + ':saved', g.saved, f'{g.saved:.6f}')}"
            f"{_fig(p + ':saved_pct', g.saved_pct, f'{g.saved_pct:.1f}%')}"
            f'<td class="bar"><span style="width:{width:.1f}%"></span></td></tr>'
        )
    return (
        f'<section id="{prefix}"><h2>{html.escape(title)}</h2><table><thead><tr><th>{html.escape(key_name)}</th>'
        "<th>requests</th><th>without router</th><th>with router</th><th>saved</th><th>saved %</th><th></th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


def _tier_section(tiers: Mapping[str, int]) -> str:
    total = sum(tiers.values())
    bar, rows = [], []
    for i, (tier, n) in enumerate(sorted(tiers.items(), key=lambda kv: (-kv[1], kv[0]))):
        share = 100 * n / total if total else 0.0
        colour = "#cbd5e1" if tier in (NOT_ROUTED, PINNED) else _TIER_COLOURS[i % len(_TIER_COLOURS)]
        bar.append(f'<div style="width:{share:.3f}%;background:{colour}" title="{html.escape(tier)}"></div>')
        rows.append(
            f'<tr><td><span style="color:{colour}">&#9632;</span> {html.escape(tier)}</td>'
            f"{_fig('tier:' + tier + ':requests', n, str(n))}{_fig('tier:' + tier + ':share', share, f'{share:.1f}%')}"
            "</tr>"
        )
    return (
        '<section id="tiers"><h2>Share of traffic per tier</h2>'
        f'<div class="tiers">{"".join(bar)}</div><table><thead><tr><th>tier</th><th>requests</th><th>share</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


def _left_out(curve: EvalCurve) -> str:
    """The ``--data`` items the curve leaves out, and why: a partial join shrinks the curve, which must be said."""
    why = []
    if curve.repeated:
        why.append(f"{curve.repeated} repeating an earlier item's id (eval scores the first)")
    if curve.unscored:
        why.append(f"{curve.unscored} without a score in --eval")
    if curve.without_pair:
        why.append(f"{curve.without_pair} without outcomes for both {curve.weak} and {curve.strong}")
    return f"{' and '.join(why)} of the --data items left out"


def _curve_section(curve: EvalCurve) -> str:
    w, h, pad = 640, 320, 44
    lo = min(min(curve.quality), curve.q_weak, curve.q_strong)
    hi = max(max(curve.quality), curve.q_weak, curve.q_strong)
    lo, hi = (lo - 0.05, hi + 0.05) if hi - lo < 1e-9 else (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))

    def xy(f: float, q: float) -> str:
        return f"{pad + f * (w - 2 * pad):.1f},{h - pad - (q - lo) / (hi - lo) * (h - 2 * pad):.1f}"

    points = " ".join(xy(f, q) for f, q in zip(curve.fraction, curve.quality, strict=True))
    ticks = "".join(
        f'<text x="{pad + t * (w - 2 * pad):.1f}" y="{h - pad + 16}" text-anchor="middle">{t:.0%}</text>'
        for t in (0, 0.25, 0.5, 0.75, 1)
    )
    yticks = "".join(
        f'<text x="{pad - 6}" y="{h - pad - k / 4 * (h - 2 * pad) + 4:.1f}" text-anchor="end">'
        f"{lo + k / 4 * (hi - lo):.2f}</text>"
        for k in range(5)
    )
    s95 = "n/a" if math.isnan(curve.s95) else f"{curve.s95:.1%}"
    apgr = "n/a" if math.isnan(curve.apgr) else f"{curve.apgr:.3f}"
    left_out = f'<p class="warn" id="left-out">{html.escape(_left_out(curve))}.</p>' if curve.left_out else ""
    return (
        '<section id="curve"><h2>Cost-quality curve</h2>'
        f'<p class="muted">{curve.items} EVAL items: the hardest-scored share goes to {html.escape(curve.strong)}, '
        f"the rest to {html.escape(curve.weak)}; quality is the mean outcome. Dashed: random routing.</p>{left_out}"
        f"<table><tbody><tr><td>APGR</td>{_fig('eval:apgr', curve.apgr, apgr)}</tr>"
        f"<tr><td>S95 (share to {html.escape(curve.strong)} for 95% of its quality)</td>"
        f"{_fig('eval:s95', curve.s95, s95)}</tr></tbody></table>"
        f'<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img">'
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#94a3b8"/>'
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#94a3b8"/>'
        f'<polyline points="{xy(0, curve.q_weak)} {xy(1, curve.q_strong)}" fill="none" stroke="#94a3b8" '
        'stroke-dasharray="5,4"/>'
        f'<polyline points="{points}" fill="none" stroke="#2f7d5b" stroke-width="2"/>{ticks}{yticks}'
        f'<text x="{w / 2}" y="{h - 6}" text-anchor="middle">share of requests sent to {html.escape(curve.strong)}'
        "</text></svg></section>"
    )


def _candidate_section(c: CandidateComparison) -> str:
    live, candidate = c.mean_success()
    rows = "".join(
        f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td>{_fig(f'candidate:move:{a}:{b}', n, str(n))}</tr>"
        for (a, b), n in sorted(c.moves.items(), key=lambda kv: -kv[1])
    )
    figures = (
        ("requests", "requests", c.requests, str(c.requests)),
        ("same choice", "agree", c.agree, f"{c.agree} ({100 * c.agree / c.requests:.1f}%)"),
        ("estimated cost, live", "cost_live", c.cost_live, f"{c.cost_live:.6f}"),
        ("estimated cost, candidate", "cost_candidate", c.cost_candidate, f"{c.cost_candidate:.6f}"),
        ("cost change", "cost_change_pct", c.cost_change_pct, f"{c.cost_change_pct:+.1f}%"),
        ("mean predicted success, live", "success_live", live, f"{live:.3f}"),
        ("mean predicted success, candidate", "success_candidate", candidate, f"{candidate:.3f}"),
    )
    table = "".join(f"<tr><td>{html.escape(t)}</td>{_fig('candidate:' + n, v, x)}</tr>" for t, n, v, x in figures)
    return (
        '<section id="candidate"><h2>Candidate model (decides beside the live one, routes nothing)</h2>'
        f"<table><tbody>{table}</tbody></table><h2>Where they disagree</h2><table><thead><tr><th>live choice</th>"
        f"<th>candidate choice</th><th>requests</th></tr></thead><tbody>{rows}</tbody></table></section>"
    )


def _envoy_section(e: EnvoyCheck) -> str:
    figures = [
        ("applied", "applied", e.applied),
        ("not applied (left out of every figure below)", "not_applied", e.not_applied),
        *(
            (f"not applied, tenant {t}", f"not_applied:tenant:{t}", n)
            for t, n in sorted(e.not_applied_by_tenant.items())
        ),
        ("outside the Envoy logs' time span (not checked, kept)", "outside_span", e.outside_span),
        ("made through Decide (not checked, kept)", "via_decide", e.via_decide),
        ("access-log lines read", "access_lines", e.log.access_lines),
        ("lines in neither access-log format (skipped)", "skipped_lines", e.log.skipped_lines),
    ]
    table = "".join(f"<tr><td>{html.escape(t)}</td>{_fig('envoy:' + n, v, str(v))}</tr>" for t, n, v in figures)
    return (
        f'<section id="envoy"><h2>As Envoy applied them</h2><p class="{"warn" if e.not_applied else "muted"}">'
        f"{html.escape(_envoy_text(e))}</p><table><tbody>{table}</tbody></table></section>"
    )


def render_html(s: Summary, sources: list[str], curve: EvalCurve | None = None) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG; no scripts, no external resources)."""
    t = s.total
    outcomes = ", ".join(f"{html.escape(k)} {v}" for k, v in sorted(s.outcomes.items()))
    bad = (
        f'<p class="warn" id="bad-lines">Skipped <span data-figure="bad_lines" data-value="{s.bad_lines}">'
        f"{s.bad_lines}</span> unreadable decision line(s).</p>"
        if s.bad_lines
        else ""
    )
    if s.duplicates:
        bad += (
            f'<p class="warn" id="duplicates">Skipped <span data-figure="duplicates" data-value="{s.duplicates}">'
            f"{s.duplicates}</span> {html.escape(_DUPLICATES)}.</p>"
        )
    cards = "".join(
        f'<div class="card"><div class="muted">{label_}</div><div class="v" data-figure="total:{name}" '
        f'data-value="{value!r}">{html.escape(text)}</div></div>'
        for label_, name, value, text in (
            ("requests decided", "requests", t.requests, str(t.requests)),
            ("without router", "without", t.cost_requested, f"{t.cost_requested:.6f}"),
            ("with router", "with", t.cost_selected, f"{t.cost_selected:.6f}"),
            ("saved", "saved", t.saved, f"{t.saved:.6f}"),
            ("saved %", "saved_pct", t.saved_pct, f"{t.saved_pct:.1f}%"),
        )
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>model-router report</title>'
        f"<style>{_CSS}</style></head><body><h1>model-router: estimated savings</h1>"
        f'<p class="muted">From {html.escape(", ".join(sources))}. Estimated cost of each request on the model it '
        "asked for (or the default model) against the model the router chose, in the catalog's currency; shadow "
        f"decisions count what shadow mode would have saved. Decisions seen: {outcomes}.</p>{bad}"
        + (_envoy_section(s.envoy) if s.envoy is not None else "")
        + f'<div class="cards">{cards}</div>'
        + _savings_table("Savings by model", "selected model", "model", s.by_model)
        + _savings_table("Savings by tenant", "tenant", "tenant", s.by_tenant)
        + _savings_table("Savings by day (UTC)", "day", "day", s.by_day)
        + _tier_section(s.tiers)
        + (_candidate_section(s.candidate) if s.candidate.requests else "")
        + (_curve_section(curve) if curve is not None else "")
        + "</body></html>\n"
    )
