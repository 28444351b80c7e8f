"""Shared fixtures: every kustomization under k8s/, built once per session with ``kubectl kustomize``."""

from __future__ import annotations

import pytest

from tests.unit.k8s.manifests import KUSTOMIZATIONS, Objects, kustomize


@pytest.fixture(scope="session")
def builds() -> dict[str, Objects]:
    """Every kustomization's rendered objects, keyed by its directory relative to k8s/."""
    return {directory: kustomize(directory) for directory in KUSTOMIZATIONS}
