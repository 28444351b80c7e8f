"""Envoy ext_proc side of model-router: protocol handling, request parsing, policy and configuration.

Importing this package loads nothing heavy (no onnxruntime, no files, no network).
"""

__all__: list[str] = []
