"""Two-model routing metrics as ``../shared/EVAL.md`` (after RouteLLM) defines them; pure numpy.

Items are sorted by score, the top fraction f goes to the strong model. Ties are broken by expectation: every item
in a group of equal scores contributes the group's mean gain, so a constant score is exactly the random router
(APGR = 0.5) instead of whatever order the file happened to be in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Curve", "RouterMetrics", "length_scores", "oracle_scores", "routing_curve", "summarize"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Curve:
    """Quality and PGR at f = k/n for k = 0..n (n items)."""

    fraction: FloatArray
    quality: FloatArray
    pgr: FloatArray
    q_weak: float
    q_strong: float

    @property
    def apgr(self) -> float:
        """Area under PGR(f) on [0, 1] (trapezoid rule on the k/n grid); NaN if the models tie on average."""
        if not math.isfinite(self.pgr[0]):
            return math.nan
        dx = np.diff(self.fraction)
        return float(np.sum(dx * (self.pgr[1:] + self.pgr[:-1]) / 2.0))

    def cpt(self, x: float) -> float:
        """Smallest f with PGR(f) >= x; NaN if PGR is undefined."""
        if not math.isfinite(self.pgr[0]):
            return math.nan
        hit = np.nonzero(self.pgr >= x - 1e-12)[0]
        return float(self.fraction[hit[0]]) if hit.size else math.nan

    @property
    def s95(self) -> float:
        """Smallest f at which quality reaches 95% of the strong model's own quality."""
        hit = np.nonzero(self.quality >= 0.95 * self.q_strong - 1e-12)[0]
        return float(self.fraction[hit[0]]) if hit.size else math.nan


def routing_curve(score: Sequence[float] | FloatArray, weak: FloatArray, strong: FloatArray) -> Curve:
    """The cost-quality curve of routing the highest-scored items to the strong model."""
    s = np.asarray(score, dtype=np.float64)
    w = np.asarray(weak, dtype=np.float64)
    st = np.asarray(strong, dtype=np.float64)
    n = len(s)
    if n == 0 or len(w) != n or len(st) != n:
        raise ValueError("score, weak and strong must be non-empty and of equal length")
    order = np.argsort(-s, kind="stable")
    gain = (st - w)[order]
    sorted_score = s[order]
    # Replace each tie group's gains by their mean: the expected curve over random tie-breaking.
    starts = np.concatenate([[True], sorted_score[1:] != sorted_score[:-1]])
    group = np.cumsum(starts) - 1
    group_mean = np.bincount(group, weights=gain) / np.bincount(group)
    gain = group_mean[group]
    quality = (w.sum() + np.concatenate([[0.0], np.cumsum(gain)])) / n
    q_weak, q_strong = float(w.mean()), float(st.mean())
    span = q_strong - q_weak
    pgr = (quality - q_weak) / span if abs(span) > 1e-12 else np.full(n + 1, math.nan)
    return Curve(fraction=np.arange(n + 1) / n, quality=quality, pgr=pgr, q_weak=q_weak, q_strong=q_strong)


@dataclass(frozen=True, slots=True)
class RouterMetrics:
    """The EVAL.md figures of one scoring of one data set."""

    apgr: float
    cpt50: float
    cpt80: float
    s95: float

    @classmethod
    def of(cls, curve: Curve) -> RouterMetrics:
        """Read the figures off a curve."""
        return cls(apgr=curve.apgr, cpt50=curve.cpt(0.5), cpt80=curve.cpt(0.8), s95=curve.s95)


def summarize(score: Sequence[float] | FloatArray, weak: FloatArray, strong: FloatArray) -> RouterMetrics:
    """APGR, CPT50, CPT80 and S95 of one scoring."""
    return RouterMetrics.of(routing_curve(score, weak, strong))


def oracle_scores(weak: FloatArray, strong: FloatArray) -> FloatArray:
    """The ceiling: score = strong outcome - weak outcome."""
    return np.asarray(strong, dtype=np.float64) - np.asarray(weak, dtype=np.float64)


def length_scores(texts: Sequence[str]) -> FloatArray:
    """The length rule: longer prompts go to the strong model first (score = characters)."""
    return np.asarray([len(t) for t in texts], dtype=np.float64)
