"""bench.sse_usage: the per-chunk lag is read from whole answers only, however the bytes arrive."""

from __future__ import annotations

import orjson
import pytest

from bench.sse_usage import read_stream


def _answer(chunks: int, sent_ns: int = 1_000_000_000) -> bytes:
    events = [orjson.dumps({"choices": [], "x_sent_ns": sent_ns + i * 1_000_000}) for i in range(chunks + 1)]
    return b"".join(b"data: " + e + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def test_a_lag_is_the_arrival_of_the_read_that_completes_the_event_minus_its_stamp() -> None:
    raw = _answer(3)
    whole = read_stream([(2_000_000_000, raw)], chunks=3)
    assert whole == [1000.0, 999.0, 998.0, 997.0]  # stamps 1 ms apart, all read at once
    reads = [(2_000_000_000 + i * 1_000_000, raw[i : i + 1]) for i in range(len(raw))]  # a byte per ms
    ends = [i for i in range(len(raw)) if raw[i - 1 : i + 1] == b"\n\n"][:4]  # where each of the four JSON events ends
    assert read_stream(reads, chunks=3) == [1000.0 + end - k for k, end in enumerate(ends)]


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(_answer(3).removesuffix(b"data: [DONE]\n\n"), id="cut-before-done"),
        pytest.param(_answer(2), id="a-chunk-missing"),
        pytest.param(b"", id="nothing"),
    ],
)
def test_an_answer_that_is_not_whole_gives_no_lags(raw: bytes) -> None:
    assert read_stream([(0, raw)], chunks=3) is None
