"""The one seam between the router and any difficulty estimator.

Scale contract: ``difficulty`` is on the same logit scale as a catalog model's ``ability``, so that the predicted
chance that a model of ability ``a`` answers the prompt well is ``sigmoid(a - difficulty)`` (item-response theory).
One score therefore serves any catalog: the policy, not the classifier, decides which model is good enough.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["DifficultyModel", "Prediction"]


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
