"""`make demo` is the main job: run it as a user would and check what it prints, not only that it exits 0."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from devstack.demo import PROMPTS
from devstack.stack import ROOT


@pytest.mark.parametrize("flags", [["--keep"], ["--usage"]], ids=["keep", "usage"])
def test_demo_prints_where_each_prompt_went_and_why(flags: list[str]) -> None:
    """With ``--keep`` (``make demo KEEP=1``) it also waits for Enter before the fail-open step; Enter is sent. With
    ``--usage`` (``make demo USAGE=1``) it shows the usage the router read from the responses."""
    done = subprocess.run(
        [sys.executable, "-m", "devstack.demo", *flags],
        cwd=ROOT,
        input="\n",
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("-----")) + 1
    rows = lines[start : lines.index("", start)]
    assert [row.split("]")[0] + "]" for row in rows] == [f"[{label}]" for label, _ in PROMPTS], out
    for row in rows:
        tier, _model, answered_by = row[47:].split()[:3]
        assert tier == answered_by, row  # Envoy sent each request to the cluster the router chose
    assert re.search(r"\(\d+% saved;", out), out
    assert "Envoy retried it on cluster frontier, which was asked for gpt-4o" in out
    assert "answered by cluster small as llama-3.1-8b-instruct (no router decision)" in out
    if "--keep" in flags:
        assert "The stack is up; try it from another terminal:" in out and "model-router explain --target" in out
        assert out.index("The stack is up") < out.index("Router killed"), "the stack is kept up before the kill"
    else:
        assert "The stack is up" not in out
    read = re.search(r'^  model_router_usage_responses_total\{result="read"\} (\S+)$', out, re.M)
    if "--usage" in flags:  # every decided answer was read, the streamed one (include_usage) too
        assert read is not None and float(read.group(1)) >= len(PROMPTS) + 1, out
        assert re.search(
            r'^  model_router_usage_tokens_total\{direction="output",model="gpt-4o-mini"\} [1-9]', out, re.M
        )
    else:
        assert read is None and "model_router_usage_tokens_total" not in out
    assert "Router killed, Envoy fails open: [fact] asking for 'auto': answered by cluster frontier as gpt-4o" in out
