"""Joins captured prompts with feedback by decision id into ``../shared/EVAL.md`` outcome records.

``model-router outcomes --capture FILE... --feedback FILE... --out OUT.jsonl`` writes one line per captured
decision that has feedback::

    {"id": <decision id>, "messages": [...], "scores": {<model>: <mean score>}}

Several scores for the same decision and model are averaged (two thumbs-up and one thumbs-down give 0.667): each
is one observation of the same outcome. Feedback whose decision has no captured prompt (capture sampled it out, or
its line expired) is counted and skipped; so are malformed lines, repeated capture lines for one id (the first
wins), repeated feedback lines (one ``feedback_id``, e.g. in two copies of an archive) and, unless
``--keep-unscored``, captured prompts without feedback. Inputs may be plain or ``.gz`` (and the rotated ``.1``
files). The output holds prompts: it is created with mode 0600.
"""

from __future__ import annotations

import contextlib
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
    duplicate_feedback: int = 0
    """Feedback lines whose ``feedback_id`` was already read (the same line in two copies of an archive)."""
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
            f"lines, {self.duplicate_capture} repeated capture lines, {self.duplicate_feedback} repeated feedback "
            f"lines; {self.unscored_capture} captured prompts "
            f"without feedback ({unscored})"
        )


def _lines(files: Sequence[tuple[Path, IO[bytes]]]) -> Iterator[Any]:
    """Each line of each (already open) file, parsed; a line that is not JSON is ``None``."""
    for path, opened in files:
        for _, value in read_jsonl(path, opened):
            yield None if value is NOT_JSON else value


def _open_all(stack: contextlib.ExitStack, paths: Sequence[Path]) -> list[tuple[Path, IO[bytes]]]:
    """Every input opened before any is read, each file once: the router may rotate ``capture.jsonl`` to
    ``capture.jsonl.1`` while a large ``.1`` is being read, and open files keep their contents (a file opened
    under both names after such a rotation is read once)."""
    files: list[tuple[Path, IO[bytes]]] = []
    seen: set[tuple[int, int]] = set()
    for path in paths:
        fh = stack.enter_context(path.open("rb"))
        st = os.fstat(fh.fileno())
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            files.append((path, fh))
    return files


def _read_feedback(paths: Sequence[tuple[Path, IO[bytes]]], stats: JoinStats) -> dict[str, dict[str, list[float]]]:
    """decision id -> model -> scores; a line whose ``feedback_id`` was already read counts once (lines written
    before feedback ids existed have none and are all kept)."""
    by_id: dict[str, dict[str, list[float]]] = {}
    seen: set[str] = set()
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
        feedback_id = line.get("feedback_id")
        if isinstance(feedback_id, str) and feedback_id:
            if feedback_id in seen:
                stats.duplicate_feedback += 1
                continue
            seen.add(feedback_id)
        by_id.setdefault(decision_id, {}).setdefault(model, []).append(score)
    return by_id


def join_outcomes(
    captures: Sequence[Path], feedback: Sequence[Path], out: IO[bytes], keep_unscored: bool = False
) -> JoinStats:
    """Write the joined records to ``out`` in capture order; return the counts."""
    with contextlib.ExitStack() as stack:
        return _join(_open_all(stack, captures), _open_all(stack, feedback), out, keep_unscored)


def _join(
    captures: Sequence[tuple[Path, IO[bytes]]],
    feedback: Sequence[tuple[Path, IO[bytes]]],
    out: IO[bytes],
    keep_unscored: bool,
) -> JoinStats:
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
    # Written next to ``out`` and renamed over it only when the join succeeded: a failed run (a corrupt .gz among
    # the inputs) leaves the previous output whole, never an empty or partial file that adapt would read.
    partial = out.with_name(f".{out.name}.partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            stats = join_outcomes(captures, feedback, f, keep_unscored)
        os.replace(partial, out)
    except (OSError, EOFError) as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        print(f"model-router outcomes: {exc}", file=stderr)
        return 2
    print(stats.summary(out, keep_unscored), file=stdout)
    return 0
