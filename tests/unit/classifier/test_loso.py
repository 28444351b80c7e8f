"""``classifier.loso`` report: the router-gain column and the quality bar's verdict (synthetic results), the
``--pairs all`` pair rule, and the ``--normalise-bag`` ablation's features."""

from __future__ import annotations

import numpy as np
import pytest

from classifier.loso import MAX_PAIR_ROWS, PairResult, format_report, gap_pairs, unit_bags


def result(
    source: str, router_gain: float, length: float, weak: str = "w", router: float = 0.5, irt: float = 0.6
) -> PairResult:
    return PairResult(
        source=source,
        weak=weak,
        strong="s",
        items=100,
        router=router,
        router_gain=router_gain,
        gain_abilities=(0.0, 1.0) if weak == "w" else None,
        router_fit=0.5,
        router_fit_sd=0.0,
        length=length,
        random_sd=0.01,
        oracle=0.9,
        irt=irt,
    )


def bar_line(lines: list[str], key: str) -> str:
    return next(line for line in lines if line.startswith(f"- main pairs, {key}:"))


@pytest.mark.parametrize(
    ("gains", "verdict"),
    [
        pytest.param((0.56, 0.52), "meets", id="above-on-average-and-within-margin"),
        pytest.param((0.60, 0.46), "fails", id="one-source-too-far-below"),
        pytest.param((0.50, 0.50), "fails", id="mean-not-above-length"),
    ],
)
def test_bar_verdict(gains: tuple[float, float], verdict: str) -> None:
    lines = format_report([result("a", gains[0], 0.50), result("b", gains[1], 0.50)])
    assert bar_line(lines, "router-gain").endswith(verdict)


def test_pair_table_says_when_gain_fell_back_to_difficulty() -> None:
    lines = format_report([result("a", 0.5, 0.5), result("a", 0.5, 0.5, weak="unknown-model")])
    assert any("unknown-model" in line and "difficulty (unknown model)" in line for line in lines)
    assert any("| a | w → s |" in line and "+0.00, +1.00" in line for line in lines)


def test_unit_bags_scales_each_bag_to_unit_length_and_keeps_the_length_column() -> None:
    x = np.asarray([[3.0, 4.0, 0.7], [0.0, 0.0, 0.2], [-1.0, 0.0, 1.0]], dtype=np.float32)
    out = unit_bags(x)
    np.testing.assert_allclose(out, [[0.6, 0.8, 0.7], [0.0, 0.0, 0.2], [-1.0, 0.0, 1.0]], rtol=1e-6)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(x[0], np.asarray([3.0, 4.0, 0.7], dtype=np.float32))  # the input is unchanged


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        pytest.param(
            [{"a": 0.0, "b": 1.0, "c": 0.0}, {"a": 0.0, "b": 1.0, "c": 1.0}],
            [("a", "b"), ("a", "c"), ("c", "b")],
            id="weak-is-the-lower-mean-whatever-the-name-order",
        ),
        pytest.param([{"a": 0.5, "b": 0.6}, {"a": 0.5, "b": 0.6}], [], id="gap-below-the-minimum"),
        pytest.param([{"a": 0.0, "b": 0.5}, {"a": 0.0, "b": 0.0}], [("a", "b")], id="gap-exactly-the-minimum"),
        pytest.param(
            [{"a": 0.0, "b": 1.0}, {"a": 0.0}, {"a": 0.0}], [], id="pair-scored-on-too-few-prompts-is-left-out"
        ),
        pytest.param([{"a": 1.0}], [], id="one-model-has-no-pair"),
    ],
)
def test_gap_pairs(outcomes: list[dict[str, float]], expected: list[tuple[str, str]]) -> None:
    assert gap_pairs(outcomes, min_gap=0.25, min_coverage=0.9) == expected


def test_source_table_counts_pairs_where_the_router_beats_length() -> None:
    lines = format_report([result("a", 0.5, 0.5, router=0.6), result("a", 0.5, 0.5, router=0.4)] * 2)
    row = next(line for line in lines if line.startswith("| a | 4 |"))
    assert row.startswith("| a | 4 | 0.50 | 0.500 ± 0.100 |")


def test_long_reports_leave_out_the_per_pair_rows() -> None:
    short = format_report([result("a", 0.5, 0.5)] * MAX_PAIR_ROWS)
    long = format_report([result("a", 0.5, 0.5)] * (MAX_PAIR_ROWS + 1))
    assert sum(line.startswith("| a | w → s |") for line in short) == MAX_PAIR_ROWS + 1  # + the main-pair row
    assert sum(line.startswith("| a | w → s |") for line in long) == 1
    assert any("per-pair rows only with --json" in line for line in long)


def test_difficulty_pairs_view_keeps_only_pairs_where_the_held_out_difficulty_beats_random() -> None:
    results = [
        result("a", 0.5, 0.50, router=0.56, irt=0.6),
        result("a", 0.5, 0.50, router=0.30, irt=0.4),  # difficulty is the wrong signal here: left out of the view
        result("b", 0.5, 0.50, router=0.30, irt=0.45),  # no pair of b qualifies: b is left out
    ]
    lines = format_report(results)
    start = next(i for i, line in enumerate(lines) if line.startswith("Pairs where the held-out"))
    assert lines[start].endswith("1 of 3")
    assert lines[start + 4].startswith("| a | 1 | 1.00 | 0.560 |")
    assert lines[start + 5].startswith("| b | 0 |")
    line = bar_line(lines, "router")
    assert "all pairs, router: mean 0.365" in line and line.count("fails") == 2
    assert line.endswith(
        "pairs where difficulty beats random (1 sources), router: mean 0.560, worst source +0.060 vs length -> meets"
    )


def test_difficulty_pairs_view_with_no_such_pair_says_so() -> None:
    line = bar_line(format_report([result("a", 0.5, 0.5, irt=0.3)]), "router")
    assert line.endswith("router: no pairs")
