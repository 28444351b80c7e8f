"""The router image's Dockerfile, checked statically: no Docker engine runs where these tests run.

What it proves: a multi-stage build whose final stage holds only the installed venv (runtime dependencies, no
extras), runs as a non-root numeric USER, ships the ONNX model directory, and whose CMD serves the config path the
manifests mount. It does not prove the image builds; see k8s/README.md.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field

from tests.unit.k8s.manifests import ROOT, find, kustomize

MODEL_DIR = "classifier/models/default/"


@dataclass
class Stage:
    """One FROM ... stage: its name and its instructions as (keyword, arguments)."""

    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]


def _instructions(text: str) -> list[tuple[str, str]]:
    logical = re.sub(r"\\\n", " ", text)
    out = []
    for line in logical.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _stages() -> list[Stage]:
    stages: list[Stage] = []
    build_args: dict[str, str] = {}
    for keyword, rest in _instructions((ROOT / "Dockerfile").read_text()):
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            build_args[name] = default
        elif keyword == "FROM":
            base, _, name = rest.partition(" AS ")
            for arg, value in build_args.items():
                base = base.replace("${" + arg + "}", value)
            stages.append(Stage(base=base, name=name.strip()))
        else:
            stages[-1].instructions.append((keyword, rest))
    return stages


def test_multi_stage_with_pinned_bases() -> None:
    stages = _stages()
    assert len(stages) >= 2
    assert [s.name for s in stages] == ["build", "runtime"]
    for stage in stages:
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", stage.base), stage.base
        assert not stage.base.endswith(":latest")


def test_build_stage_installs_runtime_dependencies_and_the_model() -> None:
    build = _stages()[0]
    copies = build.args("COPY")
    assert f"{MODEL_DIR} {MODEL_DIR}" in copies
    installs = [r for r in build.args("RUN") if "pip install" in r]
    assert installs and all(re.search(r"pip install -c constraints\.txt \.(\s|$)", r) for r in installs), (
        "no extras (runtime deps only), at the versions the tests pass with (tests/unit/test_lock.py)"
    )
    assert any(c.split()[-1] == "./" and "constraints.txt" in c.split() for c in copies)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "classifier.models.default" in pyproject["tool"]["setuptools"]["packages"]  # the wheel: test_packaging.py
    assert (ROOT / MODEL_DIR / "model.onnx").is_file()


def test_runtime_stage_is_minimal_and_non_root() -> None:
    runtime = _stages()[-1]
    copies = runtime.args("COPY")
    assert copies and all(c.startswith("--from=build ") for c in copies), "only the built venv goes in"
    (user,) = runtime.args("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) > 0, "a numeric non-root USER, so runAsNonRoot can check it"
    last_user = max(i for i, (kw, _) in enumerate(runtime.instructions) if kw == "USER")
    assert all(kw not in {"RUN", "COPY"} for kw, _ in runtime.instructions[last_user:])
    deployment = find(kustomize("base"), "Deployment")
    sidecar = deployment["spec"]["template"]["spec"]["initContainers"][0]
    assert sidecar["securityContext"]["runAsUser"] == int(uid)


def test_cmd_serves_the_mounted_config() -> None:
    runtime = _stages()[-1]
    (cmd,) = runtime.args("CMD")
    argv = json.loads(cmd)
    assert argv[:3] == ["model-router", "serve", "--config"]
    deployment = find(kustomize("base"), "Deployment")
    sidecar = deployment["spec"]["template"]["spec"]["initContainers"][0]
    assert argv == (sidecar["command"] + sidecar["args"])[: len(argv)], "the sidecar adds only listen flags"
    assert not runtime.args("ENTRYPOINT"), "the manifests' command/args replace CMD cleanly"
    exposed = {int(p) for e in runtime.args("EXPOSE") for p in e.split()}
    assert {50051, 9464} <= exposed


def test_dockerignore_sends_what_the_build_copies() -> None:
    """Every source of the build stage's COPYs (read from the Dockerfile, not listed here) is let into the context:
    a file the build copies but the context leaves out fails ``docker build`` (constraints.txt once did)."""
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [ln for ln in lines if ln and not ln.startswith("#")]
    assert patterns[0] == "*", "deny by default: no .venv, tests or training data in the build context"
    sources = [src for copy in _stages()[0].args("COPY") for src in copy.split()[:-1]]
    assert MODEL_DIR in sources and "constraints.txt" in sources
    for src in sources:
        assert f"!{src}" in patterns, f"{src} is copied by the build but left out of the context"


def test_large_allocations_go_back_to_the_system() -> None:
    """glibc raises its mmap threshold after the first large free and then keeps request-sized allocations in the
    heap: the router's RSS grew with each burst of large prompts (118 -> 176 MB over three; 134 MB with the fixed
    threshold). The image fixes it, as the webhook's Deployment does for its parses."""
    (env,) = _stages()[-1].args("ENV")
    assert "MALLOC_MMAP_THRESHOLD_=131072" in env.split()
    injector = find(kustomize("injector"), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "MALLOC_MMAP_THRESHOLD_", "value": "131072"} in injector["env"]
