"""The shipped difficulty model: cut → WordPiece ids → one ONNX graph (int8 embedding bag + head) → calibration table.

A model directory holds exactly ``model.onnx``, ``tokenizer.json`` and ``metadata.json`` (the cut, the feature
settings, the raw → difficulty table and the default abilities), all written by ``python -m classifier.train``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import onnxruntime as ort
import orjson

from classifier.features import DENSE_NAMES, Features, FeatureSpec, Featurizer
from classifier.irt import CalibrationTable
from classifier.model import Prediction
from classifier.tokenize import TextCut, WordPieceTokenizer

__all__ = ["MODEL_FILES", "OnnxDifficultyModel"]

MODEL_FILES: tuple[str, ...] = ("model.onnx", "tokenizer.json", "metadata.json")


class OnnxDifficultyModel:
    """:class:`~classifier.model.DifficultyModel` backed by onnxruntime; thread-safe, no I/O after :meth:`load`.

    onnxruntime's ``InferenceSession.run`` may be called from several threads at once; everything else here is
    read-only after construction.
    """

    __slots__ = ("_abilities", "_boundaries", "_featurizer", "_name", "_session", "_table", "_width")

    def __init__(
        self,
        session: ort.InferenceSession,
        featurizer: Featurizer,
        table: CalibrationTable,
        abilities: Mapping[str, float],
        name: str,
        quality_target: float = 0.8,
        confidence_width: float = 0.5,
        confidence_models: Sequence[str] | None = None,
    ) -> None:
        self._session = session
        self._featurizer = featurizer
        self._table = table
        self._abilities: Mapping[str, float] = MappingProxyType(dict(abilities))
        self._name = name
        # A model is chosen iff sigmoid(ability - d) >= target, i.e. d <= ability - logit(target).
        shift = math.log(quality_target / (1.0 - quality_target))
        names = abilities.keys() if confidence_models is None else [m for m in confidence_models if m in abilities]
        self._boundaries = tuple(sorted(abilities[m] - shift for m in names))
        self._width = confidence_width

    @classmethod
    def load(cls, model_dir: Path) -> OnnxDifficultyModel:
        """Load a model directory written by training; raises ``FileNotFoundError``/``ValueError`` if malformed.

        The directory is checked as a whole before it may serve: training stored the raw score of a few fixed
        strings (``parity``), and the loaded tokenizer + graph must reproduce them. A tokenizer from another
        model, a graph from another run or a half-replaced directory fails here, not at the first request (or,
        worse, not at all with plausible wrong scores).
        """
        for file in MODEL_FILES:
            if not (model_dir / file).is_file():
                raise FileNotFoundError(f"{model_dir / file} is missing")
        try:
            model, parity = cls._load(model_dir)
            checks = [(str(e["text"]), float(e["raw"]), e.get("ids")) for e in parity]
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            raise ValueError(f"{model_dir / 'metadata.json'}: missing or malformed field ({exc!r})") from exc
        except ort.capi.onnxruntime_pybind11_state.Fail as exc:
            raise ValueError(f"{model_dir / 'model.onnx'}: {exc}") from exc
        model._check_parity(model_dir, checks)
        return model

    def _check_parity(self, model_dir: Path, checks: Sequence[tuple[str, float, list[int] | None]]) -> None:
        """Training's raw scores (and token ids, when stored) of fixed strings (metadata ``parity``) must come out of
        this tokenizer and graph."""
        for text, trained, trained_ids in checks:
            features = self._featurizer.encode(text)
            try:
                got = self.raw(features)
            except Exception as exc:
                raise ValueError(f"{model_dir}: the graph fails on its own parity text ({exc})") from exc
            ids_differ = trained_ids is not None and features.ids.tolist() != list(trained_ids)
            if ids_differ or not math.isclose(got, trained, rel_tol=1e-4, abs_tol=1e-4):
                raise ValueError(
                    f"{model_dir}: tokenizer.json, model.onnx and metadata.json do not belong together (parity text"
                    f" {text[:40]!r}: raw {got:.6f}, trained {trained:.6f})"
                )

    @classmethod
    def _load(cls, model_dir: Path) -> tuple[OnnxDifficultyModel, list[Any]]:
        """The model and its metadata's parity entries (checked by :meth:`load`)."""
        meta_bytes = (model_dir / "metadata.json").read_bytes()
        try:
            meta: dict[str, Any] = orjson.loads(meta_bytes)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{model_dir / 'metadata.json'}: not JSON ({exc})") from exc
        if not isinstance(meta, dict):
            raise ValueError(f"{model_dir / 'metadata.json'}: not a JSON object")
        if meta.get("format") != 1 or tuple(meta.get("dense_features", ())) != DENSE_NAMES:
            raise ValueError(f"{model_dir}: unsupported model format or feature set")
        width, cap = float(meta.get("confidence_width", 0.5)), int(meta["length_cap_tokens"])
        if not (width > 0 and cap > 0):
            raise ValueError(f"{model_dir / 'metadata.json'}: confidence_width and length_cap_tokens must be > 0")
        spec = FeatureSpec(
            cut=TextCut(head_chars=int(meta["cut"]["head_chars"]), tail_chars=int(meta["cut"]["tail_chars"])),
            length_cap_tokens=cap,
            prior_tokens=float(meta["prior_tokens"]),
            neutral_words=tuple(str(w) for w in meta["neutral_words"]),
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        session = ort.InferenceSession(
            str(model_dir / "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
        )
        try:
            tokenizer = WordPieceTokenizer.from_file(model_dir / "tokenizer.json")
        except Exception as exc:  # the tokenizers library raises a bare Exception for a malformed file
            raise ValueError(f"{model_dir / 'tokenizer.json'}: cannot load ({exc})") from exc
        table = CalibrationTable(
            raw=tuple(float(v) for v in meta["calibration"]["raw"]),
            difficulty=tuple(float(v) for v in meta["calibration"]["difficulty"]),
        )
        model = cls(
            session=session,
            featurizer=Featurizer(tokenizer, spec),
            table=table,
            abilities={str(k): float(v) for k, v in meta["default_abilities"].items()},
            name=str(meta["name"]),
            quality_target=float(meta.get("quality_target", 0.8)),
            confidence_width=width,
            confidence_models=[str(m) for m in meta.get("confidence_models", [])] or None,
        )
        return model, list(meta.get("parity", []))

    @property
    def name(self) -> str:
        """Model name and version from its metadata."""
        return self._name

    @property
    def default_abilities(self) -> Mapping[str, float]:
        """IRT abilities of common models (API names) on this model's difficulty scale."""
        return self._abilities

    @property
    def featurizer(self) -> Featurizer:
        """The feature step, exposed for the parity test and the benchmark."""
        return self._featurizer

    def raw(self, features: Features) -> float:
        """The graph's uncalibrated output for already computed features."""
        (out,) = self._session.run(["raw"], {"ids": features.ids, "dense": features.dense})
        return float(np.asarray(out).reshape(-1)[0])

    def predict(self, text: str) -> Prediction:
        """Difficulty of ``text`` on the ability scale; confidence grows with the distance to the nearest boundary."""
        difficulty = self._table.apply(self.raw(self._featurizer.encode(text)))
        if self._boundaries:
            nearest = min(abs(b - difficulty) for b in self._boundaries)
            confidence = min(1.0, nearest / self._width)
        else:
            confidence = 0.0
        return Prediction(difficulty=difficulty, confidence=confidence)
