"""Reading prompts (bad lines counted with their numbers) and resuming the output (done ids, a crash's cut line)."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from extproc.cli import prompt_text_of_item
from extproc.labeling.records import RecordWriter, prepare_output, read_prompts


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


PROMPTS = [
    orjson.dumps({"id": "a", "messages": user("hello"), "scores": {"m": 1}, "category": "chat"}),
    b"",  # blank: ignored, not malformed
    b"{truncated",
    orjson.dumps([1, 2]),
    orjson.dumps({"id": True, "messages": user("bool id")}),
    orjson.dumps({"id": "b", "messages": []}),
    orjson.dumps({"id": "c", "messages": [{"role": "assistant", "content": "only me"}]}),
    orjson.dumps({"id": "d", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}),
    orjson.dumps({"id": "a", "messages": user("again")}),
    orjson.dumps({"id": 5, "messages": user("capture"), "captured_at": "x", "tenant": "t", "request": {"k": 1}}),
]


def test_read_prompts_sorts_every_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\n".join(PROMPTS) + b"\n")
    got = read_prompts(path, prompt_text_of_item)
    assert [(i.id, i.line, i.category) for i in got.items] == [("a", 1, "chat"), (5, 10, None)]
    assert got.items[1].messages == user("capture")
    assert got.malformed == [(3, "not JSON"), (4, "not a JSON object"), (5, "no id"), (6, "no messages")]
    assert got.no_text == [7, 8]
    assert got.duplicates == [9]


def test_a_line_that_is_not_utf8_is_named_so(tmp_path: Path) -> None:
    """As eval names it: "not JSON" sent users looking for a syntax error in a Latin-1 export."""
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"id": "x", "messages": [{"role": "user", "content": "caf\xe9"}]}\n{"id": 1\n')
    assert read_prompts(path, prompt_text_of_item).malformed == [(1, "not UTF-8"), (2, "not JSON")]


def test_read_prompts_gzip_and_a_truncated_gzip(tmp_path: Path) -> None:
    payload = b"\n".join(orjson.dumps({"id": i, "messages": user(f"q{i}")}) for i in range(200)) + b"\n"
    whole = tmp_path / "p.jsonl.gz"
    whole.write_bytes(gzip.compress(payload))
    assert len(read_prompts(whole, prompt_text_of_item).items) == 200
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(payload)[:-30])
    with pytest.raises(EOFError):  # not the part before the cut, labelled as if it were the file
        read_prompts(cut, prompt_text_of_item)


def record(ident: object) -> bytes:
    return orjson.dumps({"id": ident, "messages": user("q"), "scores": {}}) + b"\n"


def test_no_output_file_means_nothing_done(tmp_path: Path) -> None:
    state = prepare_output(tmp_path / "out.jsonl")
    assert state.done == frozenset() and state.dropped_tail is None


def test_resume_drops_a_cut_last_line_and_keeps_the_rest(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(record("a") + b"garbage in the middle\n" + record(2) + b'{"id": "c", "mess')
    state = prepare_output(out)
    assert state.done == frozenset({"a", "2"})
    assert state.corrupt_lines == (2,)
    assert state.dropped_tail == (4, len(b'{"id": "c", "mess'))
    with out.open("ab") as fh:
        RecordWriter(fh).write({"id": "c", "scores": {}})
    lines = out.read_bytes().splitlines()
    assert len(lines) == 4 and orjson.loads(lines[-1])["id"] == "c"


def test_resume_completes_a_whole_last_record_missing_its_newline(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(record("a") + record("b").rstrip(b"\n"))
    state = prepare_output(out)
    assert state.done == frozenset({"a", "b"}) and state.dropped_tail is None
    assert out.read_bytes().endswith(b"}\n")


@pytest.mark.parametrize("tail", [b"", b"\n", b"\n\n"])
def test_resume_of_a_clean_file_changes_nothing(tmp_path: Path, tail: bytes) -> None:
    out = tmp_path / "out.jsonl"
    content = record("a") + record("b") + tail
    out.write_bytes(content)
    assert prepare_output(out).done == frozenset({"a", "b"})
    assert out.read_bytes() == content


def test_writer_writes_one_flushed_line_per_record(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with out.open("ab") as fh:
        writer = RecordWriter(fh)
        writer.write({"id": 1, "messages": user("ü"), "scores": {"m": 0.5}})
        assert out.read_bytes().count(b"\n") == 1  # flushed before the file is closed
    assert writer.written == 1


def test_resume_knows_which_models_each_record_covers(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    rows = [
        {"id": "a", "scores": {"m1": 0.5}, "missing": {"m2": "timeout"}},
        {"id": "b", "scores": {"m1": 1.0}},
        {"id": "c", "scores": [], "missing": None},  # not ours, but an id: done, covering nothing
    ]
    out.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    state = prepare_output(out)
    assert state.done == frozenset({"a", "b", "c"})
    assert state.covered == {"a": {"m1", "m2"}, "b": {"m1"}, "c": frozenset()}
