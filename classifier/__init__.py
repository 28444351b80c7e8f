"""Prompt difficulty estimation: pure inference, no knowledge of gRPC or Envoy.

Importing this package is cheap: onnxruntime and tokenizers are only imported when an ONNX model is loaded.
"""

from classifier.model import DifficultyModel, Prediction

__all__ = ["DifficultyModel", "Prediction"]
