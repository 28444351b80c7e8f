"""The benchmark's pure pieces: wrk's summary line, medians, ratios, latency added over Envoy alone, targets."""

from __future__ import annotations

import pytest

from bench.report import ROW_KEYS, aggregate, comparisons, evaluate_targets, row_json
from bench.stats import Sample, WrkResult, added, median, parse_wrk_output, ratio

WRK_STDOUT = """Running 3s test @ http://127.0.0.1:10000
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.20ms    1.10ms  20.00ms   90.00%
  4000 requests in 2.00s, 1.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:   2000.00
WRK_JSON {"requests":4000,"duration_us":2000000,"connect":0,"read":2,"write":0,"status":5,"timeout":1,\
"p50_us":3000.0,"p90_us":4000.0,"p99_us":9000.5,"mean_us":3200.0,"max_us":20000.0}
"""


def test_parse_wrk_output_reads_the_summary_line() -> None:
    r = parse_wrk_output(WRK_STDOUT)
    assert r == WrkResult(
        requests=4000,
        duration_us=2_000_000,
        socket_errors=3,
        status_errors=5,
        p50_us=3000.0,
        p90_us=4000.0,
        p99_us=9000.5,
    )
    assert r.rps == pytest.approx(2000.0)


def test_parse_wrk_output_without_the_line_is_an_error() -> None:
    with pytest.raises(ValueError, match="WRK_JSON"):
        parse_wrk_output("Requests/sec: 10\n")


@pytest.mark.parametrize(
    ("values", "want"),
    [
        pytest.param([3.0], 3.0, id="one"),
        pytest.param([5.0, 1.0, 3.0], 3.0, id="odd"),
        pytest.param([4.0, 1.0, 3.0, 2.0], 2.5, id="even"),
    ],
)
def test_median(values: list[float], want: float) -> None:
    assert median(values) == want


def test_median_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        median([])


@pytest.mark.parametrize(
    ("value", "base", "want"),
    [
        pytest.param(90.0, 100.0, 0.9, id="plain"),
        pytest.param(1.0, 0.0, None, id="zero-base"),
        pytest.param(None, 1.0, None, id="no-value"),
        pytest.param(1.0, None, None, id="no-base"),
    ],
)
def test_ratio(value: float | None, base: float | None, want: float | None) -> None:
    assert ratio(value, base) == (pytest.approx(want) if want is not None else None)


def test_added_pairs_each_round_with_its_own_base() -> None:
    # round 2 ran while the machine was busy: both setups slowed, the difference did not
    assert added([1300.0, 2300.0, 1310.0], [300.0, 1300.0, 290.0]) == 1000.0


def _sample(setup: str, conc: int, rnd: int, p50: float, p99: float, rps: float, workers: int = 1) -> Sample:
    return Sample(
        setup=setup,
        workers=workers,
        concurrency=conc,
        round=rnd,
        rps=rps,
        p50_us=p50,
        p90_us=p50 * 1.5,
        p99_us=p99,
        errors=0,
        requests=int(rps * 10),
        router_cpu_us_per_req=None if setup == "E" else 500.0,
    )


SAMPLES = [
    s
    for rnd in range(3)
    for s in (
        _sample("E", 1, rnd, 300.0, 600.0, 3000.0, workers=0),
        _sample("N", 1, rnd, 1300.0, 2600.0, 700.0),
        _sample("R-onnx", 1, rnd, 1400.0, 3000.0, 650.0),
        _sample("E", 16, rnd, 2000.0, 4000.0, 7000.0, workers=0),
        _sample("N", 16, rnd, 9000.0, 20000.0, 1600.0),
        _sample("R-onnx", 16, rnd, 10000.0, 22000.0, 1500.0),
        _sample("R-onnx", 16, rnd, 6000.0, 15000.0, 2700.0, workers=2),
    )
]


def test_rows_keep_exactly_the_issue_keys() -> None:
    rows = aggregate(SAMPLES)
    assert len(rows) == 7
    line = row_json(rows[0])
    assert tuple(line) == ROW_KEYS
    assert line["setup"] == "E" and line["router_cpu_us_per_req"] is None and line["p50_ms"] == 0.3


def test_comparisons_against_envoy_alone_and_the_floor() -> None:
    comps = {(c["setup"], c["workers"], c["concurrency"]): c for c in comparisons(aggregate(SAMPLES))}
    r = comps[("R-onnx", 1, 1)]
    assert r["added_p50_us"] == 1100.0
    assert r["p50_x_N"] == pytest.approx(1400 / 1300)
    assert r["rps_x_E"] == pytest.approx(650 / 3000)
    assert comps[("R-onnx", 2, 16)]["rps_x_N"] == pytest.approx(2700 / 1600)


def test_targets() -> None:
    targets = {t.name: t for t in evaluate_targets(aggregate(SAMPLES), "R-onnx", free_cores_for_workers=2.0)}
    # added p50: 1100 vs 1000 -> 1.1 <= 1.2; added p99: 2400 vs 2000 -> 1.2 <= 1.5
    assert targets["c=1 R-onnx added p50 ≤ 1.2x N's"].status == "PASS"
    assert targets["c=1 R-onnx added p99 ≤ 1.5x N's"].status == "PASS"
    assert targets["c=16 R-onnx rps ≥ 0.9x N's (per worker)"].status == "PASS"  # 1500 / 1600
    assert targets["c=16 R-onnx 2 workers ≥ 1.7x 1 worker"].status == "PASS"  # 2700 / 1500 = 1.8
    assert targets["zero errors at every concurrency"].status == "PASS"


def test_worker_scaling_is_not_judged_without_two_free_cores() -> None:
    targets = {t.name: t for t in evaluate_targets(aggregate(SAMPLES), "R-onnx", free_cores_for_workers=0.8)}
    assert targets["c=16 R-onnx 2 workers ≥ 1.7x 1 worker"].status == "N/A"


def test_added_latency_at_or_below_zero_is_not_judged() -> None:
    noisy = [
        s if not (s.setup == "E" and s.concurrency == 1) else _sample("E", 1, s.round, 300.0, 90_000.0, 3000.0, 0)
        for s in SAMPLES
    ]
    targets = {t.name: t for t in evaluate_targets(aggregate(noisy), "R-onnx", free_cores_for_workers=2.0)}
    assert targets["c=1 R-onnx added p99 ≤ 1.5x N's"].status == "N/A"
    assert targets["c=1 R-onnx added p50 ≤ 1.2x N's"].status == "PASS"
