"""JSON Lines files as the EVAL.md tools read them, and what counts as a score in them.

One place for the choices every reader of outcome, prompt, capture and feedback files makes the same way: gzip by
the ``.gz`` suffix or by its magic bytes (a ``kubectl cp``'d capture or a ``*.jsonl`` glob keeps no suffix, and read
as text it would be a few "not JSON" lines and a silently wrong result), a UTF-8 BOM and blank lines skipped,
``NaN``/``Infinity`` read (as non-finite numbers, which are no score), line numbers for the summary, a line that is
not JSON reported rather than raised, and a score that is a real number (JSON ``true`` is not one).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Final

import orjson

__all__ = [
    "NOT_JSON",
    "NOT_UTF8",
    "READ_ERRORS",
    "finite_number",
    "first_of_each_id",
    "io_reason",
    "read_jsonl",
    "starts_gzip",
    "unit_score",
]


class _NotJson:
    """The type of :data:`NOT_JSON` and :data:`NOT_UTF8`."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


_BOM = b"\xef\xbb\xbf"
_GZIP_MAGIC = b"\x1f\x8b"
NOT_JSON: Final = _NotJson("NOT_JSON")
"""What :func:`read_jsonl` yields for a line that does not parse (``null`` is a JSON value, so not ``None``)."""
NOT_UTF8: Final = _NotJson("NOT_UTF8")
"""What :func:`read_jsonl` yields instead of :data:`NOT_JSON`, when asked, for a line that is not UTF-8 (JSON text
is; a Latin-1 export is the usual cause, which "not JSON" would not name)."""
READ_ERRORS: Final = (OSError, EOFError, zlib.error)
"""What reading a file with :func:`read_jsonl` can raise: unopenable, a truncated ``.gz``, corrupt gzip data."""


def read_jsonl(path: Path, opened: IO[bytes] | None = None, *, not_utf8: bool = False) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value or NOT_JSON)`` for each non-blank line of ``path`` (gunzipped if gzip).

    gzip is a ``.gz`` suffix (then a file that is not gzip raises) or, whatever the name, the gzip magic bytes.
    ``opened``: ``path``'s bytes, already open (a reader that must see files as they were at one moment opens them
    all first). ``not_utf8``: a line that is not UTF-8 is :data:`NOT_UTF8`, not :data:`NOT_JSON`. A file that cannot
    be opened, or a truncated or corrupt gzip file, raises one of :data:`READ_ERRORS` as it is met.
    """
    with contextlib.ExitStack() as stack:
        fh: IO[bytes] = opened if opened is not None else stack.enter_context(open(path, "rb"))
        source: Iterable[bytes] = fh
        if path.suffix == ".gz" or starts_gzip(fh):
            source = stack.enter_context(gzip.GzipFile(fileobj=fh, mode="rb"))  # closing it leaves ``opened`` open
        for number, line in enumerate(source, start=1):
            if number == 1 and line.startswith(_BOM):  # editors on Windows write one; it is not part of the JSON
                line = line[len(_BOM) :]
            if not line.strip():
                continue
            try:
                yield number, orjson.loads(line)
            except orjson.JSONDecodeError:
                value = _lenient(line)
                yield number, NOT_UTF8 if value is NOT_JSON and not_utf8 and not _is_utf8(line) else value


def starts_gzip(fh: IO[bytes]) -> bool:
    """Whether ``fh``'s next bytes are gzip's magic bytes, read without consuming them (``peek``, not ``seek``: a
    pipe such as ``<(kubectl logs ...)`` works too; a file object without ``peek`` is False, so only a ``.gz``
    suffix says gzip)."""
    peek = getattr(fh, "peek", None)
    return peek is not None and bytes(peek(len(_GZIP_MAGIC))[: len(_GZIP_MAGIC)]) == _GZIP_MAGIC


def _is_utf8(line: bytes) -> bool:
    """Whether ``line`` decodes as UTF-8."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


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


def io_reason(exc: OSError | EOFError | zlib.error) -> str:
    """Why a file could not be read or written, in words, without the path the message already names: ``No such
    file or directory`` (the system's words), or for gzip ``not a gzip file``, ``truncated gzip file`` (it ended
    before its end marker) and ``corrupt gzip file`` (bad deflate data, a CRC or length that does not match).

    Every command words it ``cannot read OPTION PATH (reason)`` (or ``cannot write``)."""
    if isinstance(exc, gzip.BadGzipFile):
        return "not a gzip file" if str(exc).startswith("Not a gzipped file") else "corrupt gzip file"
    if isinstance(exc, EOFError):
        return "truncated gzip file"
    if isinstance(exc, zlib.error):
        return "corrupt gzip file"
    return exc.strerror or str(exc)


def first_of_each_id(items: Sequence[Mapping[str, Any]]) -> tuple[list[int], list[str]]:
    """The positions to use (items without an id, and the first item with each id) and the ids of the others.

    Scores are joined to items by id (``model-router report --eval``), so an id must have one score; the first item
    with an id counts (concatenated exports repeat items) and later ones are left out, by ``eval``, ``report`` and
    ``classifier.irt`` alike."""
    seen: set[str] = set()
    keep: list[int] = []
    again: list[str] = []
    for i, item in enumerate(items):
        item_id = item.get("id")
        if item_id is not None:
            if str(item_id) in seen:
                again.append(str(item_id))
                continue
            seen.add(str(item_id))
        keep.append(i)
    return keep, again
