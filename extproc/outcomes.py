"""Joins captured prompts with feedback by decision id into ``../shared/EVAL.md`` outcome records.

``model-router outcomes --capture FILE... --feedback FILE... --out OUT.jsonl`` writes one line per captured
decision that has feedback::

    {"id": <decision id>, "messages": [...], "scores": {<model>: <mean score>}, "tenant": <tenant, if any>}

Several scores for the same decision and model are averaged (two thumbs-up and one thumbs-down give 0.667): each
is one observation of the same outcome. Feedback whose decision has no captured prompt (capture sampled it out, or
its line expired) is counted and skipped; so are malformed lines, repeated capture lines for one id (the first
wins), repeated feedback lines (one ``feedback_id``, e.g. in two copies of an archive; or one decision, model and
idempotency key, ``idempotency_key_hash``: a client's retry of a score that was written after all; the first wins)
and, unless ``--keep-unscored``, captured prompts without feedback. Inputs may be plain or ``.gz`` (and the rotated
``.1`` files). A missing ``X.1`` given together with ``X`` is skipped and named in the summary (not rotated yet); any
other missing input is an error. ``--tenant`` keeps only the decisions of the tenants named, ``--exclude-tenant`` leaves
those out (one tenant's clients can score their own decisions at will: fit abilities without them, or per tenant).
Only tenants configured under ``tenants:`` are recorded (any other tenant header value is no tenant); a name that
matches no captured decision is said in the summary.
The output holds prompts: it is created with mode 0600.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

import orjson

from classifier.jsonl import NOT_JSON, READ_ERRORS, io_reason, read_jsonl, unit_score
from extproc.feedback import IDEMPOTENCY_HASH_KEY, idempotency_key_hash

__all__ = ["JoinStats", "TenantFilter", "join_outcomes", "run_outcomes"]


@dataclass(frozen=True, slots=True)
class TenantFilter:
    """Which decisions' tenants are joined: ``only`` those (a decision without a tenant is none of them), or all but
    ``exclude``."""

    only: frozenset[str] | None = None
    exclude: frozenset[str] = frozenset()

    def keeps(self, tenant: str | None) -> bool:
        """Whether a decision of ``tenant`` is joined."""
        if self.only is not None:
            return tenant in self.only
        return tenant not in self.exclude

    @property
    def active(self) -> bool:
        """Some decision may be left out."""
        return self.only is not None or bool(self.exclude)


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
    """Feedback lines whose ``feedback_id`` was already read (the same line in two copies of an archive), or whose
    decision, model and idempotency key were (a retried score)."""
    unscored_capture: int = 0
    """Captured prompts without feedback (written without ``scores`` with ``keep_unscored``)."""
    orphan_feedback: int = 0
    """Feedback lines whose decision has no captured prompt."""
    orphan_decisions: int = 0
    other_tenant: int = 0
    """Captured decisions left out by ``--tenant`` or ``--exclude-tenant`` (their feedback is not counted as orphan)."""
    tenants_seen: set[str] = field(default_factory=set)
    missing_rotated: list[Path] = field(default_factory=list)
    """Inputs ``X.1`` given with ``X`` that did not exist (the router has not rotated ``X`` yet)."""

    def summary(self, out: Path, keep_unscored: bool, tenants: TenantFilter = TenantFilter()) -> str:
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
            + (f"; {self.other_tenant} captured decisions of other tenants" if tenants.active else "")
            + "".join(
                f"\nno captured decision of tenant {name!r} (only tenants configured under `tenants:` are recorded)"
                for name in sorted((tenants.only or frozenset()) | tenants.exclude)
                if name not in self.tenants_seen
            )
            + "".join(f"\nskipped missing {path} (not rotated yet)" for path in self.missing_rotated)
        )


class InputError(Exception):
    """An input that cannot be read: ``flag`` (``--capture``/``--feedback``), the path as given, and why."""

    def __init__(self, flag: str, path: Path, reason: str) -> None:
        super().__init__(f"cannot read {flag} {path} ({reason})")


def _lines(files: Sequence[tuple[Path, IO[bytes]]], flag: str) -> Iterator[Any]:
    """Each line of each (already open) file, parsed; a line that is not JSON is ``None``. A file that cannot be
    read (a corrupt ``.gz``) raises :class:`InputError`."""
    for path, opened in files:
        try:
            for _, value in read_jsonl(path, opened):
                yield None if value is NOT_JSON else value
        except READ_ERRORS as exc:
            raise InputError(flag, path, io_reason(exc)) from exc


def _rotated(path: Path, paths: Sequence[Path]) -> bool:
    """``path`` is ``X.1`` for another input ``X``: the file the router rotates ``X`` to."""
    return path.name.endswith(".1") and path.with_name(path.name[:-2]) in paths


def _open_all(
    stack: contextlib.ExitStack, paths: Sequence[Path], flag: str = "--capture", missing: list[Path] | None = None
) -> list[tuple[Path, IO[bytes]]]:
    """Every input opened before any is read, each file once, returned in the order given.

    The router may rotate ``capture.jsonl`` to ``capture.jsonl.1`` (replacing the old ``.1``) at any moment, and an
    open file keeps its contents. Each live file is therefore opened before its ``.1`` whatever the argument order:
    a rotation between the two opens then finds the same file under both names, read once, which is what both names
    held just after the rotation (the other order would read the old ``.1`` and the new, empty live file, and lose
    the previous live file). A rotated ``.1`` that does not exist yet is skipped and appended to ``missing``."""
    order = sorted(range(len(paths)), key=lambda i: _rotated(paths[i], paths))  # live files first; stable
    opened: dict[int, tuple[IO[bytes], tuple[int, int]]] = {}
    for i in order:
        path = paths[i]
        try:
            mode = os.stat(path).st_mode
            if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
                raise InputError(flag, path, "not a regular file")  # a FIFO would block the open
            fh = stack.enter_context(path.open("rb"))
        except FileNotFoundError as exc:
            if _rotated(path, paths) and missing is not None:
                missing.append(path)
                continue
            raise InputError(flag, path, io_reason(exc)) from None
        except OSError as exc:
            raise InputError(flag, path, io_reason(exc)) from exc
        st = os.fstat(fh.fileno())
        opened[i] = (fh, (st.st_dev, st.st_ino))
    files: list[tuple[Path, IO[bytes]]] = []
    seen: set[tuple[int, int]] = set()
    for i in range(len(paths)):
        if i in opened and opened[i][1] not in seen:
            seen.add(opened[i][1])
            files.append((paths[i], opened[i][0]))
    return files


def _read_feedback(paths: Sequence[tuple[Path, IO[bytes]]], stats: JoinStats) -> dict[str, dict[str, list[float]]]:
    """decision id -> model -> scores; a line whose ``feedback_id`` was already read counts once (lines written
    before feedback ids existed have none and are all kept), and so does a line whose decision, model and
    idempotency key (``idempotency_key_hash``) were (a client's retry of a score whose first write landed after all)."""
    by_id: dict[str, dict[str, list[float]]] = {}
    seen: set[str] = set()
    retried: set[tuple[str, str, str]] = set()
    for line in _lines(paths, "--feedback"):
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
        key = line.get(IDEMPOTENCY_HASH_KEY)
        if isinstance(raw := line.get("idempotency_key"), str) and raw:  # written before keys were kept as digests
            key = idempotency_key_hash(raw)
        if isinstance(key, str) and key:
            if (decision_id, model, key) in retried:  # the first line wins
                stats.duplicate_feedback += 1
                continue
            retried.add((decision_id, model, key))
        by_id.setdefault(decision_id, {}).setdefault(model, []).append(score)
    return by_id


def join_outcomes(
    captures: Sequence[Path],
    feedback: Sequence[Path],
    out: IO[bytes],
    keep_unscored: bool = False,
    tenants: TenantFilter = TenantFilter(),
) -> JoinStats:
    """Write the joined records to ``out`` in capture order; return the counts. An input that cannot be read
    raises :class:`InputError`."""
    missing: list[Path] = []
    with contextlib.ExitStack() as stack:
        stats = _join(
            _open_all(stack, captures, "--capture", missing),
            _open_all(stack, feedback, "--feedback", missing),
            out,
            keep_unscored,
            tenants,
        )
    stats.missing_rotated = missing
    return stats


def _join(
    captures: Sequence[tuple[Path, IO[bytes]]],
    feedback: Sequence[tuple[Path, IO[bytes]]],
    out: IO[bytes],
    keep_unscored: bool,
    tenants: TenantFilter = TenantFilter(),
) -> JoinStats:
    stats = JoinStats()
    scores = _read_feedback(feedback, stats)
    seen: set[str] = set()
    for line in _lines(captures, "--capture"):
        decision_id = line.get("id") if isinstance(line, dict) else None
        messages = line.get("messages") if isinstance(line, dict) else None
        if not isinstance(decision_id, str) or not decision_id or not isinstance(messages, list) or not messages:
            stats.malformed_capture += 1
            continue
        if decision_id in seen:
            stats.duplicate_capture += 1
            continue
        seen.add(decision_id)
        tenant = line.get("tenant")
        tenant = tenant if isinstance(tenant, str) else None
        if tenant is not None:
            stats.tenants_seen.add(tenant)
        if not tenants.keeps(tenant):
            stats.other_tenant += 1
            continue
        found = scores.get(decision_id)
        record: dict[str, Any] = {"id": decision_id, "messages": messages}
        if tenant is not None:
            record["tenant"] = tenant
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
    tenants: TenantFilter = TenantFilter(),
) -> int:
    """The ``model-router outcomes`` command: 0 on success, 2 (one line on stderr naming the argument and the file)
    if an input cannot be read or the output cannot be written."""
    # Written next to ``out`` and renamed over it only when the join succeeded: a failed run (a corrupt .gz among
    # the inputs) leaves the previous output whole, never an empty or partial file that adapt would read.
    partial = out.with_name(f".{out.name}.partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            stats = join_outcomes(captures, feedback, f, keep_unscored, tenants)
        os.replace(partial, out)
    except (InputError, OSError) as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        message = str(exc) if isinstance(exc, InputError) else f"cannot write --out {out} ({io_reason(exc)})"
        print(f"model-router outcomes: {message}", file=stderr)
        return 2
    print(stats.summary(out, keep_unscored, tenants), file=stdout)
    return 0
