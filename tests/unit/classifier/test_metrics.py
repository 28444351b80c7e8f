"""Routing metrics on small tables computed by hand (see the comments for the arithmetic)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from classifier.metrics import RouterMetrics, length_scores, oracle_scores, routing_curve, summarize

# Four items: weak outcomes, strong outcomes; q_weak = .5, q_strong = .75, gains = [1, 0, 1, -1].
WEAK = np.array([0.0, 1.0, 0.0, 1.0])
STRONG = np.array([1.0, 1.0, 1.0, 0.0])


@pytest.mark.parametrize(
    ("score", "quality", "want"),
    [
        # order 0,1,2,3: cum gain 0,1,1,2,1 -> quality .5,.75,.75,1,.75 -> PGR 0,1,1,2,1
        pytest.param([4, 3, 2, 1], [0.5, 0.75, 0.75, 1.0, 0.75], RouterMetrics(1.125, 0.25, 0.25, 0.25), id="ranked"),
        # all tied: every gain becomes the mean .25 -> PGR 0,.25,.5,.75,1 (the random router)
        pytest.param([0, 0, 0, 0], [0.5, 0.5625, 0.625, 0.6875, 0.75], RouterMetrics(0.5, 0.5, 1.0, 1.0), id="random"),
        # two tie groups: gains (1+0)/2 and (1-1)/2 -> cum 0,.5,1,1,1 -> PGR 0,.5,1,1,1
        pytest.param([1, 1, 0, 0], [0.5, 0.625, 0.75, 0.75, 0.75], RouterMetrics(0.75, 0.25, 0.5, 0.5), id="ties"),
        # oracle order 1,1,0,-1: cum 0,1,2,2,1 -> PGR 0,1,2,2,1
        pytest.param(
            oracle_scores(WEAK, STRONG),
            [0.5, 0.75, 1.0, 1.0, 0.75],
            RouterMetrics(1.375, 0.25, 0.25, 0.25),
            id="oracle",
        ),
    ],
)
def test_curve_and_metrics(score: list[float], quality: list[float], want: RouterMetrics) -> None:
    curve = routing_curve(np.asarray(score, dtype=np.float64), WEAK, STRONG)
    np.testing.assert_allclose(curve.quality, quality)
    np.testing.assert_allclose(curve.fraction, [0, 0.25, 0.5, 0.75, 1.0])
    got = summarize(np.asarray(score, dtype=np.float64), WEAK, STRONG)
    assert got == pytest.approx(want)


def test_equal_models_have_no_pgr() -> None:
    curve = routing_curve(np.array([1.0, 0.0]), np.array([1.0, 0.0]), np.array([1.0, 0.0]))
    assert math.isnan(curve.apgr)
    assert math.isnan(curve.cpt(0.5))
    assert curve.s95 == 0.0


def test_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="equal length"):
        routing_curve(np.array([1.0]), np.array([0.0, 1.0]), np.array([1.0, 1.0]))


def test_length_scores() -> None:
    np.testing.assert_array_equal(length_scores(["", "ab", "abcd"]), [0.0, 2.0, 4.0])
