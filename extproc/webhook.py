"""Kubernetes mutating admission webhook that injects the router as a native sidecar into annotated pods.

A pod annotated ``model-router.io/inject: "true"`` gets the ``model-router`` container as an init container with
``restartPolicy: Always`` (a native sidecar: started before the pod's containers, stopped after them), its config
and scratch volumes, and the annotation ``model-router.io/status: injected``. The pod's Envoy then reaches the
router on ``127.0.0.1:<grpc_port>``, the only address it listens on for gRPC; the kubelet probes ``GET /healthz``
on ``<health_port>``.

``mutate`` is a pure function from an AdmissionReview (``admission.k8s.io/v1``) to its answer. It always allows
the pod: injection is an optimisation, so a pod the webhook will not or cannot change is admitted unchanged with a
``status.message`` that says why (already injected, opted out, not a valid pod...). Only a body that is not an
AdmissionReview with a ``request.uid`` cannot be answered; ``mutate`` raises ``InvalidReviewError`` and the server
returns HTTP 400, after which the API server applies the webhook's ``failurePolicy`` (``Ignore`` in
``k8s/injector/``).

``run_webhook`` serves ``POST /mutate`` and ``GET /healthz`` over HTTPS (stdlib ``http.server`` + ``ssl``) until
SIGTERM. The certificate files are reloaded when they change on disk (cert-manager rotates them in place).

The port is open to every source (the API server's address differs per cluster), so what one request or many can
cost is bounded before anything is parsed: a body over ``MAX_BODY_BYTES`` (413) or with more than
``MAX_JSON_CONTAINERS`` arrays and objects (413, counted without parsing), at most ``MAX_REQUESTS`` reviews read and
parsed at once (the others wait up to ``QUEUE_SECONDS`` for a turn, then get 503), a body that takes longer than
``BODY_SECONDS`` to arrive (408), and at most ``MAX_CONNECTIONS`` open connections (the next ones are closed at once,
as in :mod:`extproc.wsgi_server`). To each refusal, an HTTP error or a closed connection, the API server applies
the ``failurePolicy``. Together they keep the worst case inside the Deployment's memory limit (``k8s/injector/``;
``tests/unit/k8s/test_webhook.py`` measures it).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import signal
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from extproc.config import load_yaml, parse_listen, validate_model
from extproc.errors import CANNOT_START, ConfigError
from extproc.logs import configure_logging
from extproc.wsgi_server import BoundedConnections, ListenError

__all__ = [
    "ANNOTATION_CONFIG_MAP",
    "ANNOTATION_INJECT",
    "ANNOTATION_STATUS",
    "InjectionSettings",
    "InvalidReviewError",
    "WebhookSettings",
    "build_server",
    "load_webhook_config",
    "mutate",
    "parse_webhook_config",
    "run_webhook",
]

_log = logging.getLogger("model_router.webhook")

ANNOTATION_INJECT = "model-router.io/inject"
"""``"true"`` asks for injection, ``"false"`` opts out; anything else is left alone."""
ANNOTATION_STATUS = "model-router.io/status"
"""Set to ``injected`` on every pod the webhook changed; its presence means "never inject again"."""
ANNOTATION_CONFIG_MAP = "model-router.io/config-map"
"""Optional per-pod override of ``sidecar.config_map``."""

CONTAINER_NAME = "model-router"
CONFIG_VOLUME = "model-router-config"
TMP_VOLUME = "model-router-tmp"
DATA_VOLUME = "model-router-data"
CONFIG_MOUNT = "/etc/model-router"
DATA_MOUNT = "/var/lib/model-router"
"""capture.path and feedback.path in k8s/base/router-config/model-router.yaml live here."""
NO_TOKEN_VOLUME = "model-router-no-token"
TOKEN_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
"""The API server re-runs its ServiceAccount plugin after a webhook changed the pod, and it mounts the pod's token into
every container with nothing at this path: the injected router (which parses untrusted bodies) would hold the
gateway's token (an Istio gateway's can read the namespace's Secrets). An empty volume there keeps it out."""
MAX_BODY_BYTES = 3 * 1024 * 1024
"""An AdmissionReview for a CREATE carries one object (``oldObject`` is null). etcd stores no object over 1.5 MiB,
and the API server reads no write body over 3 MiB (``--max-request-body-bytes``, twice etcd's limit to allow for
JSON), so a pod it can create fits here with its review's few hundred bytes of envelope."""
MAX_JSON_CONTAINERS = 100_000
"""Arrays and objects a body may hold, counted before parsing. A real pod has hundreds, a few thousand with long env
lists (each container, port, env var, mount and volume is one); ``[{},{},...]`` in 3 MiB holds a million, which
``json.loads`` would turn into ~80 MiB of objects."""
MAX_REQUESTS = 2
"""Reviews read and parsed at once: each can cost ~70 MiB at worst (3 MiB of short strings and small objects), and
with the GIL more would not answer faster. A real review takes about a millisecond; a burst waits its turn."""
QUEUE_SECONDS = 2.0
"""How long a review waits for a turn before 503; with ``BODY_SECONDS``, below the webhook's timeoutSeconds (5)."""
BODY_SECONDS = 2.0
"""The whole body must arrive within this (the API server sends it at once), so a slow sender holds a turn no
longer; the handler's ``timeout`` bounds each read, not the total."""
CONNECTION_SECONDS = 10.0
"""How long a connection may go without an answer: a client trickling its headers holds its slot no longer."""
MAX_CONNECTIONS = 128
"""Open connections (a thread each, ~64 KiB); past it, new ones are closed at once. The API server opens one per
concurrent review and keeps some alive; idle ones close after the handler's ``timeout``."""

_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$"
_ADMISSION_API = "admission.k8s.io/v1"

Port = Annotated[int, Field(strict=True, ge=1, le=65535)]
Quantity = Annotated[str, Field(pattern=_QUANTITY)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ResourceList(_Strict):
    """CPU and memory quantities, as Kubernetes writes them (``250m``, ``256Mi``)."""

    cpu: Quantity
    memory: Quantity


class Resources(_Strict):
    """The sidecar's resource requests and limits."""

    requests: ResourceList = ResourceList(cpu="250m", memory="256Mi")
    limits: ResourceList | None = ResourceList(cpu="1", memory="512Mi")


def _check_item_path(value: str) -> str:
    """The API server refuses a volume item path ``.``, ``..`` or starting with ``..``: every injected pod would be."""
    if value == "." or value.startswith(".."):
        raise ValueError(f"{value!r} cannot be a file name in the config volume")
    return value


class InjectionSettings(_Strict):
    """What the webhook injects: the router container and the volumes it needs."""

    image: Annotated[str, Field(min_length=1, max_length=500, pattern=r"^\S+$")]
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    config_map: Annotated[str, Field(min_length=1, max_length=253, pattern=_DNS1123.pattern)] = "model-router-config"
    """ConfigMap in the pod's namespace with the router config under ``config_key``."""
    config_key: Annotated[
        str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$"), AfterValidator(_check_item_path)
    ] = "model-router.yaml"
    """The key and file name."""
    grpc_port: Port = 50051
    """The port the pod's Envoy calls on ``127.0.0.1``: the sidecar runs ``serve --listen 127.0.0.1:<grpc_port>``
    whatever ``server.listen`` says, so ext_proc, the Decide API and reflection are never reachable from other pods."""
    metrics_port: Port = 9464
    """Must match ``telemetry.metrics_listen`` in the router config."""
    health_port: Port = 9466
    """``serve --health-listen [::]:<health_port>``: the probes' ``GET /healthz`` (the gRPC port is loopback)."""
    run_as_user: Annotated[int, Field(strict=True, ge=1, le=2_147_483_647)] | None = 10001
    """The sidecar's uid and gid; null leaves them to the cluster (OpenShift's restricted SCC assigns one from the
    namespace's range and refuses another), ``runAsNonRoot`` stays (the image's user is numeric)."""
    resources: Resources = Resources()
    data_size_limit: Quantity = "384Mi"
    """sizeLimit of the emptyDir at ``/var/lib/model-router`` (capture and feedback files): at least
    ``capture.max_bytes + feedback.max_bytes`` of the router config, plus headroom."""

    @model_validator(mode="after")
    def _distinct_ports(self) -> Self:
        if self.grpc_port == self.metrics_port:
            raise ValueError("sidecar.metrics_port: must differ from sidecar.grpc_port")
        if self.health_port in (self.grpc_port, self.metrics_port):
            raise ValueError("sidecar.health_port: must differ from sidecar.grpc_port and sidecar.metrics_port")
        return self


def _check_listen(value: str) -> str:
    """The router's own listen-address rules (:func:`extproc.config.parse_listen`), and a fixed port."""
    _, port = parse_listen(value)
    if port == 0:
        raise ValueError(f"{value!r}: the port must be 1..65535 (the Deployment's containerPort)")
    return value


class WebhookSettings(_Strict):
    """The webhook's config file."""

    listen: Annotated[str, AfterValidator(_check_listen)]
    """``host:port`` of the HTTPS server (``[::]:port`` for IPv6). Required, and a host is required: the API server
    reaches the webhook on the pod IP, so ``k8s/injector/webhook.yaml`` asks for every interface, ``0.0.0.0:8443``."""
    tls_cert_file: Path
    tls_key_file: Path
    sidecar: InjectionSettings
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class InvalidReviewError(ValueError):
    """The request body is not an AdmissionReview that can be answered (no ``request.uid``)."""


def parse_webhook_config(data: object) -> WebhookSettings:
    """Validate loaded YAML; raise ``ConfigError`` listing every problem with its field path."""
    return validate_model(WebhookSettings, data)


def load_webhook_config(path: Path) -> WebhookSettings:
    """Read and validate the webhook's YAML config file."""
    return parse_webhook_config(load_yaml(path))


# ---------------------------------------------------------------------------------------------------------------
# The pure part: AdmissionReview in, AdmissionReview out.


def _sidecar(settings: InjectionSettings) -> dict[str, Any]:
    resources: dict[str, Any] = {"requests": settings.resources.requests.model_dump()}
    if settings.resources.limits is not None:
        resources["limits"] = settings.resources.limits.model_dump()
    probe = {"path": "/healthz", "port": settings.health_port}
    return {
        "name": CONTAINER_NAME,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "restartPolicy": "Always",
        "command": ["model-router"],
        "args": [
            "serve",
            "--config",
            f"{CONFIG_MOUNT}/{settings.config_key}",
            "--listen",
            f"127.0.0.1:{settings.grpc_port}",
            "--health-listen",
            f"[::]:{settings.health_port}",  # both families: the kubelet probes the pod IP, IPv6 on IPv6 clusters
            "--wait-for-config",
        ],
        "ports": [
            {"name": "router-metrics", "containerPort": settings.metrics_port, "protocol": "TCP"},
            {"name": "router-health", "containerPort": settings.health_port, "protocol": "TCP"},
        ],
        # As in k8s/base/deployment.yaml: the startup probe holds back the pod's containers until the model is
        # loaded, or until the router reports that it waits for a valid config (then Envoy starts and fails open:
        # a config error must not stop new gateway pods); no readinessProbe, since a native sidecar's readiness is
        # the pod's; a lenient liveness probe, so that load alone does not restart the router.
        "startupProbe": {"httpGet": probe, "periodSeconds": 2, "failureThreshold": 30},
        "livenessProbe": {"httpGet": probe, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 6},
        "resources": resources,
        "securityContext": {
            **({"runAsUser": settings.run_as_user, "runAsGroup": settings.run_as_user} if settings.run_as_user else {}),
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_MOUNT, "readOnly": True},
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
            {"name": DATA_VOLUME, "mountPath": DATA_MOUNT},
            {"name": NO_TOKEN_VOLUME, "mountPath": TOKEN_MOUNT, "readOnly": True},
        ],
    }


def _volumes(config_map: str, settings: InjectionSettings) -> list[dict[str, Any]]:
    return [
        {
            "name": CONFIG_VOLUME,
            # optional: a missing ConfigMap must not keep the pod (and its Envoy) from starting; the router waits
            "configMap": {
                "name": config_map,
                "items": [{"key": settings.config_key, "path": settings.config_key}],
                "optional": True,
            },
        },
        {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}},
        {"name": DATA_VOLUME, "emptyDir": {"sizeLimit": settings.data_size_limit}},
        {"name": NO_TOKEN_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Ki"}},
    ]


def _escape(key: str) -> str:
    """A JSON Pointer reference token (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def _names(items: object) -> set[str]:
    if not isinstance(items, list):
        return set()
    return {str(item.get("name")) for item in items if isinstance(item, dict)}


def _container_ports(containers: list[Any]) -> set[int]:
    return {
        port["containerPort"]
        for c in containers
        if isinstance(c, dict) and isinstance(c.get("ports"), list)
        for port in c["ports"]
        if isinstance(port, dict) and isinstance(port.get("containerPort"), int)
    }


def _list_field(spec: Mapping[str, Any], key: str) -> list[Any] | None:
    """``spec[key]`` if it is a list, ``None`` if absent or null; ``ValueError`` otherwise."""
    value = spec.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError(f"spec.{key} is not a list")
    return value


def _plan(pod: Mapping[str, Any], settings: InjectionSettings) -> tuple[list[dict[str, Any]], str]:
    """The JSON patch for ``pod`` (empty if nothing to do) and a message saying what was decided."""
    metadata = pod.get("metadata")
    if not isinstance(metadata, dict):
        return [], "not injected: object has no metadata"
    annotations = metadata.get("annotations") or {}
    if not isinstance(annotations, dict):
        return [], "not injected: metadata.annotations is not a mapping"
    wanted = annotations.get(ANNOTATION_INJECT)
    if wanted == "false":
        return [], f'not injected: opted out ({ANNOTATION_INJECT}: "false")'
    if wanted != "true":
        if wanted is None:
            return [], f"not injected: no {ANNOTATION_INJECT} annotation"
        return [], f'not injected: {ANNOTATION_INJECT} must be "true" or "false", got {wanted!r}'
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return [], "not injected: object has no spec"
    try:
        containers = _list_field(spec, "containers")
        init_containers = _list_field(spec, "initContainers")
        volumes = _list_field(spec, "volumes")
    except ValueError as exc:
        return [], f"not injected: {exc}"
    if not containers:
        return [], "not injected: spec.containers is empty"
    # Pods the API server would refuse whole once injected (not covered by failurePolicy: Ignore), or that would
    # put the router's loopback ports on the node: left as they are, and said (response.warnings).
    if isinstance(spec.get("os"), dict) and spec["os"].get("name") == "windows":
        return [], "not injected: a Windows pod (the router's security context is Linux-only)"
    if spec.get("hostNetwork") is True:
        return [], "not injected: hostNetwork would put the router's loopback-only ports on the node"
    if spec.get("resources") is not None:
        return [], "not injected: pod-level spec.resources would not cover the router's requests"
    if ANNOTATION_STATUS in annotations or CONTAINER_NAME in _names(containers) | _names(init_containers):
        return [], "not injected: already injected"
    clashes = sorted(_names(volumes) & {CONFIG_VOLUME, TMP_VOLUME, DATA_VOLUME, NO_TOKEN_VOLUME})
    if clashes:
        return [], f"not injected: the pod already has volumes named {', '.join(clashes)}"
    ours = {settings.grpc_port, settings.metrics_port, settings.health_port}
    taken = sorted(_container_ports(containers + (init_containers or [])) & ours)
    if taken:
        return [], f"not injected: the pod already uses port {', '.join(map(str, taken))}"
    config_map = annotations.get(ANNOTATION_CONFIG_MAP, settings.config_map)
    if not isinstance(config_map, str) or len(config_map) > 253 or not _DNS1123.match(config_map):
        return [], f"not injected: {ANNOTATION_CONFIG_MAP} is not a valid ConfigMap name: {config_map!r}"

    patch: list[dict[str, Any]] = []
    sidecar = _sidecar(settings)
    if init_containers is None:
        patch.append({"op": "add", "path": "/spec/initContainers", "value": [sidecar]})
    else:
        # First, so the router is up before any later init container and before every app container.
        patch.append({"op": "add", "path": "/spec/initContainers/0", "value": sidecar})
    new_volumes = _volumes(config_map, settings)
    if volumes is None:
        patch.append({"op": "add", "path": "/spec/volumes", "value": new_volumes})
    else:
        patch.extend({"op": "add", "path": "/spec/volumes/-", "value": v} for v in new_volumes)
    patch.append({"op": "add", "path": f"/metadata/annotations/{_escape(ANNOTATION_STATUS)}", "value": "injected"})
    return patch, f"injected {CONTAINER_NAME} (config map {config_map})"


def _uid_of(review: object) -> str:
    if not isinstance(review, dict):
        raise InvalidReviewError("body is not a JSON object")
    if review.get("apiVersion") != _ADMISSION_API or review.get("kind") != "AdmissionReview":
        raise InvalidReviewError(f"expected apiVersion {_ADMISSION_API} and kind AdmissionReview")
    request = review.get("request")
    if not isinstance(request, dict):
        raise InvalidReviewError("request is missing or not an object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise InvalidReviewError("request.uid is missing or not a string")
    return uid


def mutate(review: Mapping[str, Any], settings: InjectionSettings) -> dict[str, Any]:
    """Answer one AdmissionReview v1: always allowed; a base64 JSONPatch when the pod asks for the sidecar.

    Raises ``InvalidReviewError`` if ``review`` is not an AdmissionReview v1 with a ``request.uid``.
    """
    uid = _uid_of(review)
    request = review["request"]
    kind = request.get("kind")
    pod = request.get("object")
    patch: list[dict[str, Any]] = []
    if not isinstance(kind, dict) or kind.get("group", "") != "" or kind.get("kind") != "Pod":
        message = "not injected: the object is not a Pod"
    elif request.get("operation") != "CREATE":
        message = "not injected: only CREATE is handled"
    elif not isinstance(pod, dict):
        message = "not injected: request.object is missing"
    else:
        patch, message = _plan(pod, settings)
    response: dict[str, Any] = {"uid": uid, "allowed": True, "status": {"code": 200, "message": message}}
    metadata = pod.get("metadata") if isinstance(pod, dict) else None
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    asked = isinstance(annotations, dict) and ANNOTATION_INJECT in annotations
    if asked and not patch and not message.startswith(("not injected: opted out", "not injected: already")):
        # status.message is not read on an allowed answer: a warning reaches kubectl and the controllers' logs
        response["warnings"] = [f"model-router: {message}"]
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch, separators=(",", ":")).encode()).decode("ascii")
    return {"apiVersion": _ADMISSION_API, "kind": "AdmissionReview", "response": response}


# ---------------------------------------------------------------------------------------------------------------
# The HTTPS server.


class _ReloadingTLS:
    """An SSL context whose certificate is reloaded when the cert or key file changes (checked per connection)."""

    def __init__(self, cert: Path, key: Path) -> None:
        self._cert = cert
        self._key = key
        self._lock = threading.Lock()
        self._stamp = self._mtimes()
        self.context = self._load()

    def _mtimes(self) -> tuple[int, int]:
        return os.stat(self._cert).st_mtime_ns, os.stat(self._key).st_mtime_ns

    def _load(self) -> ssl.SSLContext:
        """A new context: loading into the live one would replace its certificate before OpenSSL checks the key
        (a mismatched pair then broke every handshake while the log said the old one was kept)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self._cert, self._key)
        return context

    def refresh(self) -> None:
        """Reload the certificate if its files changed; keep the old one if the new pair does not load."""
        with self._lock:
            try:
                stamp = self._mtimes()
                if stamp != self._stamp:
                    self.context = self._load()
                    self._stamp = stamp
                    _log.info("reloaded TLS certificate %s", self._cert)
            except (OSError, ssl.SSLError) as exc:
                _log.warning("keeping the current TLS certificate: %s", exc)


class _Server(BoundedConnections, HTTPServer):
    def __init__(
        self,
        address: tuple[str, int],
        settings: WebhookSettings,
        tls: _ReloadingTLS,
        max_connections: int,
        max_requests: int,
        queue_seconds: float,
        body_seconds: float,
    ) -> None:
        self.settings = settings
        self.tls = tls
        self.max_connections = max_connections
        self.bound(max_connections, CONNECTION_SECONDS)
        self.max_requests = max_requests
        self.requests = threading.BoundedSemaphore(max_requests)
        self.queue_seconds = queue_seconds
        self.body_seconds = body_seconds
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        self.tls.refresh()
        # The handshake runs in the handler's thread (_Handler.handle), so a slow client blocks no one.
        return self.tls.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def refused(self, client_address: Any) -> None:
        _log.warning("closed a connection from %s: %d are open", client_address[0], self.max_connections)

    def handle_error(self, request: Any, client_address: Any) -> None:
        _log.warning("connection from %s failed", client_address[0], exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 10

    def handle(self) -> None:
        try:
            self.request.do_handshake()  # here, in the connection's thread, under the handler's socket timeout
        except (OSError, ssl.SSLError) as exc:
            _log.debug("TLS handshake with %s failed: %s", self.address_string(), exc)
            return
        super().handle()

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str = "application/json") -> None:
        # One answer per connection: the API server keeps idle connections for 90 s and does not retry a POST, so a
        # review sent on a kept-alive connection the webhook was ending (its 10 s deadline) failed, and the pod was
        # created without the router (failurePolicy: Ignore). A TLS handshake per pod creation is the price.
        self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: HTTPStatus, message: str) -> None:
        _log.warning("rejected request: %s", message)
        self._send(status, json.dumps({"error": message}).encode())

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(HTTPStatus.OK, b"ok\n", "text/plain")
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no such path {self.path}")

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/mutate":
            self._error(HTTPStatus.NOT_FOUND, f"no such path {self.path}")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._error(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
            return
        if not 0 < length <= MAX_BODY_BYTES:
            self.close_connection = True
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body must be 1..{MAX_BODY_BYTES} bytes")
            return
        # A turn before the body is read: at most max_requests bodies are in memory, raw or parsed.
        if not self.server.requests.acquire(timeout=self.server.queue_seconds):
            self.close_connection = True  # the body is still unread
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, f"busy: {self.server.max_requests} reviews in progress")
            return
        try:
            self._review(length)
        finally:
            self.server.requests.release()

    def _read_body(self, length: int) -> bytes:
        """``length`` bytes, which must all arrive within ``body_seconds``: TimeoutError or ConnectionError."""
        deadline = time.monotonic() + self.server.body_seconds
        body = bytearray()
        try:
            while len(body) < length:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                self.connection.settimeout(remaining)
                chunk = self.rfile.read1(length - len(body))
                if not chunk:
                    raise ConnectionError("the client closed the connection")
                body += chunk
        finally:
            self.connection.settimeout(self.timeout)
        return bytes(body)

    def _review(self, length: int) -> None:
        try:
            raw = self._read_body(length)
        except TimeoutError:
            self.close_connection = True
            self._error(HTTPStatus.REQUEST_TIMEOUT, f"the body did not arrive within {self.server.body_seconds:g} s")
            return
        except OSError as exc:  # ConnectionError, or an SSL error: no one to answer
            self.close_connection = True
            _log.warning("rejected request: reading the body failed: %s", exc)
            return
        # Every "[" and "{", those in strings too: the upper-bound half of extproc.request.json_containers, enough
        # here, as no real pod comes near the limit even counting the brackets in its strings.
        if raw.count(b"[") + raw.count(b"{") > MAX_JSON_CONTAINERS:
            message = f"body has more than {MAX_JSON_CONTAINERS} JSON arrays and objects"
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, message)
            return
        try:
            review = json.loads(raw)
            answer = mutate(review, self.server.settings.sidecar)
        except (ValueError, RecursionError) as exc:  # InvalidReviewError, JSONDecodeError: ValueErrors
            self._error(HTTPStatus.BAD_REQUEST, f"not an AdmissionReview v1: {exc}")
            return
        response = answer["response"]
        _log.info(
            "%s uid=%s: %s",
            review["request"].get("namespace", ""),
            response["uid"],
            response["status"]["message"],
        )
        self._send(HTTPStatus.OK, json.dumps(answer).encode())


class _Server6(_Server):
    address_family = socket.AF_INET6


def build_server(
    settings: WebhookSettings,
    *,
    max_connections: int = MAX_CONNECTIONS,
    max_requests: int = MAX_REQUESTS,
    queue_seconds: float = QUEUE_SECONDS,
    body_seconds: float = BODY_SECONDS,
) -> HTTPServer:
    """Bind the HTTPS server (not yet serving); raises ``ConfigError`` if the certificate cannot be loaded or
    ``listen`` cannot be bound (``listen: cannot listen on ADDRESS: address already in use``). The bounds default to
    the module's constants."""
    try:
        tls = _ReloadingTLS(settings.tls_cert_file, settings.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([f"tls_cert_file/tls_key_file: cannot load the certificate: {exc}"]) from None
    host, port = parse_listen(settings.listen)  # validated with the config
    try:
        server_class = _Server6 if ":" in host else _Server
        return server_class((host, port), settings, tls, max_connections, max_requests, queue_seconds, body_seconds)
    except OSError as exc:
        raise ConfigError([f"listen: {ListenError(settings.listen, exc)}"], CANNOT_START) from None


def run_webhook(config_path: Path) -> int:
    """Serve the webhook over HTTPS until SIGTERM or SIGINT; returns the process exit code."""
    settings = load_webhook_config(config_path)
    configure_logging(settings.log_level)  # one JSON object per line on stderr, as the router's own logs
    with build_server(settings) as server:

        def stop(signum: int, frame: FrameType | None) -> None:
            # shutdown() waits for serve_forever() to return, which runs in this (the main) thread.
            threading.Thread(target=server.shutdown, daemon=True).start()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        _log.info("model-router injection webhook listening on https://%s", settings.listen)
        print(f"model-router inject-webhook ready on {settings.listen}", flush=True)
        server.serve_forever(poll_interval=0.2)
    _log.info("stopped")
    return 0
