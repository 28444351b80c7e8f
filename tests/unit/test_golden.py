"""Golden protocol cases: byte-exact request + headers -> the exact ProcessingResponse sequence.

Each ``tests/golden/<schema>/<case>/`` holds ``request.json`` (byte-exact body), ``headers.json`` and
``want.textproto`` (responses separated by ``---`` lines, compared as parsed protos). Rewrite with
``pytest --update-golden`` and review the diff.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import text_format

from extproc.stream import StreamHandler
from tests.fakes import RecordingSink, fixed_clock, inline_classify, sequential_ids, snapshot
from tests.protocol import replay

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
CASES = sorted(p for p in GOLDEN.glob("*/*") if (p / "request.json").exists())
SEPARATOR = "\n---\n"


def _parse(text: str) -> list[pb.ProcessingResponse]:
    return [text_format.Parse(block, pb.ProcessingResponse()) for block in text.split(SEPARATOR) if block.strip()]


def _format(responses: list[pb.ProcessingResponse]) -> str:
    return SEPARATOR.join(text_format.MessageToString(r, as_utf8=False) for r in responses)


def test_there_are_golden_cases_for_every_schema() -> None:
    assert {p.parent.name for p in CASES} >= {
        "openai_chat",
        "openai_completions",
        "openai_responses",
        "anthropic_messages",
    }


@pytest.mark.parametrize("case", CASES, ids=[f"{p.parent.name}/{p.name}" for p in CASES])
async def test_golden(case: Path, request: pytest.FixtureRequest) -> None:
    handler = StreamHandler(snapshot(), inline_classify, RecordingSink(), sequential_ids(), fixed_clock())
    headers = json.loads((case / "headers.json").read_text())
    got = await replay(handler, headers, (case / "request.json").read_bytes())
    want_file = case / "want.textproto"
    if request.config.getoption("--update-golden"):
        want_file.write_text(_format(got))
    assert got == _parse(want_file.read_text())
