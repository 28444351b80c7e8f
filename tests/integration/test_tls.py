"""TLS on the router's gRPC port (``server.tls``): Envoy reaches the router over TLS, optionally mutual, and a
caller without the right credentials gets nothing (README "TLS to the router")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.stack import Stack
from tests.certs import TestCA
from tests.integration.conftest import HEURISTIC
from tests.integration.test_routing import EASY, chat_body, post


def _router_over_tls(ca: Path, client: tuple[Path, Path] | None) -> Any:
    """Envoy's ext_proc cluster with a TLS transport socket that verifies the router against ``ca``."""

    def patch(cfg: dict[str, Any]) -> None:
        context: dict[str, Any] = {
            "sni": "localhost",
            "common_tls_context": {
                "validation_context": {
                    "trusted_ca": {"filename": str(ca)},
                    "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "localhost"}}],
                }
            },
        }
        if client:
            cert, key = client
            context["common_tls_context"]["tls_certificates"] = [
                {"certificate_chain": {"filename": str(cert)}, "private_key": {"filename": str(key)}}
            ]
        for cluster in cfg["static_resources"]["clusters"]:
            if cluster["name"] == "model_router":
                cluster["transport_socket"] = {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                        **context,
                    },
                }

    return patch


def _health(port: int, credentials: grpc.ChannelCredentials | None) -> Any:
    target = f"127.0.0.1:{port}"
    with grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=3).status


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_envoy_reaches_the_router_over_tls_and_plaintext_callers_do_not(tmp_path: Path, mutual: bool) -> None:
    ca = TestCA(tmp_path)
    server_cert, server_key = ca.issue("router", server=True)
    client = ca.issue("gateway", server=False) if mutual else None
    tls: dict[str, Any] = {"cert_file": str(server_cert), "key_file": str(server_key)}
    if mutual:
        tls["client_ca_file"] = str(ca.path)
    overrides = {**HEURISTIC, "server": {"tls": tls}}
    root = ca.path.read_bytes()
    if client:
        credentials = grpc.ssl_channel_credentials(root, client[1].read_bytes(), client[0].read_bytes())
    else:
        credentials = grpc.ssl_channel_credentials(root)
    stack = Stack(
        workdir=tmp_path / "stack",
        router_overrides=overrides,
        envoy_patch=_router_over_tls(ca.path, client),
        router_credentials=credentials,
    )
    with stack:
        r = post(stack, chat_body(EASY))
        assert r.status_code == 200 and r.headers["x-model-router-tier"] in ("small", "cheap"), r.headers
        assert _health(stack.router_port, credentials) == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError):
            _health(stack.router_port, None)  # plaintext
        if mutual:
            with pytest.raises(grpc.RpcError):
                _health(stack.router_port, grpc.ssl_channel_credentials(root))  # TLS without a client certificate
