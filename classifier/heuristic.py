"""A transparent rule-based difficulty estimate: the fallback when no ONNX model is wanted.

It reads length (capped, and measured on de-duplicated lines so repeating a prompt buys nothing), code and math
markers and reasoning verbs. It is deliberately simple and is benchmarked against the ONNX model in
``classifier/MODEL_CARD.md``; use it when you need a router whose every decision you can explain by hand.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from types import MappingProxyType

from classifier.model import Prediction

__all__ = ["HEURISTIC_ABILITIES", "HeuristicDifficultyModel", "distinct_text"]

_CODE = re.compile(
    r"```|\bdef |\bclass |\breturn\b|;\s*$|\bfunction\b|#include|\bimport \w|=>|\bSELECT\b|\{\s*$",
    re.MULTILINE,
)
_MATH = re.compile(
    r"\\frac|\\int|\\sum|\\sqrt|\$[^$]+\$|\b(?:integral|derivative|theorem|lemma|prove|proof|matrix|eigen\w*|"
    r"probability|polynomial|modulo|equation)\b|\d\s*[\^*/]\s*\d",
)
_REASONING = re.compile(
    r"\b(?:why|explain|derive|design|implement|optimi[sz]e|analy[sz]e|compare|trade-?offs?|step[- ]by[- ]step|"
    r"architecture|debug|refactor|algorithm|complexity)\b",
)
# _MATH and _REASONING run on lower-cased text: cheaper than re.IGNORECASE, same matches (both are lower-case).

HEURISTIC_ABILITIES: Mapping[str, float] = MappingProxyType(
    {
        "gpt-4o-mini": 0.6,
        "gpt-4.1-mini": 0.9,
        "gpt-4o": 1.8,
        "gpt-4.1": 2.0,
        "claude-3-haiku": 0.3,
        "claude-3-5-sonnet": 2.0,
        "llama-3.1-8b-instruct": -0.2,
        "llama-3.1-70b-instruct": 1.2,
    }
)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def distinct_text(text: str) -> str:
    """``text`` with repeated sentences and lines dropped and whitespace collapsed, so repeating a prompt or padding
    it buys nothing; an exact whole-prompt repetition without sentence breaks is folded to one copy too."""
    words = text.split()
    for copies in (4, 3, 2):
        if len(words) >= copies and len(words) % copies == 0:
            unit = len(words) // copies
            if words == words[:unit] * copies:
                words = words[:unit]
                break
    seen: set[str] = set()
    kept: list[str] = []
    for sentence in _SENTENCE_END.split(" ".join(words)):
        key = sentence.strip().lower()
        if key and key not in seen:
            seen.add(key)
            kept.append(sentence.strip())
    return "\n".join(kept)


class HeuristicDifficultyModel:
    """Difficulty from length, code, math and reasoning markers, on the same logit scale as the ONNX model."""

    name = "heuristic-v1"
    default_abilities = HEURISTIC_ABILITIES

    def predict(self, text: str) -> Prediction:
        """Score ``text``; never raises for any string."""
        sample = distinct_text(text[:8000])
        length = min(math.log2(1.0 + len(sample.split()) / 20.0), 4.0)
        code = min(len(_CODE.findall(sample)), 3) / 3.0
        lowered = sample.lower()
        maths = min(len(_MATH.findall(lowered)), 3) / 3.0
        reasoning = min(len(_REASONING.findall(lowered)), 3) / 3.0
        difficulty = -1.6 + 0.35 * length + 1.3 * code + 1.4 * maths + 0.9 * reasoning
        confidence = min(1.0, abs(difficulty) / 2.0)
        return Prediction(difficulty=difficulty, confidence=confidence)
