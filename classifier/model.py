"""The one seam between the router and any difficulty estimator.

Scale contract: ``difficulty`` is on the same logit scale as a catalog model's ``ability``, so that the predicted
chance that a model of ability ``a`` answers the prompt well is ``sigmoid(a - difficulty)`` (item-response theory).
One score therefore serves any catalog: the policy, not the classifier, decides which model is good enough.
The two functions below are that contract in code (the leave-one-source-out report's ``router-gain`` uses them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["DifficultyModel", "Prediction", "expected_gain", "success_probability"]


@dataclass(frozen=True, slots=True)
class Prediction:
    """A classifier's estimate for one prompt."""

    difficulty: float
    """Logit-scale difficulty: P(model with ability a succeeds) = sigmoid(a - difficulty)."""
    confidence: float
    """How much the estimate can be trusted, in [0, 1] (1 = far from every routing boundary of the training data)."""


@runtime_checkable
class DifficultyModel(Protocol):
    """Maps prompt text to a :class:`Prediction`. Implementations must be thread-safe and do no I/O per call."""

    @property
    def name(self) -> str:
        """A short identifier of the model and its version, for spans and logs."""
        ...

    @property
    def default_abilities(self) -> Mapping[str, float]:
        """Abilities of well-known models on this model's difficulty scale, used when the catalog names none."""
        ...

    def predict(self, text: str) -> Prediction:
        """Estimate the difficulty of ``text`` (the prompt the policy routes on)."""
        ...


def success_probability(ability: float, difficulty: float) -> float:
    """Item-response theory: P(success) = sigmoid(ability - difficulty), overflow-safe."""
    x = ability - difficulty
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def expected_gain(weak_ability: float, strong_ability: float, difficulty: float) -> float:
    """How much more likely the strong model is to succeed than the weak one: what escalating buys.

    It is not monotone in difficulty. It peaks midway between the two abilities and falls on both sides: an easy
    prompt is solved by both models, and a prompt far beyond both is failed by both. Paying for the strong model only
    helps in between.
    """
    return success_probability(strong_ability, difficulty) - success_probability(weak_ability, difficulty)
