"""``model-router explain --target`` against the real router with ``server.tls``, then with mutual TLS: the right CA
(and client certificate) get the decision; no CA, a wrong CA, a wrong name or a missing client certificate get one
clear line and exit code 2 (README "TLS to the router")."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from devstack.stack import ROOT, Stack
from extproc.api.model_router.v1 import model_router_pb2 as api
from tests.certs import TestCA
from tests.integration.conftest import HEURISTIC
from tests.integration.test_routing import HARD

CA = ["--tls-ca", "{ca}"]
CLIENT = ["--tls-cert", "{client}", "--tls-key", "{client_key}"]
STRANGER = ["--tls-cert", "{stranger}", "--tls-key", "{stranger_key}"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The router's CA, its server and client certificates, and an unrelated CA with a client certificate of its own."""
    directory = tmp_path_factory.mktemp("pki")
    ca, other = TestCA(directory), TestCA(directory, "other-ca")
    server, server_key = ca.issue("router", server=True)
    client, client_key = ca.issue("gateway", server=False)
    stranger, stranger_key = other.issue("stranger", server=False)
    return {
        "ca": ca.path,
        "other_ca": other.path,
        "server": server,
        "server_key": server_key,
        "client": client,
        "client_key": client_key,
        "stranger": stranger,
        "stranger_key": stranger_key,
    }


def _router(workdir: Path, pki: dict[str, Path], mutual: bool) -> Iterator[Stack]:
    """Only the router process (Decide needs no Envoy or upstreams), its gRPC port with server.tls."""
    tls = {"cert_file": str(pki["server"]), "key_file": str(pki["server_key"])}
    client: tuple[bytes | None, bytes | None] = (None, None)
    if mutual:
        tls["client_ca_file"] = str(pki["ca"])
        client = (pki["client_key"].read_bytes(), pki["client"].read_bytes())
    stack = Stack(
        workdir=workdir,
        router_overrides={**HEURISTIC, "server": {"tls": tls}},
        router_credentials=grpc.ssl_channel_credentials(pki["ca"].read_bytes(), *client),
    )
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        stack.start_router()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory, pki: dict[str, Path]) -> Iterator[Stack]:
    yield from _router(tmp_path_factory.mktemp("tls"), pki, mutual=False)


@pytest.fixture(scope="module")
def mtls_stack(tmp_path_factory: pytest.TempPathFactory, pki: dict[str, Path]) -> Iterator[Stack]:
    yield from _router(tmp_path_factory.mktemp("mtls"), pki, mutual=True)


def _explain(stack: Stack, pki: dict[str, Path], options: list[str]) -> subprocess.CompletedProcess[str]:
    """``python -m extproc explain --target 127.0.0.1:PORT --json OPTIONS HARD``, as a user runs it."""
    argv = ["--target", f"127.0.0.1:{stack.router_port}", "--json", *(o.format(**pki) for o in options), HARD]
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}  # explain's own default, not the caller's
    return subprocess.run(
        [sys.executable, "-m", "extproc", "explain", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


def _check(stack: Stack, run: subprocess.CompletedProcess[str], problem: list[str]) -> None:
    if not problem:
        assert run.returncode == 0, run.stderr
        reply = json_format.Parse(run.stdout, api.DecideResponse())
        assert reply.decision.outcome == api.OUTCOME_ROUTED and reply.decision.selected_model == "gpt-4o"
        assert len(reply.models) == 3
        return
    assert run.returncode == 2 and run.stdout == "", run.stdout
    assert run.stderr.startswith(f"model-router explain: 127.0.0.1:{stack.router_port}: UNAVAILABLE: "), run.stderr
    assert run.stderr.count("\n") == 1, f"one line, no gRPC log noise: {run.stderr}"
    for words in problem:
        assert words in run.stderr, run.stderr


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        pytest.param(CA, [], id="ca"),
        pytest.param([*CA, "--tls-server-name", "localhost"], [], id="ca-and-server-name"),
        pytest.param(CA + CLIENT, [], id="needless-client-cert"),
        pytest.param([], ["if the router has server.tls, give --tls-ca"], id="plaintext"),
        pytest.param(
            ["--tls-ca", "{other_ca}"],
            ["CERTIFICATE_VERIFY_FAILED", "does not verify against --tls-ca {other_ca}"],
            id="wrong-ca",
        ),
        pytest.param(
            [*CA, "--tls-server-name", "router.example"],
            ["Hostname Verification", "not for 'router.example' (--tls-server-name"],
            id="wrong-server-name",
        ),
    ],
)
def test_explain_over_tls(tls_stack: Stack, pki: dict[str, Path], options: list[str], problem: list[str]) -> None:
    _check(tls_stack, _explain(tls_stack, pki, options), [p.format(**pki) for p in problem])


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        pytest.param(CA + CLIENT, [], id="ca-and-client-cert"),
        pytest.param(CA, ["give --tls-cert and --tls-key"], id="no-client-cert"),
        pytest.param(CA + STRANGER, ["may not accept the client certificate in --tls-cert {stranger}"], id="stranger"),
        pytest.param(
            ["--tls-ca", "{other_ca}", *CLIENT], ["does not verify against --tls-ca {other_ca}"], id="wrong-ca"
        ),
        pytest.param([], ["give --tls-ca"], id="plaintext"),
    ],
)
def test_explain_over_mutual_tls(
    mtls_stack: Stack, pki: dict[str, Path], options: list[str], problem: list[str]
) -> None:
    _check(mtls_stack, _explain(mtls_stack, pki, options), [p.format(**pki) for p in problem])
