"""JSON Lines files as the EVAL.md tools read them, and what counts as a score in them.

One place for the choices every reader of outcome, prompt, capture and feedback files makes the same way: ``.gz`` by
suffix, a UTF-8 BOM and blank lines skipped, ``NaN``/``Infinity`` read (as non-finite numbers, which are no score),
line numbers for the summary, a line that is not JSON reported rather than raised, and a score that is a real number
(JSON ``true`` is not one).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Final

import orjson

__all__ = ["NOT_JSON", "finite_number", "io_reason", "read_jsonl", "unit_score"]


class _NotJson:
    """The type of :data:`NOT_JSON`."""

    def __repr__(self) -> str:
        return "NOT_JSON"


_BOM = b"\xef\xbb\xbf"
NOT_JSON: Final = _NotJson()
"""What :func:`read_jsonl` yields for a line that does not parse (``null`` is a JSON value, so not ``None``)."""


def read_jsonl(path: Path, opened: IO[bytes] | None = None) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value or NOT_JSON)`` for each non-blank line of ``path`` (gunzipped if ``.gz``).

    ``opened``: ``path``'s bytes, already open (a reader that must see files as they were at one moment opens them
    all first). A file that cannot be opened, or a truncated or corrupt ``.gz``, raises (``OSError``,
    ``EOFError``) as it is met.
    """
    if opened is not None:
        source: Any = gzip.open(opened) if path.suffix == ".gz" else contextlib.nullcontext(opened)  # noqa: SIM115
    else:
        source = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115
    with source as fh:
        for number, line in enumerate(fh, start=1):
            if number == 1 and line.startswith(_BOM):  # editors on Windows write one; it is not part of the JSON
                line = line[len(_BOM) :]
            if not line.strip():
                continue
            try:
                yield number, orjson.loads(line)
            except orjson.JSONDecodeError:
                yield number, _lenient(line)


def _lenient(line: bytes) -> Any:
    """A line orjson refuses, read as Python's ``json`` does (which writes ``NaN`` and ``Infinity`` by default, so a
    score file from ``json.dumps`` has them): the values are then non-finite numbers, which no reader takes as a
    score (:func:`finite_number`), and the rest of the line is kept. Anything else is :data:`NOT_JSON`."""
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        return NOT_JSON


def finite_number(value: object) -> float | None:
    """``value`` as a float if it is a finite JSON number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def unit_score(value: object) -> float | None:
    """``value`` as a score if it is a finite number in [0, 1], else None."""
    number = finite_number(value)
    return number + 0.0 if number is not None and 0.0 <= number <= 1.0 else None  # + 0.0: -0.0 becomes 0.0


def io_reason(exc: OSError | EOFError) -> str:
    """The reason of an I/O error without the path the message already names (``No such file or directory``)."""
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
