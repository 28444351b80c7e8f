"""Fakes injected through constructors: a fixed-rule difficulty model, ids, a clock and a recording sink."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import yaml

from classifier.model import DifficultyModel, Prediction
from devstack.samples import SAMPLE_ROUTED as SAMPLE_ROUTED  # re-exported: defined once for tests and bench
from devstack.stack import ENVOY_DIR
from extproc.config import Settings, parse_config
from extproc.record import DecisionRecord
from extproc.snapshot import Snapshot, build_snapshot
from extproc.stream import Classify

FAKE_ABILITIES: Mapping[str, float] = MappingProxyType(
    {"llama-3.1-8b-instruct": 0.0, "gpt-4o-mini": 1.0, "gpt-4o": 3.0}
)


class FakeDifficultyModel:
    """Difficulty by keyword: "hard" -> 3.0 (frontier), "medium" -> -0.5 (cheap), else -3.0 (small)."""

    name = "fake-v1"
    default_abilities = FAKE_ABILITIES

    def __init__(self, error: Exception | None = None, delay: float = 0.0) -> None:
        self.error = error
        self.delay = delay
        self.seen: list[str] = []

    def predict(self, text: str) -> Prediction:
        self.seen.append(text)
        if self.delay:
            time.sleep(self.delay)
        if self.error:
            raise self.error
        lowered = text.lower()
        if "hard" in lowered:
            return Prediction(3.0, 0.9)
        if "medium" in lowered:
            return Prediction(-0.5, 0.5)
        return Prediction(-3.0, 0.9)


@dataclass
class RecordingSink:
    """Keeps every decision record."""

    records: list[DecisionRecord] = field(default_factory=list)

    errors: list[str] = field(default_factory=list)

    def record(self, rec: DecisionRecord) -> None:
        self.records.append(rec)

    usages: list[tuple[str, str, int, int, float]] = field(default_factory=list)
    """(decision id, model, input tokens, output tokens, cost) per :meth:`usage`."""

    def error(self, reason: str) -> None:
        self.errors.append(reason)

    def usage(self, decision_id: str, model: str, input_tokens: int, output_tokens: int, cost: float) -> None:
        self.usages.append((decision_id, model, input_tokens, output_tokens, cost))


def sequential_ids() -> Callable[[], str]:
    """Decision ids 0000000000000001, 0000000000000002, ..."""
    counter = itertools.count(1)
    return lambda: f"{next(counter):016x}"


def fixed_clock() -> Callable[[], float]:
    """A clock that advances 1 ms per reading."""
    counter = itertools.count()
    return lambda: next(counter) / 1000.0


async def inline_classify(model: DifficultyModel, text: str, timeout: float) -> Prediction:
    """Classify on the calling thread (tests only)."""
    return model.predict(text)


_: Classify = inline_classify


def demo_settings(**policy: object) -> Settings:
    """The shipped demo config (``envoy/model-router.yaml``), with policy overrides."""
    data = yaml.safe_load((ENVOY_DIR / "model-router.yaml").read_text())
    data["policy"].update(policy)
    return parse_config(data)


def with_section(settings: Settings, section: str, **fields: object) -> Settings:
    """``settings`` with some fields of one section (``server``, ``telemetry``...) changed."""
    return settings.model_copy(update={section: getattr(settings, section).model_copy(update=fields)})


def snapshot(model: DifficultyModel | None = None, settings: Settings | None = None) -> Snapshot:
    """A snapshot of the demo config with a fake model."""
    chosen = model or FakeDifficultyModel()
    return build_snapshot(settings or demo_settings(), lambda _settings: chosen)


class DecisionStreamContext:
    """The one thing a decision stream asks of gRPC's servicer context (no call metadata)."""

    def invocation_metadata(self) -> tuple[()]:
        return ()
