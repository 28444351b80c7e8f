"""Helpers for the manifest tests: build every kustomization under k8s/ and pick objects out of the result."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "k8s"
K8S_VERSION = "1.33.0"
"""Kubernetes schemas the manifests are validated against. Native sidecars (init containers with
``restartPolicy: Always``) are GA from 1.33 (beta and on by default from 1.29)."""


def _kind(path: Path) -> str:
    kind: str = yaml.safe_load(path.read_text()).get("kind", "Kustomization")
    return kind


_ALL = sorted(K8S.rglob("kustomization.yaml"))
KUSTOMIZATIONS = [p.parent.relative_to(K8S).as_posix() for p in _ALL if _kind(p) == "Kustomization"]
"""Every directory ``kubectl kustomize`` builds on its own."""
COMPONENTS = [p.parent.relative_to(K8S).as_posix() for p in _ALL if _kind(p) == "Component"]
"""Kustomize Components: they only build as part of a kustomization that lists them under ``components:``."""

Objects = list[dict[str, Any]]


def _kustomize(path: Path) -> subprocess.CompletedProcess[str]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to build the kustomizations (it embeds kustomize)"
    return subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60, check=False)


def kustomize(directory: str | Path) -> Objects:
    """The objects ``kubectl kustomize k8s/<directory>`` (or of a kustomization directory given as a ``Path``)
    renders; a failed build fails the test with its stderr."""
    path = directory if isinstance(directory, Path) else K8S / directory
    proc = _kustomize(path)
    assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def kustomize_error(path: Path) -> str:
    """The stderr of ``kubectl kustomize`` on a kustomization that must not build."""
    proc = _kustomize(path)
    assert proc.returncode != 0, f"kubectl kustomize {path} built, but should have failed"
    return proc.stderr


def find(objects: Objects, kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` (and ``name``, if given) among ``objects``."""
    hits = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def config_map_file(objects: Objects, key: str) -> tuple[str, dict[str, Any]]:
    """The generated ConfigMap's name and the parsed YAML file stored under ``key``."""
    cm = next(o for o in objects if o["kind"] == "ConfigMap" and key in o.get("data", {}))
    return cm["metadata"]["name"], yaml.safe_load(cm["data"][key])
