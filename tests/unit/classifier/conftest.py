"""Fixtures for the classifier tests: a tiny ONNX model built from a seeded table, never downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from tests.unit.classifier.tiny import TINY_VOCAB, tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete model directory (graph, tokenizer, metadata) with a random 8-dim int8 table and linear head."""
    from classifier import train
    from classifier.features import FeatureSpec
    from classifier.irt import CalibrationTable
    from classifier.tokenize import TextCut

    rng = np.random.default_rng(0)
    quantized = rng.integers(-127, 128, size=(len(TINY_VOCAB), 8), dtype=np.int8)
    scale = rng.uniform(0.001, 0.01, size=(len(TINY_VOCAB), 1)).astype(np.float32)
    table = train.StudentTable(quantized=quantized, scale=scale)
    head = train.Head(weight=rng.normal(size=9).astype(np.float32), bias=0.25)
    spec = FeatureSpec(cut=TextCut(head_chars=24, tail_chars=8), length_cap_tokens=16, prior_tokens=2.0)
    out = tmp_path_factory.mktemp("tiny_model")
    (out / "model.onnx").write_bytes(train.build_onnx(table, head, spec.prior_tokens))
    tiny_tokenizer().save(str(out / "tokenizer.json"))
    calibration = train.Calibration(
        table=CalibrationTable(raw=(-1.0, 0.0, 1.0), difficulty=(-2.0, 0.0, 1.0)),
        abilities={"cheap": -0.5, "strong": 1.5},
        source_offsets={},
    )
    from classifier.tokenize import WordPieceTokenizer

    meta = train.metadata(spec, calibration, WordPieceTokenizer(tiny_tokenizer()), {"seed": 0}, [])
    (out / "metadata.json").write_bytes(orjson.dumps(meta))
    np.save(out / "table.npy", table.dequantized)
    np.save(out / "head.npy", np.concatenate([head.weight, [head.bias]]).astype(np.float32))
    graphs = {
        "folded": train.build_onnx_folded(table, head, spec.prior_tokens),
        "clipped": train.build_onnx(table, head, spec.prior_tokens, clip=TINY_CLIP),
        "clipped-folded": train.build_onnx_folded(table, head, spec.prior_tokens, clip=TINY_CLIP),
    }
    for sub, graph in graphs.items():
        (out / sub).mkdir()
        (out / sub / "model.onnx").write_bytes(graph)
        for name in ("tokenizer.json", "metadata.json"):
            (out / sub / name).write_bytes((out / name).read_bytes())
    return out


TINY_CLIP = 0.02
"""Below the tiny table's largest per-token scores, so the clipped graphs differ from the plain ones."""
