"""``classifier.loso`` report: the router-gain column and the quality bar's verdict (synthetic results), and the
``--normalise-bag`` ablation's features."""

from __future__ import annotations

import numpy as np
import pytest

from classifier.loso import PairResult, format_report, unit_bags


def result(source: str, router_gain: float, length: float, weak: str = "w") -> PairResult:
    return PairResult(
        source=source,
        weak=weak,
        strong="s",
        items=100,
        router=0.5,
        router_gain=router_gain,
        gain_abilities=(0.0, 1.0) if weak == "w" else None,
        router_fit=0.5,
        router_fit_sd=0.0,
        length=length,
        random_sd=0.01,
        oracle=0.9,
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
