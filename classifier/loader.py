"""Builds the configured :class:`~classifier.model.DifficultyModel`; the only place that knows every kind."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from classifier.model import DifficultyModel

__all__ = ["DEFAULT_MODEL_DIR", "ClassifierKind", "load_difficulty_model"]

ClassifierKind = Literal["onnx", "heuristic"]
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "default"


def load_difficulty_model(kind: ClassifierKind, model_dir: Path | None = None) -> DifficultyModel:
    """Load a model; ``model_dir`` (ONNX only) defaults to the model shipped inside the package."""
    if kind == "heuristic":
        from classifier.heuristic import HeuristicDifficultyModel

        return HeuristicDifficultyModel()
    from classifier.onnx_model import OnnxDifficultyModel

    model: DifficultyModel = OnnxDifficultyModel.load(model_dir or DEFAULT_MODEL_DIR)
    return model
