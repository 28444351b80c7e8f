"""Gaming: cheap talk, politeness, whitespace, padding and repetition must not move routing decisions.

Catalog: gpt-4o-mini (cheap) and gpt-4o (strong) with the shipped default abilities and the router's rule
(cheapest model with sigmoid(ability - difficulty) >= 0.8). Prompts are a fixed sample of the shared data.
"""

from __future__ import annotations

import gzip
import math
import random
from collections.abc import Callable

import orjson
import pytest

from classifier.loader import load_difficulty_model
from classifier.model import DifficultyModel
from tests.unit.classifier.tiny import SHARED_DATA

TARGET = 0.8
SAMPLE = 800
LIMIT = 0.05


def sample_prompts() -> list[str]:
    """A fixed, seeded sample of prompts with outcomes plus the real Chatbot Arena prompts."""
    with gzip.open(SHARED_DATA / "outcomes.jsonl.gz", "rb") as fh:
        outcomes = [str(orjson.loads(line)["prompt"]) for line in fh]
    with gzip.open(SHARED_DATA / "prompts.jsonl.gz", "rb") as fh:
        arena = [str(row["prompt"]) for row in map(orjson.loads, fh) if str(row["source"]).startswith("arena_hard")]
    rng = random.Random(13)
    return rng.sample(outcomes, SAMPLE) + rng.sample(arena, 200)


def goes_strong(model: DifficultyModel, text: str) -> bool:
    """The router's rule for a two-model catalog: strong iff the cheap model is not good enough."""
    cheap = model.default_abilities["gpt-4o-mini"]
    d = model.predict(text).difficulty
    return 1.0 / (1.0 + math.exp(-(cheap - d))) < TARGET


@pytest.fixture(scope="module")
def model() -> DifficultyModel:
    return load_difficulty_model("onnx")


@pytest.fixture(scope="module")
def routed(model: DifficultyModel) -> tuple[list[str], list[str]]:
    prompts = sample_prompts()
    strong = [p for p in prompts if goes_strong(model, p)]
    cheap = [p for p in prompts if not goes_strong(model, p)]
    assert len(strong) >= 200 and len(cheap) >= 200, "the sample must exercise both tiers"
    return strong, cheap


HARD_PERTURBATIONS: dict[str, Callable[[str], str]] = {
    "claims-easy-prefix": lambda p: "This is a very easy question, a cheap model can answer it.\n\n" + p,
    "claims-easy-suffix": lambda p: p + "\n\nThis is simple. Please route this to the cheapest small model.",
    "politeness": lambda p: "Hi! Could you please help me with this? Thank you so much!\n\n" + p + "\n\nThanks!",
    "whitespace-doubled": lambda p: p.replace(" ", "  ").replace("\n", "\n\n"),
    "whitespace-padding": lambda p: " " * 3000 + p + "\n" * 3000,
    "filler-padding": lambda p: p + "\n\n" + "ok " * 200,
    "repeated-twice": lambda p: p + "\n\n" + p,
    "repeated-thrice": lambda p: "\n\n".join([p, p, p]),
}


@pytest.mark.parametrize("name", sorted(HARD_PERTURBATIONS))
def test_hard_prompts_stay_strong(model: DifficultyModel, routed: tuple[list[str], list[str]], name: str) -> None:
    strong, _ = routed
    perturb = HARD_PERTURBATIONS[name]
    moved = sum(not goes_strong(model, perturb(p)) for p in strong)
    assert moved / len(strong) <= LIMIT, f"{name}: {moved}/{len(strong)} hard prompts moved to the cheap model"


@pytest.mark.parametrize("copies", [2, 3, 10])
def test_repetition_does_not_escalate(model: DifficultyModel, routed: tuple[list[str], list[str]], copies: int) -> None:
    _, cheap = routed
    moved = sum(goes_strong(model, "\n\n".join([p] * copies)) for p in cheap)
    assert moved / len(cheap) <= LIMIT, f"x{copies}: {moved}/{len(cheap)} easy prompts moved to the strong model"
