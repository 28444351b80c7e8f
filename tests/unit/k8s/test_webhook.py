"""The sidecar-injection webhook (extproc/webhook.py): the pure ``mutate`` function, its config, and the real server.

Malformed input, as chosen and documented in the module: a body that is not an AdmissionReview v1 with a
``request.uid`` raises ``InvalidReviewError`` (the server answers HTTP 400 and the API server applies the
webhook's failurePolicy); a well-formed review whose object is not a pod the webhook can change is *allowed*,
without a patch, with ``status.message`` saying why.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime
import http.client
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devstack.stack import free_port
from extproc import webhook as webhook_module
from extproc.errors import ConfigError
from extproc.webhook import (
    ANNOTATION_CONFIG_MAP,
    ANNOTATION_INJECT,
    ANNOTATION_STATUS,
    MAX_REQUESTS,
    TOKEN_MOUNT,
    InjectionSettings,
    InvalidReviewError,
    build_server,
    load_webhook_config,
    mutate,
    parse_webhook_config,
)
from tests.unit.k8s.manifests import K8S_VERSION, ROOT, find, kustomize

SETTINGS = InjectionSettings(image="registry.example/model-router:1.2.3")
DATA_DIR = "/var/lib/model-router"
"""k8s/base mounts an emptyDir here for capture.path and feedback.path (k8s/base/router-config/model-router.yaml)."""
APP = {"name": "envoy", "image": "envoyproxy/envoy:v1.40.0"}


def pod(annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    """A minimal Pod as the API server sends it in ``request.object``."""
    metadata: dict[str, Any] = {"name": "gw-abc", "namespace": "gw"}
    if annotations is not None:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": {"containers": [APP], **spec}}


def review(obj: Any, operation: str = "CREATE", kind: str = "Pod") -> dict[str, Any]:
    """An AdmissionReview v1 request for ``obj``."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "gw",
            "operation": operation,
            "object": obj,
        },
    }


def patch_of(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The decoded JSONPatch of an answer, or [] if it has none."""
    response = answer["response"]
    if "patch" not in response:
        return []
    assert response["patchType"] == "JSONPatch"
    ops: list[dict[str, Any]] = json.loads(base64.b64decode(response["patch"]))
    return ops


def apply(obj: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply RFC 6902 ``add`` operations (the only kind ``mutate`` emits) to a copy of ``obj``."""
    out = copy.deepcopy(obj)
    for op in ops:
        assert op["op"] == "add"
        tokens = [t.replace("~1", "/").replace("~0", "~") for t in op["path"].split("/")[1:]]
        parent: Any = out
        for token in tokens[:-1]:
            parent = parent[int(token)] if isinstance(parent, list) else parent[token]
        if isinstance(parent, list):
            parent.insert(len(parent) if tokens[-1] == "-" else int(tokens[-1]), op["value"])
        else:
            assert parent.get(tokens[-1]) is None, f"add would replace {op['path']}"
            parent[tokens[-1]] = op["value"]
    return out


INJECT = {ANNOTATION_INJECT: "true"}
EXISTING_INIT = {"name": "setup", "image": "busybox:1.36", "command": ["true"]}
EXISTING_VOLUME = {"name": "certs", "emptyDir": {}}


# --- patches that inject --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "want_paths", "want_init", "want_volumes"),
    [
        pytest.param(
            pod(INJECT),
            ["/spec/initContainers", "/spec/volumes", "/metadata/annotations/model-router.io~1status"],
            ["model-router"],
            ["model-router-config", "model-router-tmp", "model-router-data", "model-router-no-token"],
            id="annotated-pod-gets-sidecar-and-volumes",
        ),
        pytest.param(
            pod(INJECT, initContainers=[EXISTING_INIT], volumes=[EXISTING_VOLUME]),
            ["/spec/initContainers/0", "/spec/volumes/-", "/spec/volumes/-", "/spec/volumes/-", "/spec/volumes/-",
             "/metadata/annotations/model-router.io~1status"],
            ["model-router", "setup"],
            ["certs", "model-router-config", "model-router-tmp", "model-router-data", "model-router-no-token"],
            id="existing-init-containers-and-volumes-are-kept",
        ),
        pytest.param(
            pod(INJECT, initContainers=None, volumes=[]),
            ["/spec/initContainers", "/spec/volumes/-", "/spec/volumes/-", "/spec/volumes/-", "/spec/volumes/-",
             "/metadata/annotations/model-router.io~1status"],
            ["model-router"],
            ["model-router-config", "model-router-tmp", "model-router-data", "model-router-no-token"],
            id="null-init-containers-and-empty-volumes",
        ),
    ],
)  # fmt: skip
def test_mutate_injects(
    obj: dict[str, Any], want_paths: list[str], want_init: list[str], want_volumes: list[str]
) -> None:
    answer = mutate(review(obj), SETTINGS)
    response = answer["response"]
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    assert response["uid"] == review(obj)["request"]["uid"]
    assert response["allowed"] is True
    ops = patch_of(answer)
    assert [op["path"] for op in ops] == want_paths
    mutated = apply(obj, ops)
    spec = mutated["spec"]
    assert [c["name"] for c in spec["initContainers"]] == want_init
    assert [v["name"] for v in spec["volumes"]] == want_volumes
    assert spec["containers"] == [APP], "the app containers are untouched"
    assert mutated["metadata"]["annotations"] == {**INJECT, ANNOTATION_STATUS: "injected"}
    sidecar = spec["initContainers"][0]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == SETTINGS.image
    assert sidecar["args"] == [
        "serve",
        "--config",
        "/etc/model-router/model-router.yaml",
        "--listen",
        "127.0.0.1:50051",  # only the pod's Envoy: ext_proc, Decide and reflection are not on the pod IP
        "--health-listen",
        "[::]:9466",  # the probes' port (both families), which says only loading / waiting for a valid config / serving
        "--wait-for-config",  # a config error must not stop the pod's Envoy from starting
    ]
    assert [p["containerPort"] for p in sidecar["ports"]] == [9464, 9466]
    for probe in ("startupProbe", "livenessProbe"):
        assert sidecar[probe]["httpGet"] == {"path": "/healthz", "port": 9466}
    kubernetes_validate.validate(mutated, K8S_VERSION, strict=True)


def test_injected_pod_is_left_alone_the_second_time() -> None:
    """Idempotent: a pod the webhook already changed (reinvocation, a replayed request) gets no second patch."""
    obj = pod(INJECT, initContainers=[EXISTING_INIT])
    once = apply(obj, patch_of(mutate(review(obj), SETTINGS)))
    answer = mutate(review(once), SETTINGS)
    assert patch_of(answer) == []
    assert answer["response"]["allowed"] is True
    assert answer["response"]["status"]["message"] == "not injected: already injected"


def test_config_map_annotation_overrides_the_default() -> None:
    obj = pod({**INJECT, ANNOTATION_CONFIG_MAP: "router-team-a"})
    mutated = apply(obj, patch_of(mutate(review(obj), SETTINGS)))
    config = next(v for v in mutated["spec"]["volumes"] if v["name"] == "model-router-config")
    assert config["configMap"] == {
        "name": "router-team-a",
        "items": [{"key": "model-router.yaml", "path": "model-router.yaml"}],
        "optional": True,  # missing: the pod still starts (its router waits for the file, its Envoy fails open)
    }


def test_injected_sidecar_matches_the_base_deployment() -> None:
    """The webhook's container (with k8s/injector/webhook.yaml) is the native sidecar of k8s/base, same settings."""
    injector = kustomize("injector")
    webhook_cm = next(o for o in injector if o["kind"] == "ConfigMap")
    settings = parse_webhook_config(yaml.safe_load(webhook_cm["data"]["webhook.yaml"])).sidecar
    mutated = apply(pod(INJECT), patch_of(mutate(review(pod(INJECT)), settings)))
    injected = mutated["spec"]["initContainers"][0]
    base_spec = find(kustomize("base"), "Deployment")["spec"]["template"]["spec"]
    base = base_spec["initContainers"][0]
    same = ("name", "image", "restartPolicy", "command", "args", "ports", "resources", "startupProbe",
            "livenessProbe")  # fmt: skip
    assert {k: injected[k] for k in same} == {k: base[k] for k in same}
    # A native sidecar's readiness is the pod's: a router slow under load would take the injected pod out of its
    # Service, though its Envoy fails open without the router. So, as in k8s/base, no readinessProbe.
    assert "readinessProbe" not in injected and "readinessProbe" not in base
    assert injected["securityContext"] == {**base["securityContext"], "seccompProfile": {"type": "RuntimeDefault"}}
    base_paths = [m["mountPath"] for m in base["volumeMounts"]]
    # base's pod mounts no token (automountServiceAccountToken: false); an injected pod's own setting is not ours
    assert [m["mountPath"] for m in injected["volumeMounts"]] == [*base_paths, TOKEN_MOUNT]
    assert base_spec["automountServiceAccountToken"] is False


def test_the_injected_router_gets_no_service_account_token() -> None:
    """The API server re-runs its ServiceAccount plugin after a webhook changed the pod and mounts the pod's token
    into each container with nothing at the token path (an Istio gateway's token reads the namespace's Secrets):
    the router's own mount there is an empty in-memory volume, read-only."""
    mutated = apply(pod(INJECT), patch_of(mutate(review(pod(INJECT)), SETTINGS)))
    router = mutated["spec"]["initContainers"][0]
    (mount,) = [m for m in router["volumeMounts"] if m["mountPath"] == TOKEN_MOUNT]
    volume = next(v for v in mutated["spec"]["volumes"] if v["name"] == mount["name"])
    assert mount["readOnly"] is True and set(volume) == {"name", "emptyDir"}


def test_injected_sidecar_gets_the_learning_volume() -> None:
    """Like k8s/base: a writable emptyDir of the same size at the directory of capture.path and feedback.path."""
    injector = kustomize("injector")
    webhook_cm = next(o for o in injector if o["kind"] == "ConfigMap")
    settings = parse_webhook_config(yaml.safe_load(webhook_cm["data"]["webhook.yaml"])).sidecar
    mutated = apply(pod(INJECT), patch_of(mutate(review(pod(INJECT)), settings)))
    kubernetes_validate.validate(mutated, K8S_VERSION, strict=True)
    base_spec = find(kustomize("base"), "Deployment")["spec"]["template"]["spec"]
    base_mount = next(m for m in base_spec["initContainers"][0]["volumeMounts"] if m["mountPath"] == DATA_DIR)
    base_volume = next(v for v in base_spec["volumes"] if v["name"] == base_mount["name"])
    mounts = {m["mountPath"]: m for m in mutated["spec"]["initContainers"][0]["volumeMounts"]}
    assert DATA_DIR in mounts, f"the injected sidecar mounts nothing at {DATA_DIR}"
    assert not mounts[DATA_DIR].get("readOnly")
    volume = next(v for v in mutated["spec"]["volumes"] if v["name"] == mounts[DATA_DIR]["name"])
    assert volume["emptyDir"] == base_volume["emptyDir"]
    others = [
        c["name"]
        for c in mutated["spec"]["containers"]
        for m in c.get("volumeMounts", [])
        if m["name"] == volume["name"]
    ]
    assert not others, "only the router can read the captured prompts"


# --- reviews that are allowed without a patch ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("req", "message"),
    [
        pytest.param(review(pod()), "not injected: no model-router.io/inject annotation", id="no-annotation"),
        pytest.param(review(pod({})), "not injected: no model-router.io/inject annotation", id="empty-annotations"),
        pytest.param(review(pod({ANNOTATION_INJECT: "false"})),
                     'not injected: opted out (model-router.io/inject: "false")', id="opt-out"),
        pytest.param(review(pod({ANNOTATION_INJECT: "yes"})),
                     "not injected: model-router.io/inject must be \"true\" or \"false\", got 'yes'", id="bad-value"),
        pytest.param(review(pod({**INJECT, ANNOTATION_STATUS: "injected"})), "not injected: already injected",
                     id="already-injected-annotation"),
        pytest.param(review(pod(INJECT, initContainers=[{"name": "model-router", "image": "x"}])),
                     "not injected: already injected", id="already-injected-container"),
        pytest.param(review(pod(INJECT, volumes=[{"name": "model-router-tmp", "emptyDir": {}}])),
                     "not injected: the pod already has volumes named model-router-tmp", id="volume-name-clash"),
        pytest.param(review(pod(INJECT, containers=[{**APP, "ports": [{"containerPort": 9464}]}])),
                     "not injected: the pod already uses port 9464", id="port-clash"),
        pytest.param(review(pod(INJECT, containers=[{**APP, "ports": [{"containerPort": 9466}]}])),
                     "not injected: the pod already uses port 9466", id="health-port-clash"),
        pytest.param(review(pod({**INJECT, ANNOTATION_CONFIG_MAP: "Not_A_Name"})),
                     "not injected: model-router.io/config-map is not a valid ConfigMap name: 'Not_A_Name'",
                     id="bad-config-map-override"),
        pytest.param(review(pod(INJECT), operation="UPDATE"), "not injected: only CREATE is handled", id="update"),
        pytest.param(review(pod(INJECT), kind="Deployment"), "not injected: the object is not a Pod", id="not-a-pod"),
        pytest.param(review(None), "not injected: request.object is missing", id="no-object"),
        pytest.param(review({"spec": {}}), "not injected: object has no metadata", id="no-metadata"),
        pytest.param(review({"metadata": {"annotations": INJECT}}), "not injected: object has no spec", id="no-spec"),
        pytest.param(review({"metadata": {"annotations": ["x"]}, "spec": {}}),
                     "not injected: metadata.annotations is not a mapping", id="annotations-not-a-mapping"),
        pytest.param(review(pod(INJECT, initContainers={"name": "x"})),
                     "not injected: spec.initContainers is not a list", id="init-containers-not-a-list"),
        pytest.param(review({"metadata": {"annotations": INJECT}, "spec": {"containers": []}}),
                     "not injected: spec.containers is empty", id="no-containers"),
        # The API server would refuse these whole once injected (failurePolicy: Ignore does not cover that), or
        # the router's loopback-only ports would be the node's.
        pytest.param(review(pod(INJECT, os={"name": "windows"})),
                     "not injected: a Windows pod (the router's security context is Linux-only)", id="windows"),
        pytest.param(review(pod(INJECT, hostNetwork=True)),
                     "not injected: hostNetwork would put the router's loopback-only ports on the node",
                     id="host-network"),
        pytest.param(review(pod(INJECT, resources={"limits": {"memory": "512Mi"}})),
                     "not injected: pod-level spec.resources would not cover the router's requests",
                     id="pod-level-resources"),
    ],
)  # fmt: skip
def test_mutate_allows_without_patch(req: dict[str, Any], message: str) -> None:
    response = mutate(req, SETTINGS)["response"]
    response.pop("warnings", None)  # test_a_pod_that_asked_and_was_not_injected_gets_a_warning
    assert response == {"uid": req["request"]["uid"], "allowed": True, "status": {"code": 200, "message": message}}


@pytest.mark.parametrize(
    ("req", "warned"),
    [
        pytest.param(review(pod(INJECT, hostNetwork=True)), True, id="asked-not-injected"),
        pytest.param(review(pod({ANNOTATION_INJECT: "True"})), True, id="asked-with-a-bad-value"),
        pytest.param(review(pod()), False, id="not-asked"),
        pytest.param(review(pod({ANNOTATION_INJECT: "false"})), False, id="opted-out"),
        pytest.param(review(pod({**INJECT, ANNOTATION_STATUS: "injected"})), False, id="already-injected"),
        pytest.param(review(pod(INJECT)), False, id="injected"),
        pytest.param(review({"metadata": ["x"], "spec": {}}), False, id="metadata-not-a-mapping"),
    ],
)  # fmt: skip
def test_a_pod_that_asked_and_was_not_injected_gets_a_warning(req: dict[str, Any], warned: bool) -> None:
    """``status.message`` is not read on an allowed answer: a warning is what reaches kubectl and controller logs."""
    response = mutate(req, SETTINGS)["response"]
    want = [f"model-router: {response['status']['message']}"] if warned else None
    assert response.get("warnings") == want


def test_run_as_user_null_leaves_the_uid_to_the_cluster() -> None:
    """OpenShift's restricted SCC assigns a uid from the namespace's range and refuses the pod with another."""
    webhook_cm = next(o for o in kustomize("injector") if o["kind"] == "ConfigMap")
    config = yaml.safe_load(webhook_cm["data"]["webhook.yaml"])
    config["sidecar"]["run_as_user"] = None
    settings = parse_webhook_config(config).sidecar
    mutated = apply(pod(INJECT), patch_of(mutate(review(pod(INJECT)), settings)))
    kubernetes_validate.validate(mutated, K8S_VERSION, strict=True)
    context = mutated["spec"]["initContainers"][0]["securityContext"]
    assert "runAsUser" not in context and "runAsGroup" not in context and context["runAsNonRoot"] is True


@pytest.mark.parametrize(
    ("body", "error"),
    [
        pytest.param([], "body is not a JSON object", id="not-an-object"),
        pytest.param({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "u"}},
                     "expected apiVersion admission.k8s.io/v1", id="v1beta1"),
        pytest.param({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}, "request is missing",
                     id="no-request"),
        pytest.param({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 7}},
                     "request.uid is missing", id="uid-not-a-string"),
    ],
)  # fmt: skip
def test_mutate_rejects_what_it_cannot_answer(body: Any, error: str) -> None:
    with pytest.raises(InvalidReviewError, match=error):
        mutate(body, SETTINGS)


# --- config --------------------------------------------------------------------------------------------------------


def test_config_errors_name_every_field() -> None:
    with pytest.raises(ConfigError) as info:
        parse_webhook_config(
            {
                "listen": "8443",
                "tls_cert_file": "/c",
                "sidecar": {"grpc_port": 0, "image_pull_policy": "Sometimes", "resources": {"requests": {"cpu": "a"}}},
                "extra": 1,
            }
        )
    problems = "\n".join(info.value.problems)
    for field in ("listen", "tls_key_file", "sidecar.image", "sidecar.grpc_port", "sidecar.image_pull_policy",
                  "sidecar.resources.requests.cpu", "sidecar.resources.requests.memory", "extra"):  # fmt: skip
        assert f"{field}: " in problems, (field, problems)


def test_config_rejects_same_ports_and_non_mapping() -> None:
    with pytest.raises(ConfigError, match=r"sidecar\.metrics_port: must differ"):
        parse_webhook_config(
            {
                "listen": "0.0.0.0:8443",
                "tls_cert_file": "c",
                "tls_key_file": "k",
                "sidecar": {"image": "i", "grpc_port": 1, "metrics_port": 1},
            }
        )
    with pytest.raises(ConfigError, match=r"sidecar\.health_port: must differ"):
        parse_webhook_config(
            {
                "listen": "0.0.0.0:8443",
                "tls_cert_file": "c",
                "tls_key_file": "k",
                "sidecar": {"image": "i", "grpc_port": 1, "metrics_port": 2, "health_port": 2},
            }
        )
    with pytest.raises(ConfigError, match="<root>"):
        parse_webhook_config(["not", "a", "mapping"])


NO_HOST = "has no host; write 127.0.0.1:8443, or 0.0.0.0:8443 for every interface"


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        pytest.param(":8443", f"':8443' {NO_HOST}", id="empty-host"),
        pytest.param("8443", f"'8443' {NO_HOST}", id="bare-port"),
        pytest.param("0.0.0.0:70000", "'0.0.0.0:70000': the port must be a number 0..65535", id="port-too-big"),
        pytest.param("0.0.0.0:0", "'0.0.0.0:0': the port must be 1..65535 (the Deployment's containerPort)",
                     id="port-zero"),
        pytest.param("unix:/run/webhook.sock", "expected host:port ([::1]:port for IPv6), got 'unix:/run/webhook.sock'",
                     id="unix"),
        pytest.param("0.0.0.0 :8443", "expected host:port ([::1]:port for IPv6), got '0.0.0.0 :8443'", id="space"),
        pytest.param(None, "Field required", id="missing"),
    ],
)  # fmt: skip
def test_config_listen_is_parsed_like_the_routers(listen: str | None, problem: str) -> None:
    """``listen`` follows the router's rules (extproc.config.parse_listen): a host is required, so every interface
    is asked for explicitly (0.0.0.0:8443, as k8s/injector/webhook.yaml does), and there is no default."""
    data: dict[str, Any] = {"tls_cert_file": "c", "tls_key_file": "k", "sidecar": {"image": "i"}}
    if listen is not None:
        data["listen"] = listen
    with pytest.raises(ConfigError) as info:
        parse_webhook_config(data)
    assert info.value.problems == [f"listen: {problem}"]


@pytest.mark.parametrize("listen", ["0.0.0.0:8443", "127.0.0.1:8443", "[::]:8443", "[::1]:1", "localhost:65535"])
def test_config_listen_accepts(listen: str) -> None:
    data = {"listen": listen, "tls_cert_file": "c", "tls_key_file": "k", "sidecar": {"image": "i"}}
    assert parse_webhook_config(data).listen == listen


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="<file>: cannot read"):
        load_webhook_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sidecar: [unclosed")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_webhook_config(bad)


def test_unloadable_certificate_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "tls.crt").write_text("not a certificate")
    (tmp_path / "tls.key").write_text("not a key")
    cert, key = str(tmp_path / "tls.crt"), str(tmp_path / "tls.key")
    settings = parse_webhook_config(
        {"listen": "127.0.0.1:8443", "tls_cert_file": cert, "tls_key_file": key, "sidecar": {"image": "i"}}
    )
    with pytest.raises(ConfigError, match="cannot load the certificate"):
        build_server(settings)


# --- the real server over HTTPS ------------------------------------------------------------------------------------


def _run_webhook(config: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "extproc", "inject-webhook", "--config", str(config)]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        pytest.param(":{port}", f"':{{port}}' {NO_HOST.replace('8443', '{port}')}", id="empty-host"),
        pytest.param("127.0.0.1:{busy}", "cannot listen on 127.0.0.1:{busy}: address already in use", id="in-use"),
        pytest.param("192.0.2.1:{port}", "cannot listen on 192.0.2.1:{port}: cannot assign requested address",
                     id="not-a-local-address"),
    ],
)  # fmt: skip
def test_webhook_with_a_bad_listen_exits_with_one_line(tmp_path: Path, listen: str, problem: str) -> None:
    """``model-router inject-webhook`` with a listen address it refuses or cannot bind: exit 2 and one line naming
    ``listen``, no traceback, nothing on stdout."""
    cert, key = _self_signed(tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as holder:
        names = {"port": free_port(), "busy": holder.getsockname()[1]}
        listen, problem = listen.format(**names), problem.format(**names)
        config = tmp_path / "webhook.yaml"
        data = {"listen": listen, "tls_cert_file": str(cert), "tls_key_file": str(key), "sidecar": {"image": "i"}}
        config.write_text(yaml.safe_dump(data))
        run = _run_webhook(config)
    assert (run.returncode, run.stdout) == (2, ""), run.stderr
    heading = "cannot start" if problem.startswith("cannot listen on ") else "invalid configuration"
    assert run.stderr == f"model-router: {heading}:\n  listen: {problem}\n"


def test_webhook_server_binds_ipv6(tmp_path: Path) -> None:
    """``[::1]:port`` (accepted by the shared parser) binds an IPv6 socket, not a failed IPv4 one."""
    cert, key = _self_signed(tmp_path)
    port = free_port()
    settings = parse_webhook_config(
        {"listen": f"[::1]:{port}", "tls_cert_file": str(cert), "tls_key_file": str(key), "sidecar": {"image": "i"}}
    )
    with build_server(settings) as server:
        assert server.socket.family == socket.AF_INET6
        assert server.socket.getsockname()[:2] == ("::1", port)


def _self_signed(directory: Path, name_suffix: str = "") -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"model-router-injector.test{name_suffix}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
def webhook(tmp_path: Path) -> Iterator[tuple[int, ssl.SSLContext, Path]]:
    """``model-router inject-webhook`` in a subprocess, on a free port, with a fresh self-signed certificate."""
    with _webhook_process(tmp_path) as (_, port, client):
        yield port, client, tmp_path


@contextlib.contextmanager
def _webhook_process(
    tmp_path: Path, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], int, ssl.SSLContext]]:
    """``model-router inject-webhook`` (environment ``env``) until it has answered /healthz; stopped with SIGTERM."""
    cert, key = _self_signed(tmp_path)
    port = free_port()
    config = tmp_path / "webhook.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": f"127.0.0.1:{port}",
                "tls_cert_file": str(cert),
                "tls_key_file": str(key),
                "sidecar": {"image": SETTINGS.image},
            }
        )
    )
    client = ssl.create_default_context(cafile=str(cert))
    log = tmp_path / "webhook.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "extproc", "inject-webhook", "--config", str(config)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"webhook exited {proc.returncode}:\n{log.read_text()}"
            try:
                status, _ = _request(port, client, "GET", "/healthz")
                if status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"webhook not ready:\n{log.read_text()}"
            time.sleep(0.1)
        yield proc, port, client
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=15)


def _request(
    port: int, context: ssl.SSLContext, method: str, path: str, body: bytes | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_webhook_server_over_https(webhook: tuple[int, ssl.SSLContext, Path]) -> None:
    """The real server (TLS verified against the test's own CA) answers an AdmissionReview with the patch."""
    port, client, _ = webhook
    obj = pod(INJECT, initContainers=[EXISTING_INIT])
    status, body = _request(port, client, "POST", "/mutate", json.dumps(review(obj)).encode())
    assert status == 200
    answer = json.loads(body)
    assert answer == mutate(review(obj), SETTINGS)
    assert [c["name"] for c in apply(obj, patch_of(answer))["spec"]["initContainers"]] == ["model-router", "setup"]

    status, body = _request(port, client, "POST", "/mutate", b"{not json")
    assert status == 400 and b"not an AdmissionReview v1" in body
    status, body = _request(port, client, "POST", "/mutate", json.dumps({"kind": "AdmissionReview"}).encode())
    assert status == 400 and b"expected apiVersion" in body
    status, body = _request(port, client, "POST", "/mutate", b"[" * 100_000)
    assert status == 400, "deep nesting is rejected, not a crash"
    status, _ = _request(port, client, "POST", "/other", b"{}")
    assert status == 404

    with pytest.raises(ssl.SSLCertVerificationError):
        _request(port, ssl.create_default_context(), "GET", "/healthz")


def test_webhook_logs_one_json_object_per_line(webhook: tuple[int, ssl.SSLContext, Path]) -> None:
    """The webhook logs like the router (extproc.logs): each line on stderr is one JSON object, even when what it
    logs holds quotes (``inject: "false"``), backslashes and newlines (here from the request's namespace and uid)."""
    port, client, directory = webhook
    namespace, uid = 'gw"\\ns\nforged"}', 'uid-"1"\\2\n3'
    for wanted in ({ANNOTATION_INJECT: "false"}, {ANNOTATION_INJECT: 'say "yes"\\\n'}):
        body = review(pod(wanted))
        body["request"].update(namespace=namespace, uid=uid)
        assert _request(port, client, "POST", "/mutate", json.dumps(body).encode())[0] == 200
    ready = "model-router inject-webhook ready on"  # the one line on stdout, merged into the same file here
    lines = [line for line in (directory / "webhook.log").read_text().splitlines() if not line.startswith(ready)]
    records = [json.loads(line) for line in lines]
    assert all(isinstance(r, dict) and {"ts", "level", "logger", "msg"} <= set(r) for r in records), lines
    decisions = [r["msg"] for r in records if r["logger"] == "model_router.webhook" and uid in r["msg"]]
    assert decisions == [
        f'{namespace} uid={uid}: not injected: opted out ({ANNOTATION_INJECT}: "false")',
        f'{namespace} uid={uid}: not injected: {ANNOTATION_INJECT} must be "true" or "false", got '
        + repr('say "yes"\\\n'),
    ]


def test_webhook_server_picks_up_a_renewed_certificate(webhook: tuple[int, ssl.SSLContext, Path]) -> None:
    """cert-manager renews the Secret in place: new connections get the new certificate without a restart."""
    port, old_client, directory = webhook
    renewed = directory / "renewed"
    renewed.mkdir()
    new_cert, new_key = _self_signed(renewed, name_suffix=".renewed")
    (directory / "tls.key").write_bytes(new_key.read_bytes())
    (directory / "tls.crt").write_bytes(new_cert.read_bytes())
    new_client = ssl.create_default_context(cafile=str(new_cert))
    assert _request(port, new_client, "GET", "/healthz")[0] == 200
    with pytest.raises(ssl.SSLCertVerificationError):
        _request(port, old_client, "GET", "/healthz")


def test_a_certificate_without_its_key_keeps_the_old_pair(webhook: tuple[int, ssl.SSLContext, Path]) -> None:
    """A certificate file replaced before its key (a non-atomic update): the pair does not load, and the old one
    must go on serving (loaded into the live context, the new certificate replaced the old before OpenSSL found the
    mismatch, and every handshake failed while the log said the old pair was kept)."""
    port, client, directory = webhook
    other = directory / "other"
    other.mkdir()
    new_cert, _ = _self_signed(other, name_suffix=".other")
    (directory / "tls.crt").write_bytes(new_cert.read_bytes())
    assert _request(port, client, "GET", "/healthz")[0] == 200


# --- what a client can make the server hold ------------------------------------------------------------------------
# The port is open to every source: one review must not cost more than the Deployment's memory limit, nor many at
# once. The reviewer's finding: an 8 MiB ``[{},{},...]`` peaked at 257 MB and each concurrent one added as much.

Serve = Callable[..., tuple[Any, int, ssl.SSLContext]]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """``serve(**bounds)``: ``build_server`` with those bounds, serving in a thread of this process; returns the
    server, its port and a client context that trusts it. Every server is stopped at the end of the test."""
    cert, key = _self_signed(tmp_path)
    running: list[tuple[Any, threading.Thread]] = []

    def start(**bounds: Any) -> tuple[Any, int, ssl.SSLContext]:
        port = free_port()
        listen = f"127.0.0.1:{port}"
        data = {"listen": listen, "tls_cert_file": str(cert), "tls_key_file": str(key), "sidecar": {"image": "i"}}
        server = build_server(parse_webhook_config(data), **bounds)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        running.append((server, thread))
        return server, port, ssl.create_default_context(cafile=str(cert))

    yield start
    for server, thread in running:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


REVIEW = json.dumps(review(pod(INJECT))).encode()


def test_a_body_over_3_mib_is_refused_unread(serve: Serve) -> None:
    """The API server reads no write body over 3 MiB and etcd stores no pod over 1.5 MiB: a bigger review is not one
    it sends, and is refused from its Content-Length alone (the body is never sent here)."""
    _, port, client = serve()
    conn = http.client.HTTPSConnection("localhost", port, context=client, timeout=10)
    try:
        conn.putrequest("POST", "/mutate")
        conn.putheader("Content-Length", str(3 * 1024 * 1024 + 1))
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 413
        assert json.loads(response.read()) == {"error": f"body must be 1..{3 * 1024 * 1024} bytes"}
    finally:
        conn.close()


def test_a_body_with_too_many_json_containers_is_refused_before_parsing(serve: Serve) -> None:
    """The reviewer's ``[{},{},...]``, cut to 100,001 objects (200 kB): refused with 413 and a message, unparsed."""
    _, port, client = serve()
    status, body = _request(port, client, "POST", "/mutate", json.dumps(review([{}] * 100_001)).encode())
    assert status == 413
    assert json.loads(body) == {"error": "body has more than 100000 JSON arrays and objects"}


def test_pods_near_the_limits_are_still_injected(serve: Serve) -> None:
    """The limits leave room for real pods: one with 50,000 env vars, and one of almost 3 MiB."""
    _, port, client = serve()
    env = [{"name": f"VAR_{i}", "value": "x"} for i in range(5_000)]
    many = pod(INJECT, containers=[{**APP, "name": f"app-{i}", "env": env} for i in range(10)])
    big = pod({**INJECT, "example.com/blob": "x" * (3 * 1024 * 1024 - 2_000)})
    for obj in (many, big):
        status, body = _request(port, client, "POST", "/mutate", json.dumps(review(obj)).encode())
        assert status == 200, body[:200]
        assert json.loads(body)["response"]["status"]["message"].startswith("injected")


class _SpiedTurns:
    """The server's semaphore of review turns, telling the test each time a handler asks for one."""

    def __init__(self, turns: threading.BoundedSemaphore) -> None:
        self.turns = turns
        self.asked = threading.Semaphore(0)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        self.asked.release()
        return self.turns.acquire(blocking, timeout)

    def release(self) -> None:
        self.turns.release()


@contextlib.contextmanager
def _reviews_held_in_mutate(monkeypatch: pytest.MonkeyPatch, port: int, client: ssl.SSLContext) -> Iterator[None]:
    """``MAX_REQUESTS`` reviews in progress, each held inside ``mutate`` (so holding its turn) until the block ends;
    later calls to ``mutate`` run at once. Each held review is then answered 200."""
    entered, release = threading.Semaphore(0), threading.Event()
    held, lock = [0], threading.Lock()
    real_mutate = webhook_module.mutate

    def holding_mutate(body: Any, settings: InjectionSettings) -> dict[str, Any]:
        with lock:
            held[0] += 1
            hold = held[0] <= MAX_REQUESTS
        if hold:
            entered.release()
            release.wait(timeout=30)
        return real_mutate(body, settings)

    monkeypatch.setattr(webhook_module, "mutate", holding_mutate)
    statuses: list[int] = []
    threads = [
        threading.Thread(target=lambda: statuses.append(_request(port, client, "POST", "/mutate", REVIEW)[0]))
        for _ in range(MAX_REQUESTS)
    ]
    for thread in threads:
        thread.start()
    try:
        for _ in range(MAX_REQUESTS):
            assert entered.acquire(timeout=30), "the held reviews did not reach mutate"
        yield
    finally:
        release.set()
        for thread in threads:
            thread.join(timeout=30)
    assert statuses == [200] * MAX_REQUESTS


def test_reviews_beyond_max_requests_get_503(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    """At most MAX_REQUESTS reviews are read and parsed at once: with every turn taken (and no time to wait for one,
    ``queue_seconds=0``), the next review is answered 503 without being read; a turn given back serves again."""
    _, port, client = serve(queue_seconds=0)
    with _reviews_held_in_mutate(monkeypatch, port, client):
        status, body = _request(port, client, "POST", "/mutate", REVIEW)
        assert status == 503
        assert json.loads(body) == {"error": f"busy: {MAX_REQUESTS} reviews in progress"}
    assert _request(port, client, "POST", "/mutate", REVIEW)[0] == 200


def test_a_review_waits_for_a_turn(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    """A review that finds every turn taken waits (up to ``queue_seconds``) and is answered once one is free."""
    server, port, client = serve(queue_seconds=30)
    spy = _SpiedTurns(server.requests)
    server.requests = spy
    statuses: list[int] = []
    waiter = threading.Thread(target=lambda: statuses.append(_request(port, client, "POST", "/mutate", REVIEW)[0]))
    with _reviews_held_in_mutate(monkeypatch, port, client):
        for _ in range(MAX_REQUESTS):
            assert spy.asked.acquire(timeout=30)
        waiter.start()
        assert spy.asked.acquire(timeout=30), "the waiting review never asked for a turn"
    waiter.join(timeout=30)
    assert statuses == [200]


def test_every_answer_closes_its_connection(serve: Serve) -> None:
    """The API server reuses idle connections (90 s) and never retries a POST: a review on a connection the webhook
    was ending at its 10 s deadline got EOF, and the pod was created without the router. Each answer now says
    ``Connection: close`` and ends its connection, so the client opens a fresh one for the next review."""
    _, port, client = serve()
    conn = http.client.HTTPSConnection("localhost", port, context=client, timeout=10)
    try:
        for path, body in (("/mutate", REVIEW), ("/nope", b"{}")):  # an error answer too (the body was left unread)
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            assert response.getheader("Connection") == "close"
            assert response.will_close
            assert conn.sock is None, "the client saw the close and will reconnect"
    finally:
        conn.close()


def test_connections_beyond_max_connections_are_closed(serve: Serve) -> None:
    """Past ``max_connections`` open connections, a new one is closed at once (no thread); the open ones still work."""
    _, port, client = serve(max_connections=2)
    held = [http.client.HTTPSConnection("localhost", port, context=client, timeout=10) for _ in range(2)]
    try:
        for conn in held:
            conn.connect()  # the TLS handshake is done by the connection's own thread: it has its slot
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, pytest.raises(OSError):
            client.wrap_socket(raw, server_hostname="localhost")
        held[0].request("GET", "/healthz")
        assert held[0].getresponse().read() == b"ok\n"
    finally:
        for conn in held:
            conn.close()


def test_a_body_that_trickles_in_is_cut_off(serve: Serve) -> None:
    """A body must arrive within ``body_seconds`` in all: a slow sender holds a review turn no longer (408), and
    the turn is given back."""
    _, port, client = serve(max_requests=1, body_seconds=0.2)
    head = b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        client.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(head + b'{"apiVersion"')
        with tls.makefile("rb") as response:
            answer = response.read()  # until the server closes the connection
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert answer.endswith(b'{"error": "the body did not arrive within 0.2 s"}')
    assert _request(port, client, "POST", "/mutate", REVIEW)[0] == 200


def _costly_review() -> bytes:
    """A review built to cost the most memory that the limits let through: just under 3 MiB and 100,000 containers,
    one non-BMP character (so the decoded text is 4 bytes a character) and the rest 2-character strings."""
    target = 3 * 1024 * 1024 - 4096
    head: list[Any] = ["\U0001f600", *({"a": 0} for _ in range(99_000))]
    fixed = len(json.dumps(review(head), ensure_ascii=False, separators=(",", ":")).encode())
    items = head + ["ab"] * ((target - fixed) // 5)
    body = json.dumps(review(items), ensure_ascii=False, separators=(",", ":")).encode()
    assert target - 10 < len(body) <= target
    return body


def _peak_rss_bytes(pid: int) -> int:
    (line,) = [line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM:")]
    kib, unit = line.split()[1:]
    assert unit == "kB"
    return int(kib) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak RSS (VmHWM) from /proc")
def test_costly_reviews_stay_inside_the_memory_limit(tmp_path: Path) -> None:
    """The real webhook, with the injector Deployment's environment, under rounds of 8 concurrent reviews that each
    cost the most the limits allow: its peak RSS stays below the Deployment's memory limit, with room to spare."""
    (container,) = find(kustomize("injector"), "Deployment")["spec"]["template"]["spec"]["containers"]
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Mi")
    env = {**os.environ, **{e["name"]: e["value"] for e in container.get("env", [])}}
    body = _costly_review()
    statuses: list[int] = []
    with _webhook_process(tmp_path, env) as (proc, port, client):

        def post() -> None:
            statuses.append(_request(port, client, "POST", "/mutate", body)[0])

        for _ in range(2):
            threads = [threading.Thread(target=post) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
        peak = _peak_rss_bytes(proc.pid)
    assert len(statuses) == 16 and set(statuses) <= {200, 503}, statuses  # 503: no turn free within QUEUE_SECONDS
    assert 200 in statuses
    assert peak < 0.8 * int(limit.removesuffix("Mi")) * 1024 * 1024, f"peak RSS {peak / 2**20:.0f} MiB, limit {limit}"


@pytest.mark.parametrize("key", [".", "..", "..data"])
def test_config_key_that_no_volume_item_can_have_is_refused(key: str) -> None:
    """The API server refuses a volume item path "." or starting with "..": with it, every injected pod would be."""
    data = {"listen": "0.0.0.0:8443", "tls_cert_file": "c", "tls_key_file": "k", "sidecar": {"image": "i"}}
    data["sidecar"]["config_key"] = key  # type: ignore[index]
    with pytest.raises(ConfigError, match=r"sidecar\.config_key: .* cannot be a file name in the config volume"):
        parse_webhook_config(data)
