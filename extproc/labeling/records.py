"""Reading the prompts, resuming the output file, and appending outcome records to it.

Input: EVAL.md JSON Lines (optionally .gz), or the prompt-capture file (the same shape with extra keys, which are
ignored). Output: EVAL.md records, one per line, appended and flushed one at a time, so a crash loses at most the
items in flight and never a written one; a line cut short by a crash is removed on the next start.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from classifier.jsonl import NOT_JSON, NOT_UTF8, io_reason, read_jsonl
from extproc.labeling.grading import render_conversation

__all__ = [
    "PromptFile",
    "PromptItem",
    "RecordWriteError",
    "RecordWriter",
    "ResumeState",
    "id_key",
    "prepare_output",
    "read_prompts",
]

TextOf = Callable[[Mapping[str, Any]], str | None]


@dataclass(frozen=True, slots=True)
class PromptItem:
    """One prompt to label: its id as given, the messages to send, and its category if it has one."""

    id: str | int
    messages: list[Any]
    category: str | None
    line: int

    @property
    def key(self) -> str:
        """The id as compared for resume and duplicates."""
        return id_key(self.id)

    @property
    def prompt_chars(self) -> int:
        """Characters of conversation text, for token estimates."""
        return len(render_conversation(self.messages))


@dataclass(slots=True)
class PromptFile:
    """The usable items of a prompt file, and which lines were not usable and why (line numbers from 1)."""

    items: list[PromptItem] = field(default_factory=list)
    malformed: list[tuple[int, str]] = field(default_factory=list)
    no_text: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)


def id_key(value: object) -> str:
    """The comparable form of an item id (``7`` and ``"7"`` are the same item)."""
    return str(value)


def _item_of(obj: Any, number: int) -> PromptItem | str:
    """The item on one line (as :func:`~classifier.jsonl.read_jsonl` parsed it), or why it is malformed."""
    if obj is NOT_JSON:
        return "not JSON"
    if obj is NOT_UTF8:
        return "not UTF-8"
    if not isinstance(obj, dict):
        return "not a JSON object"
    ident = obj.get("id")
    if isinstance(ident, bool) or not isinstance(ident, str | int) or ident == "":
        return "no id"
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        return "no messages"
    category = obj.get("category")
    return PromptItem(ident, messages, category if isinstance(category, str) else None, number)


def read_prompts(path: Path, text_of: TextOf) -> PromptFile:
    """Every line of ``path`` sorted into usable items, malformed lines, items without user text and duplicate ids.

    ``text_of`` is the live server's prompt extraction: an item it finds no text in would never be classified, so a
    label for it could not teach the router anything. A file that cannot be read raises (``OSError``; a truncated or
    corrupt ``.gz``: ``EOFError``, ``zlib.error``), as for the other commands: labelling the part before the damage
    would pay for a run on what is not the file meant.
    """
    result = PromptFile()
    seen: set[str] = set()
    for number, obj in read_jsonl(path, not_utf8=True):
        item = _item_of(obj, number)
        if isinstance(item, str):
            result.malformed.append((number, item))
        elif text_of({"messages": item.messages}) is None:
            result.no_text.append(number)
        elif item.key in seen:
            result.duplicates.append(number)
        else:
            seen.add(item.key)
            result.items.append(item)
    return result


@dataclass(frozen=True, slots=True)
class ResumeState:
    """What an existing output file already holds: the ids done, bad lines kept, and a cut-off last line dropped."""

    done: frozenset[str] = frozenset()
    corrupt_lines: tuple[int, ...] = ()
    dropped_tail: tuple[int, int] | None = None
    """(line number, bytes) of an incomplete last line that was removed (its item is labelled again)."""
    covered: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Each id done -> the models its record has a score or a ``missing`` reason for. Resume is by id, so a model
    added to ``--models`` since is never asked for that item (the command says how many lack each model)."""


def _record_of(line: bytes) -> tuple[str, set[str]] | None:
    """The id of the record on ``line`` and the models it has a score or a missing reason for; None if no record."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or "id" not in obj:
        return None
    parts = (obj.get("scores"), obj.get("missing"))
    return id_key(obj["id"]), {str(model) for part in parts if isinstance(part, dict) for model in part}


def prepare_output(path: Path, repair: bool = True) -> ResumeState:
    """Read the ids already in ``path`` and make it safe to append to.

    A last line without a newline is what a crash mid-write leaves: if it is not a whole record it is cut off
    (appending after it would glue the next record to garbage); if it is, the missing newline is added. A corrupt
    line elsewhere is left in place and reported. ``repair=False`` only reads (for the estimate, before the run holds
    the file's lock: another run may be appending that very line).
    """
    if not path.exists():
        return ResumeState()
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    covered: dict[str, set[str]] = {}
    corrupt: list[int] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = _record_of(line)
        if record is None:
            corrupt.append(number)
        else:
            covered.setdefault(record[0], set()).update(record[1])
    dropped = None
    if tail.strip():
        record = _record_of(tail)
        if record is None:
            if repair:
                with path.open("r+b") as fh:
                    fh.truncate(len(data) - len(tail))
            dropped = (len(lines) + 1, len(tail))
        else:
            covered.setdefault(record[0], set()).update(record[1])
            if repair:
                with path.open("ab") as fh:
                    fh.write(b"\n")
    return ResumeState(frozenset(covered), tuple(corrupt), dropped, {k: frozenset(v) for k, v in covered.items()})


class RecordWriteError(Exception):
    """``--out`` could not be written (a full disk, an I/O error): the run stops, since every further answer would
    be paid for and lost; the records written before are kept."""


@dataclass(slots=True)
class RecordWriter:
    """Appends one record per line, flushed at once: what is written survives a crash of this process."""

    fh: BinaryIO
    written: int = 0

    def write(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` as one line (one ``write`` call, so a crash cuts at most this line)."""
        try:
            self.fh.write(orjson.dumps(record) + b"\n")
            self.fh.flush()
        except OSError as exc:
            raise RecordWriteError(io_reason(exc)) from exc
        self.written += 1
