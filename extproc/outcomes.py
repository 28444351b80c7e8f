"""Joins captured prompts with feedback by decision id into ``../shared/EVAL.md`` outcome records.

``model-router outcomes --capture FILE... --feedback FILE... --out OUT.jsonl`` writes one line per captured
decision that has feedback::

    {"id": <decision id>, "messages": [...], "scores": {<model>: <mean score>}}

Several scores for the same decision and model are averaged (two thumbs-up and one thumbs-down give 0.667): each
is one observation of the same outcome. Feedback whose decision has no captured prompt (capture sampled it out, or
its line expired) is counted and skipped; so are malformed lines, repeated capture lines for one id (the first
wins) and, unless ``--keep-unscored``, captured prompts without feedback. Inputs may be plain or ``.gz`` (and the
rotated ``.1`` files). The output holds prompts: it is created with mode 0600.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TextIO

import orjson

from classifier.jsonl import NOT_JSON, read_jsonl, unit_score

__all__ = ["JoinStats", "join_outcomes", "run_outcomes"]


@dataclass(slots=True)
class JoinStats:
    """What the join read, wrote and skipped."""

    records: int = 0
    feedback_joined: int = 0
    averaged: int = 0
    """(decision, model) pairs whose score is the mean of several."""
    malformed_capture: int = 0
    malformed_feedback: int = 0
    duplicate_capture: int = 0
    unscored_capture: int = 0
    """Captured prompts without feedback (written without ``scores`` with ``keep_unscored``)."""
    orphan_feedback: int = 0
    """Feedback lines whose decision has no captured prompt."""
    orphan_decisions: int = 0

    def summary(self, out: Path, keep_unscored: bool) -> str:
        """Two lines for people: what was written, and what was skipped and why."""
        wrote = (
            f"outcomes: wrote {self.records} records to {out} ({self.feedback_joined} feedback lines joined, "
            f"{self.averaged} decision/model scores averaged)"
        )
        unscored = "written without scores" if keep_unscored else "skipped"
        return (
            f"{wrote}\n"
            f"skipped: {self.orphan_feedback} feedback lines for {self.orphan_decisions} decisions without a captured "
            f"prompt, {self.malformed_feedback} malformed feedback lines, {self.malformed_capture} malformed capture "
            f"lines, {self.duplicate_capture} repeated capture lines; {self.unscored_capture} captured prompts "
            f"without feedback ({unscored})"
        )


def _lines(paths: Sequence[Path]) -> Iterator[Any]:
    """Each line of each file, parsed; a line that is not JSON is ``None``."""
    for path in paths:
        for _, value in read_jsonl(path):
            yield None if value is NOT_JSON else value


def _read_feedback(paths: Sequence[Path], stats: JoinStats) -> dict[str, dict[str, list[float]]]:
    """decision id -> model -> scores."""
    by_id: dict[str, dict[str, list[float]]] = {}
    for line in _lines(paths):
        decision_id = line.get("decision_id") if isinstance(line, dict) else None
        model = line.get("model") if isinstance(line, dict) else None
        score = unit_score(line.get("score")) if isinstance(line, dict) else None
        if not isinstance(decision_id, str) or not decision_id or not isinstance(model, str) or not model:
            stats.malformed_feedback += 1
            continue
        if score is None:
            stats.malformed_feedback += 1
            continue
        by_id.setdefault(decision_id, {}).setdefault(model, []).append(score)
    return by_id


def join_outcomes(
    captures: Sequence[Path], feedback: Sequence[Path], out: IO[bytes], keep_unscored: bool = False
) -> JoinStats:
    """Write the joined records to ``out`` in capture order; return the counts."""
    stats = JoinStats()
    scores = _read_feedback(feedback, stats)
    seen: set[str] = set()
    for line in _lines(captures):
        decision_id = line.get("id") if isinstance(line, dict) else None
        messages = line.get("messages") if isinstance(line, dict) else None
        if not isinstance(decision_id, str) or not decision_id or not isinstance(messages, list) or not messages:
            stats.malformed_capture += 1
            continue
        if decision_id in seen:
            stats.duplicate_capture += 1
            continue
        seen.add(decision_id)
        found = scores.get(decision_id)
        record: dict[str, Any] = {"id": decision_id, "messages": messages}
        if found is None:
            stats.unscored_capture += 1
            if not keep_unscored:
                continue
        else:
            record["scores"] = {model: sum(v) / len(v) for model, v in found.items()}
            stats.feedback_joined += sum(len(v) for v in found.values())
            stats.averaged += sum(1 for v in found.values() if len(v) > 1)
        out.write(orjson.dumps(record) + b"\n")
        stats.records += 1
    for decision_id, models in scores.items():
        if decision_id not in seen:
            stats.orphan_decisions += 1
            stats.orphan_feedback += sum(len(v) for v in models.values())
    return stats


def run_outcomes(
    captures: Sequence[Path],
    feedback: Sequence[Path],
    out: Path,
    keep_unscored: bool,
    stdout: TextIO,
    stderr: TextIO,
) -> int:
    """The ``model-router outcomes`` command: 0 on success, 2 (one line on stderr) if a file cannot be read."""
    for path in (*captures, *feedback):
        if not path.is_file():
            print(f"model-router outcomes: {path}: no such file", file=stderr)
            return 2
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            stats = join_outcomes(captures, feedback, f, keep_unscored)
    except (OSError, EOFError) as exc:
        print(f"model-router outcomes: {exc}", file=stderr)
        return 2
    print(stats.summary(out, keep_unscored), file=stdout)
    return 0
