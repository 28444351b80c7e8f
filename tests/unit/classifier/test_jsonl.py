"""The shared JSON Lines reader and score checks of the EVAL.md tools."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import pytest

from classifier.jsonl import NOT_JSON, NOT_UTF8, READ_ERRORS, finite_number, io_reason, read_jsonl, unit_score

LINES = b'{"id": 1}\n\n   \nnot json\nnull\n[1, 2]\n{"id": 2'


@pytest.mark.parametrize("name", ["items.jsonl", "items.jsonl.gz"])
def test_lines_are_numbered_blank_skipped_and_bad_ones_marked(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(gzip.compress(LINES) if name.endswith(".gz") else LINES)
    assert list(read_jsonl(path)) == [(1, {"id": 1}), (4, NOT_JSON), (5, None), (6, [1, 2]), (7, NOT_JSON)]


def test_truncated_gzip_raises_where_it_is_met(tmp_path: Path) -> None:
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"id": 1}\n' * 1000)[:-20])
    with pytest.raises(EOFError):
        list(read_jsonl(path))


@pytest.mark.parametrize(
    ("value", "number", "score"),
    [
        (1, 1.0, 1.0),
        (0.25, 0.25, 0.25),
        (7, 7.0, None),
        (-0.1, -0.1, None),
        (True, None, None),
        ("1", None, None),
        (None, None, None),
        (math.nan, None, None),
        (math.inf, None, None),
    ],
)
def test_scores(value: object, number: float | None, score: float | None) -> None:
    assert (finite_number(value), unit_score(value)) == (number, score)


def test_a_bom_and_python_json_non_finite_numbers_keep_the_line(tmp_path: Path) -> None:
    """A file saved with a BOM, and ``json.dumps`` output with ``NaN``: the item is kept (its id with it), and the
    non-finite value is no score."""
    path = tmp_path / "items.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "a"}\n{"id": "b", "scores": {"m": NaN, "n": Infinity, "k": 1}}\n{"id": \n')
    got = list(read_jsonl(path))
    assert got[0] == (1, {"id": "a"})
    number, item = got[1]
    assert number == 2 and item["id"] == "b"
    assert [unit_score(v) for v in item["scores"].values()] == [None, None, 1.0]
    assert got[2] == (3, NOT_JSON)


@pytest.mark.parametrize("name", ["capture.jsonl", "capture", "capture.json"])
def test_gzip_is_read_by_its_magic_bytes_whatever_the_name(tmp_path: Path, name: str) -> None:
    """A ``kubectl cp``'d or globbed capture keeps no ``.gz``: read as text it was a few "not JSON" lines."""
    path = tmp_path / name
    path.write_bytes(gzip.compress(LINES))
    want = [(1, {"id": 1}), (4, NOT_JSON), (5, None), (6, [1, 2]), (7, NOT_JSON)]
    assert list(read_jsonl(path)) == want
    with path.open("rb") as opened:  # the already-open form (outcomes opens every file first)
        assert list(read_jsonl(path, opened)) == want
        assert not opened.closed


def test_a_gz_name_that_is_not_gzip_still_raises(tmp_path: Path) -> None:
    path = tmp_path / "plain.jsonl.gz"
    path.write_bytes(b'{"id": 1}\n')
    with pytest.raises(gzip.BadGzipFile):
        list(read_jsonl(path))


def test_corrupt_gzip_data_is_a_read_error_with_a_reason(tmp_path: Path) -> None:
    """A flipped byte inside the deflate stream raises ``zlib.error``, neither ``OSError`` nor ``EOFError``."""
    payload = bytearray(gzip.compress(b"".join(b'{"id": %d, "x": "%s"}\n' % (i, b"ab" * i) for i in range(2000))))
    payload[200:260] = bytes(b ^ 0x55 for b in payload[200:260])
    path = tmp_path / "corrupt.jsonl.gz"
    path.write_bytes(bytes(payload))
    with pytest.raises(READ_ERRORS) as caught:
        list(read_jsonl(path))
    assert io_reason(caught.value) == "corrupt gzip file"


def test_a_line_that_is_not_utf8_is_named_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"id": "caf\xe9"}\n{"id": 1\n')
    assert list(read_jsonl(path)) == [(1, NOT_JSON), (2, NOT_JSON)]
    assert list(read_jsonl(path, not_utf8=True)) == [(1, NOT_UTF8), (2, NOT_JSON)]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"id": 1}\n', "not a gzip file"),
        (gzip.compress(b'{"id": 1}\n' * 1000)[:-20], "truncated gzip file"),
        (gzip.compress(b'{"id": 1}\n')[:-8] + b"\0\0\0\0" + gzip.compress(b'{"id": 1}\n')[-4:], "corrupt gzip file"),
    ],
    ids=["not-gzip", "truncated", "crc"],
)
def test_gzip_read_errors_are_worded_once(tmp_path: Path, payload: bytes, reason: str) -> None:
    """eval, adapt, report, label and outcomes worded these three ways between them (gzip's own words, "truncated
    or corrupt gzip file", "corrupt gzip file"): one wording, from :func:`io_reason`."""
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(payload)
    with pytest.raises(READ_ERRORS) as caught:
        list(read_jsonl(path))
    assert io_reason(caught.value) == reason
