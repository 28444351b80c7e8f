"""Cross-checks of a static Envoy bootstrap against a router config (``model-router check-config --envoy-config``).

Why: Envoy and the router are configured apart, and where they disagree nothing fails at start. A catalog cluster
with no route gets a 503 or the wrong provider, a classifier deadline at Envoy's ``message_timeout`` sends requests
on unrouted, ``request_body_mode: NONE`` means the router never sees a body: each shows only under traffic. These
functions find them in the two files. They do no I/O: the caller reads and parses the bootstrap.

Checked, for each HTTP connection manager in ``static_resources.listeners`` that has a deciding ext_proc filter
(any ``ExternalProcessor`` that is not ``observability_mode``, which is the usage observer):

- the filter: ``processing_mode`` (request headers SEND, request body BUFFERED), ``route_cache_action`` /
  ``disable_clear_route_cache``, ``message_timeout`` against ``server.classifier_timeout_ms``,
  ``failure_mode_allow``, ``metadata_options`` and the response header mode that
  ``server.decision_headers_on_response`` needs;
- its gRPC cluster: defined, HTTP/2, TLS as the router serves it, and the port (or socket path) the router listens
  on (``server.listen``, or ``serve --listen``);
- the routes (an inline ``route_config``): for each of the router's API paths that reaches the filter (the most
  specific ``typed_per_filter_config`` entry for it decides, as in Envoy: a ``FilterConfig`` or ``ExtProcPerRoute``
  by its ``disabled``, so ``overrides`` turns it on; else the filter's own ``disabled``), each catalog cluster's
  ``x-model-router-cluster`` value must take a route that sends the request to a defined cluster, and a request
  without that header must reach the default model's cluster (where the fail-open filter sends renamed aliases);
- the rest of the manager: the early header mutation that removes a client's ``x-model-router-cluster``, the buffer
  filter's body limit against ``limits.max_body_bytes``, the fail-open filter against ``model-router fail-open-lua``,
  and the override token among the removed request headers when the config has one.

Routes are tried in order, as Envoy does: the first route that matches a POST to the path (with the router's header,
or without it) decides. Only the path, the method and ``x-model-router-cluster`` are known; a route that also
matches on anything else (other headers, query parameters, runtime fractions) may or may not apply, so it is
skipped, unless it selects ``x-model-router-cluster`` by value, which counts as that cluster's route. A route that
does not select the value (``present_match`` on the header, the default route) is a cluster's route only if it sends
the request to that cluster: its ``cluster``, one of its ``weighted_clusters``, or an aggregate cluster whose first
member it is. ``safe_regex`` is RE2 in Envoy and Python's ``re`` here (``fullmatch``), which agree on the usual
patterns.

Not checked, because the bootstrap does not say or it cannot be told reliably: listeners, routes and clusters from xDS
(LDS, RDS, CDS; a note says so: Istio and Envoy Gateway configure Envoy this way, check those by hand); the settings in
a per-route ``ExtProcPerRoute.overrides``; the router's host name or address (only ports and socket paths are compared:
a name may resolve to it, or a Service forward to it); the body limit without a buffer filter (the connection buffer
bounds HTTP/1.1 bodies only); the tenant header's removal (the gateway sets it itself, after any early mutation); the
usage observer's settings.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from envoy.extensions.filters.http.ext_proc.v3.ext_proc_pb2 import ExternalProcessor
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode

from extproc.config import Settings, parse_listen
from extproc.envoy import METADATA_NAMESPACE
from extproc.fail_open_lua import render_fail_open_lua
from extproc.schemas import ROUTER_PATHS
from extproc.stream import CLUSTER_HEADER, OVERRIDE_TOKEN_HEADER

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

__all__ = ["MIN_ROOM_MS", "Finding", "Severity", "check_envoy", "parse_duration"]

Severity = Literal["error", "warning", "note"]
"""``error``: the router cannot route (or Envoy cannot reach it) as configured; ``warning``: some requests go
unrouted, or a client can steer them; ``note``: a choice worth knowing, or something not checked."""

MIN_ROOM_MS = 25.0
"""How far ``message_timeout`` must be above ``server.classifier_timeout_ms``. The body message carries more than
the classification: gRPC decoding, the JSON parse (13-17 ms for a 4 MiB chat body, measured on a 2-core machine)
and the wait for the event loop. With less room the largest bodies miss Envoy's deadline though classification
met the router's."""

_DEFAULT_MESSAGE_TIMEOUT = "0.2s"
_DEFAULT_CONNECTION_BUFFER = 1048576
"""Envoy's ``per_connection_buffer_limit_bytes`` when a listener does not set it."""
_HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_EXT_PROC = "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
_BUFFER = "envoy.extensions.filters.http.buffer.v3.Buffer"
_LUA = "envoy.extensions.filters.http.lua.v3.Lua"
_WITH_MATCHER = "envoy.extensions.common.matching.v3.ExtensionWithMatcher"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_FILTER_CONFIG = "envoy.config.route.v3.FilterConfig"
_AGGREGATE = "envoy.clusters.aggregate"
_ORDER = {"error": 0, "warning": 1, "note": 2}
_PATHS = sorted(ROUTER_PATHS, key=lambda p: (p != "/v1/chat/completions", p))
"""The router's API paths, the most used first: findings name the first path they hold for."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One disagreement between the bootstrap and the router config; ``message`` names the Envoy path it is about."""

    severity: Severity
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.message}"


def check_envoy(settings: Settings, envoy: Mapping[str, Any], listen: str | None = None) -> list[Finding]:
    """Every finding for the bootstrap ``envoy`` and the router config ``settings``, errors first.

    ``listen`` is the router's address when ``serve --listen`` overrides ``server.listen`` (as sidecars do)."""
    check = _Check(settings, envoy, listen)
    check.run()
    unique = dict.fromkeys(check.findings)  # two deciding filters in one manager would repeat its route findings
    return sorted(unique, key=lambda f: _ORDER[f.severity])


def parse_duration(value: object) -> float | None:
    """Seconds of a protobuf Duration as Envoy reads it from YAML or JSON (``"0.2s"``, or ``{seconds, nanos}``);
    None if it is neither."""
    if isinstance(value, str):
        match = re.fullmatch(r"-?[0-9]+(\.[0-9]{1,9})?s", value)
        return float(value[:-1]) if match else None
    if isinstance(value, Mapping) and value and set(value) <= {"seconds", "nanos"}:
        seconds, nanos = _int(value.get("seconds", 0)), _int(value.get("nanos", 0))
        return None if seconds is None or nanos is None else seconds + nanos / 1e9
    return None


class _Check:
    """One run over a bootstrap; collects findings."""

    def __init__(self, settings: Settings, envoy: Mapping[str, Any], listen: str | None) -> None:
        self.settings = settings
        static, dynamic = _map(envoy.get("static_resources")), _map(envoy.get("dynamic_resources"))
        self.listeners = [li for li in _seq(static.get("listeners")) if isinstance(li, Mapping)]
        self.clusters = {
            c["name"]: c
            for c in _seq(static.get("clusters"))
            if isinstance(c, Mapping) and isinstance(c.get("name"), str)
        }
        self.cds = "cds_config" in dynamic
        self.lds = "lds_config" in dynamic or "lds_resources_locator" in dynamic
        self.listen = listen or settings.server.listen
        self.listen_field = "--listen" if listen else "server.listen"
        self.findings: list[Finding] = []

    def error(self, message: str) -> None:
        self.findings.append(Finding("error", message))

    def warning(self, message: str) -> None:
        self.findings.append(Finding("warning", message))

    def note(self, message: str) -> None:
        self.findings.append(Finding("note", message))

    def run(self) -> None:
        if self.cds:
            self.note("clusters come from CDS (dynamic_resources.cds_config): clusters not in the file are not checked")
        deciding = False
        for listener in self.listeners:
            for where, hcm in _hcms(listener):
                filters = [f for f in _seq(hcm.get("http_filters")) if isinstance(f, Mapping)]
                for filter_ in filters:
                    config = _typed(filter_)
                    if _type(config) != _EXT_PROC or config.get("observability_mode") is True:
                        continue
                    deciding = True
                    name = str(filter_.get("name", "?"))
                    self.ext_proc(f"{where}, ext_proc filter {name}", config)
                    self.routes(where, hcm, name, filter_.get("disabled") is True)
                    self.connection_manager(where, hcm, filters, listener)
        if self.lds:
            self.note("listeners come from LDS (dynamic_resources.lds_config): those are not checked")
        elif not deciding:
            self.error(
                f"no HTTP connection manager in static_resources.listeners has an ext_proc filter ({_EXT_PROC}) that"
                " is not observability_mode: Envoy never asks the router"
            )

    # --- the deciding filter -----------------------------------------------------------------------------------

    def ext_proc(self, where: str, config: Mapping[str, Any]) -> None:
        mode = _map(config.get("processing_mode"))
        if _enum(mode.get("request_header_mode"), ProcessingMode.HeaderSendMode) == "SKIP":
            self.error(
                f"{where}: processing_mode.request_header_mode SKIP: the headers go upstream before the router has"
                " decided, so it cannot change the route; use SEND"
            )
        body_mode = _enum(mode.get("request_body_mode"), ProcessingMode.BodySendMode)
        if body_mode == "NONE":
            how = "NONE" if "request_body_mode" in mode else "not set (NONE)"
            self.error(
                f"{where}: processing_mode.request_body_mode {how}: the router never sees a body, so it routes"
                " nothing; use BUFFERED"
            )
        elif body_mode == "BUFFERED_PARTIAL":
            self.warning(
                f"{where}: processing_mode.request_body_mode BUFFERED_PARTIAL: a body over the stream's buffer limit,"
                " or followed by trailers (Envoy's request decompressor adds them), reaches the router in parts and"
                " goes on unrouted (streamed_body); use BUFFERED"
            )
        elif body_mode != "BUFFERED":
            self.error(
                f"{where}: processing_mode.request_body_mode {body_mode}: the headers go upstream before the body is"
                " decided, so the router cannot change the route; it reads whole bodies: use BUFFERED"
            )
        if _enum(config.get("route_cache_action"), ExternalProcessor.RouteCacheAction) == "RETAIN":
            self.error(
                f"{where}: route_cache_action RETAIN: Envoy keeps the route it chose before the router answered and"
                f" ignores the {CLUSTER_HEADER} the router sets; use DEFAULT"
            )
        if config.get("disable_clear_route_cache") is True:
            self.error(
                f"{where}: disable_clear_route_cache: true: Envoy keeps the route it chose before the router answered"
                f" and ignores the {CLUSTER_HEADER} the router sets; remove it"
            )
        self.message_timeout(where, config.get("message_timeout"))
        if config.get("failure_mode_allow") is not True:
            how = "false" if "failure_mode_allow" in config else "not set (false)"
            self.note(
                f"{where}: failure_mode_allow {how}: while the router is down or too slow, requests fail (5xx)"
                " instead of going on unrouted (fail open)"
            )
        namespaces = _seq(_map(_map(config.get("metadata_options")).get("receiving_namespaces")).get("untyped"))
        if METADATA_NAMESPACE not in namespaces:
            self.warning(
                f"{where}: metadata_options.receiving_namespaces.untyped does not list {METADATA_NAMESPACE}: Envoy"
                " drops the router's dynamic metadata, which the decision response headers, the access log and the"
                " fail-open and fallback filters read"
            )
        if (
            self.settings.server.decision_headers_on_response
            and _enum(mode.get("response_header_mode"), ProcessingMode.HeaderSendMode) == "SKIP"
        ):
            self.warning(
                f"{where}: processing_mode.response_header_mode SKIP, but server.decision_headers_on_response is true:"
                " the router never gets the response headers to add to, and holds each routed request's stream until"
                " its response ends"
            )
        grpc = _map(config.get("grpc_service"))
        if "http_service" in config:
            self.error(f"{where}: http_service: the router serves ext_proc over gRPC only (grpc_service)")
        elif "envoy_grpc" in grpc:
            self.router_cluster(where, str(_map(grpc["envoy_grpc"]).get("cluster_name", "")))
        elif "google_grpc" in grpc:
            target = _map(grpc["google_grpc"]).get("target_uri", "?")
            self.note(f"{where}: grpc_service.google_grpc (target {target}) is not compared with {self.listen_field}")

    def message_timeout(self, where: str, value: object) -> None:
        seconds = parse_duration(_DEFAULT_MESSAGE_TIMEOUT if value is None else value)
        if seconds is None:
            self.warning(
                f'{where}: message_timeout {value!r} is not a Duration ("0.2s" or {{seconds, nanos}}): not compared'
                " with server.classifier_timeout_ms"
            )
            return
        shown = f"message_timeout {value if isinstance(value, str) else f'{seconds:g}s'}"
        if value is None:
            shown = f"message_timeout ({_DEFAULT_MESSAGE_TIMEOUT}, the default)"
        timeout_ms, deadline = seconds * 1000, self.settings.server.classifier_timeout_ms
        if deadline >= timeout_ms:
            self.warning(
                f"{where}: {shown} is not above server.classifier_timeout_ms ({deadline:g} ms): Envoy stops waiting"
                " before the router's classifier does, so a slow classification sends the request on unrouted"
                f" (or fails it, without failure_mode_allow); keep it at least {MIN_ROOM_MS:g} ms above"
            )
        elif timeout_ms - deadline < MIN_ROOM_MS:
            self.warning(
                f"{where}: {shown} leaves {timeout_ms - deadline:g} ms beyond server.classifier_timeout_ms"
                f" ({deadline:g} ms) for the rest of a decision (a 4 MiB body takes 13-17 ms to parse): keep it at"
                f" least {MIN_ROOM_MS:g} ms above"
            )

    def router_cluster(self, where: str, name: str) -> None:
        cluster = self.clusters.get(name)
        if cluster is None:
            if not self.cds:
                self.error(
                    f"{where}: grpc_service.envoy_grpc.cluster_name {name!r} is not in static_resources.clusters"
                )
            return
        where = f"{where}, cluster {name}"
        tls = _tls(cluster)
        if _http2(cluster, tls) is False:
            self.error(
                f"{where}: does not speak HTTP/2 ({_HTTP_OPTIONS} with explicit_http_config.http2_protocol_options):"
                " gRPC needs it, so every call to the router fails"
            )
        router_tls = self.settings.server.tls is not None
        if tls is not None and tls != router_tls:
            how = (
                "with TLS (transport_socket), but the router serves plaintext (server.tls is not set)"
                if tls
                else "in plaintext, but the router serves TLS (server.tls)"
            )
            self.warning(f"{where}: connects {how}: every call to the router fails")
        unix = parse_listen(self.listen, unix=True) is None
        listens = f"the router listens on {self.listen} ({self.listen_field})"
        for address in _endpoint_addresses(cluster):
            if "pipe" in address:
                path = str(_map(address["pipe"]).get("path", ""))
                if not unix or path != self.listen.removeprefix("unix:"):
                    self.warning(f"{where}: connects to the Unix socket {path}, but {listens}")
            elif "socket_address" in address:
                socket = _map(address["socket_address"])
                host, port = socket.get("address", "?"), socket.get("port_value")
                if unix or (port is not None and str(port) != str(parse_listen(self.listen)[1])):
                    self.warning(f"{where}: connects to {host}:{port}, but {listens}")

    # --- the connection manager around it ------------------------------------------------------------------------

    def connection_manager(
        self, where: str, hcm: Mapping[str, Any], filters: Sequence[Mapping[str, Any]], listener: Mapping[str, Any]
    ) -> None:
        if not _removes_early(hcm, CLUSTER_HEADER):
            self.warning(
                f"{where}: no early_header_mutation_extensions entry removes {CLUSTER_HEADER}: the router strips a"
                " client's copy when it answers, but a request it does not answer (router down or too slow: fail"
                " open) is routed by the client's value. request_headers_to_remove acts too late: after the route"
                " is chosen"
            )
        buffers = [(f, c) for f in filters if _type(c := _typed(f)) == _BUFFER and f.get("disabled") is not True]
        body_limit = _int(buffers[0][1].get("max_request_bytes")) if buffers else None
        limit = self.settings.limits.max_body_bytes
        if body_limit is not None and body_limit > limit:
            self.warning(
                f"{where}, buffer filter {buffers[0][0].get('name', '?')}: max_request_bytes {body_limit} is above"
                f" limits.max_body_bytes ({limit}): bodies between the two reach the router and go on unrouted"
                " (body_too_large); set them equal"
            )
        if body_limit is None:
            body_limit = _int(listener.get("per_connection_buffer_limit_bytes")) or _DEFAULT_CONNECTION_BUFFER
        self.fail_open_filter(where, filters, body_limit)

    def fail_open_filter(self, where: str, filters: Sequence[Mapping[str, Any]], body_limit: int) -> None:
        want = render_fail_open_lua(self.settings, body_limit)
        marker = want.split("\n", 1)[0]  # the generated script's first line
        found = False
        for filter_ in filters:
            config = _typed(filter_)
            source = _map(config.get("default_source_code")).get("inline_string", config.get("inline_code"))
            if _type(config) != _LUA or not isinstance(source, str) or marker not in source:
                continue
            found = True
            if source != want:
                self.warning(
                    f"{where}, lua filter {filter_.get('name', '?')}: the fail-open filter is not the one for this"
                    " config (its aliases, default model, catalog clusters or body limit): replace its"
                    f" inline_string with the output of model-router fail-open-lua --config FILE --max-body-bytes"
                    f" {body_limit}"
                )
        if not found:
            self.note(
                f"{where}: no fail-open filter (model-router fail-open-lua): while the router does not answer, a"
                " request for a routable alias reaches the default route under that name"
            )

    # --- routes --------------------------------------------------------------------------------------------------

    def routes(self, where: str, hcm: Mapping[str, Any], filter_name: str, filter_disabled: bool) -> None:
        for field, api in (("rds", "RDS"), ("scoped_routes", "SRDS")):
            if field in hcm:
                self.note(f"{where}: routes come from {api} ({field}): not checked")
                return
        route_config = _map(hcm.get("route_config"))
        where = f"{where}, route_config {route_config.get('name', '?')}"
        decided = False
        for vhost in [v for v in _seq(route_config.get("virtual_hosts")) if isinstance(v, Mapping)]:
            routes = [r for r in _seq(vhost.get("routes")) if isinstance(r, Mapping)]
            scopes = (vhost, route_config)
            paths = [p for p in _PATHS if _reaches(routes, p, filter_name, scopes, filter_disabled)]
            if not paths:
                continue  # not the router's virtual host
            decided = True
            vwhere = f"{where}, virtual host {vhost.get('name', '?')}"
            self.cluster_routes(vwhere, routes, paths)
            self.default_route(vwhere, routes, paths)
            if self.settings.security.override.token_sha256 and OVERRIDE_TOKEN_HEADER not in [
                *_seq(vhost.get("request_headers_to_remove")),
                *_seq(route_config.get("request_headers_to_remove")),
            ]:
                self.warning(
                    f"{vwhere}: request_headers_to_remove does not list {OVERRIDE_TOKEN_HEADER}: the router strips it"
                    " when it answers, but a request it does not answer carries the override secret to the provider"
                )
        if not decided:
            self.warning(
                f"{where}: no route sends the router's API paths (such as /v1/chat/completions) through ext_proc"
                f" filter {filter_name}: the router decides nothing here (routes that match on other headers or"
                " query parameters are not evaluated)"
            )

    def cluster_routes(self, where: str, routes: Sequence[Mapping[str, Any]], paths: Sequence[str]) -> None:
        models: dict[str, list[str]] = {}
        for model in self.settings.catalog:
            models.setdefault(model.cluster, []).append(model.name)
        for cluster, names in models.items():
            problems = [(p, problem) for p in paths if (problem := self.route_problem(cluster, p, routes))]
            if problems:
                (path, problem), others = problems[0], len(problems) - 1
                also = f"; likewise on {others} other path(s) of the router's" if others else ""
                if others and others == len(paths) - 1:
                    also = "; likewise on every other path of the router's"
                self.error(f"{where}: catalog cluster {cluster} ({', '.join(names)}): on {path}, {problem}{also}")

    def route_problem(self, cluster: str, path: str, routes: Sequence[Mapping[str, Any]]) -> str | None:
        """What is wrong with the route a request to ``path`` with ``x-model-router-cluster: cluster`` takes."""
        found = _first_route(routes, path, cluster)
        if found is None:
            return f"no route matches {CLUSTER_HEADER}: {cluster} (Envoy answers 404)"
        index, route = found
        action = _map(route.get("route"))
        if str(action.get("cluster_header", "")).lower() == CLUSTER_HEADER:
            if cluster in self.clusters or self.cds:
                return None
            return f"routes[{index}] sends it to the cluster its {CLUSTER_HEADER} names, and there is no such cluster"
        targets = [action["cluster"]] if "cluster" in action else []
        targets += [_map(w).get("name") for w in _seq(_map(action.get("weighted_clusters")).get("clusters"))]
        if not _selects(route, cluster) and not any(cluster in (t, self.first_member(str(t))) for t in targets):
            # A route that does not select the value (the default route, a catch-all) is its route only if it
            # happens to send the request to that cluster.
            return f"{CLUSTER_HEADER}: {cluster} takes routes[{index}] ({_describe(route)}), not a route for it"
        if not action:
            return f"its route, routes[{index}], answers itself ({_describe(route)}) instead of sending it on"
        missing = [str(t) for t in targets if t not in self.clusters]
        if missing and not self.cds:
            return f"its route, routes[{index}], sends it to cluster {missing[0]}, which is not in static_resources"
        return None

    def default_route(self, where: str, routes: Sequence[Mapping[str, Any]], paths: Sequence[str]) -> None:
        default = self.settings.policy.default_model
        want = next(m.cluster for m in self.settings.catalog if m.name == default)
        for path in paths:
            found = _first_route(routes, path, None)
            if found is None:
                continue
            index, route = found
            target = _map(route.get("route")).get("cluster")
            if not isinstance(target, str) or want in (target, self.first_member(target)):
                continue
            self.warning(
                f"{where}: a request to {path} without {CLUSTER_HEADER} takes routes[{index}] (cluster {target}), but"
                f" policy.default_model {default} is in cluster {want}: while the router does not answer, the"
                f" fail-open filter renames routable aliases to {default} and sends them there"
            )
            return

    def first_member(self, name: str) -> str | None:
        """The first cluster of an aggregate cluster (the fallback chains), else None."""
        cluster_type = _map(self.clusters.get(name, {}).get("cluster_type"))
        if cluster_type.get("name") != _AGGREGATE:
            return None
        members = _seq(_map(cluster_type.get("typed_config")).get("clusters"))
        return str(members[0]) if members else None


# --- reading the bootstrap ---------------------------------------------------------------------------------------


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _seq(value: object) -> list[Any]:
    return list(value) if isinstance(value, list) else []


def _int(value: object) -> int | None:
    """An integer field (proto JSON writes 64-bit ones as strings)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    return int(value) if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value) else None


def _type(config: Mapping[str, Any]) -> str:
    """The message name of a typed_config's ``@type``."""
    return str(config.get("@type", "")).rsplit("/", 1)[-1]


def _enum(value: object, enum: EnumTypeWrapper) -> str:
    """An enum field's name (YAML may give the number); ``DEFAULT``/``NONE`` (0) when unset."""
    if value is None:
        value = 0
    if isinstance(value, int) and not isinstance(value, bool) and value in enum.values():
        return str(enum.Name(value))
    return str(value)


def _typed(filter_: Mapping[str, Any]) -> Mapping[str, Any]:
    """An http filter's typed_config, unwrapped from an ExtensionWithMatcher."""
    config = _map(filter_.get("typed_config"))
    if _type(config) == _WITH_MATCHER:
        return _map(_map(config.get("extension_config")).get("typed_config"))
    return config


def _hcms(listener: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Each HTTP connection manager of a listener, with where it is."""
    chains = [c for c in _seq(listener.get("filter_chains")) if isinstance(c, Mapping)]
    if isinstance(listener.get("default_filter_chain"), Mapping):
        chains.append(listener["default_filter_chain"])
    for index, chain in enumerate(chains):
        where = f"listener {listener.get('name', '?')}"
        if len(chains) > 1:
            where += f", filter chain {chain.get('name', index)}"
        for filter_ in _seq(chain.get("filters")):
            config = _map(_map(filter_).get("typed_config"))
            if _type(config) == _HCM:
                yield where, config


def _tls(cluster: Mapping[str, Any]) -> bool | None:
    """Whether the cluster connects with TLS; None if this cannot be told."""
    if "transport_socket_matches" in cluster:
        return None
    socket = _map(cluster.get("transport_socket"))
    name, kind = socket.get("name"), _type(_map(socket.get("typed_config")))
    if not socket or name == "envoy.transport_sockets.raw_buffer" or kind.endswith(".RawBuffer"):
        return False
    if name == "envoy.transport_sockets.tls" or kind.endswith(".UpstreamTlsContext"):
        return True
    return None


def _http2(cluster: Mapping[str, Any], tls: bool | None) -> bool | None:
    """Whether the cluster speaks HTTP/2 upstream; None if it depends on the downstream."""
    if "http2_protocol_options" in cluster:  # the deprecated cluster field
        return True
    options: Mapping[str, Any] = {}
    for value in _map(cluster.get("typed_extension_protocol_options")).values():
        if _type(_map(value)) == _HTTP_OPTIONS:
            options = _map(value)
    if "explicit_http_config" in options:
        return "http2_protocol_options" in _map(options["explicit_http_config"])
    if "auto_config" in options:
        return tls  # ALPN picks HTTP/2 over TLS; in plaintext it is HTTP/1.1
    if "use_downstream_protocol_config" in options:
        return None
    return False


def _endpoint_addresses(cluster: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for locality in _seq(_map(cluster.get("load_assignment")).get("endpoints")):
        for lb_endpoint in _seq(_map(locality).get("lb_endpoints")):
            address = _map(_map(_map(lb_endpoint).get("endpoint")).get("address"))
            if address:
                yield address


def _removes_early(hcm: Mapping[str, Any], header: str) -> bool:
    """Whether an early header mutation removes ``header`` (before the route is chosen)."""
    for extension in _seq(hcm.get("early_header_mutation_extensions")):
        for mutation in _seq(_map(_map(extension).get("typed_config")).get("mutations")):
            mutation = _map(mutation)
            key = _map(_map(mutation.get("remove_on_match")).get("key_matcher"))
            if mutation.get("remove") == header or (key and _string_matches(key, header)):
                return True
    return False


# --- route matching ------------------------------------------------------------------------------------------------


def _reaches(
    routes: Sequence[Mapping[str, Any]],
    path: str,
    filter_name: str,
    scopes: Sequence[Mapping[str, Any]],
    filter_disabled: bool,
) -> bool:
    """Whether a POST to ``path`` takes a route with the deciding filter on (the router then decides it)."""
    found = _first_route(routes, path, None)
    if found is None:
        return False
    for scope in (found[1], *scopes):  # the route's typed_per_filter_config, else the virtual host's, ...
        config = _map(_map(scope.get("typed_per_filter_config")).get(filter_name))
        if _type(config) == _FILTER_CONFIG:  # FilterConfig's disabled defaults to false
            return config.get("disabled") is not True
        if _type(config).endswith("ExtProcPerRoute") or "disabled" in config or "overrides" in config:
            # disabled and overrides are a oneof, and Envoy's merge keeps the most specific entry's disabled
            # (ext_proc.cc, FilterConfigPerRoute(less_specific, more_specific)): overrides turns the filter on.
            return config.get("disabled") is not True
    return not filter_disabled


def _first_route(
    routes: Sequence[Mapping[str, Any]], path: str, cluster: str | None
) -> tuple[int, Mapping[str, Any]] | None:
    """The route (and its index) a POST to ``path`` takes, carrying ``x-model-router-cluster: cluster`` if given."""
    for index, route in enumerate(routes):
        applies = _route_applies(_map(route.get("match")), path, cluster)
        if applies or (applies is None and _selects(route, cluster)):
            return index, route
    return None


def _selects(route: Mapping[str, Any], cluster: str | None) -> bool:
    """Whether the route matches ``x-model-router-cluster`` by its value, and ``cluster`` is such a value."""
    if cluster is None:
        return False
    for matcher in _seq(_map(route.get("match")).get("headers")):
        matcher = _map(matcher)
        if (
            str(matcher.get("name", "")).lower() == CLUSTER_HEADER
            and "present_match" not in matcher
            and matcher.get("invert_match") is not True
            and any(kind in matcher for kind in ("string_match", *_LEGACY_MATCHERS))
            and _header_value_matches(matcher, cluster) is True
        ):
            return True
    return False


def _route_applies(match: Mapping[str, Any], path: str, cluster: str | None) -> bool | None:
    """Whether a route's match applies to the router's request; None if it depends on what else the request has."""
    results = [_path_applies(match, path)]
    results += [_header_applies(_map(h), path, cluster) for h in _seq(match.get("headers"))]
    if "grpc" in match:
        results.append(False)  # the router's APIs are not gRPC
    unknown = ("query_parameters", "runtime_fraction", "dynamic_metadata", "filter_state", "tls_context", "cel_matcher")
    if any(match.get(key) for key in unknown):
        results.append(None)
    if False in results:
        return False
    return None if None in results else True


def _path_applies(match: Mapping[str, Any], path: str) -> bool | None:
    fold = match.get("case_sensitive") is False
    path = _fold(path, fold)
    if "prefix" in match:
        return path.startswith(_fold(match["prefix"], fold))
    if "path" in match:
        return path == _fold(match["path"], fold)
    if "path_separated_prefix" in match:
        prefix = _fold(match["path_separated_prefix"], fold)
        return path == prefix or path.startswith(prefix + "/")
    if "safe_regex" in match:
        return _regex(_map(match["safe_regex"]).get("regex"), path)
    if "connect_matcher" in match:
        return False
    return None


def _header_applies(matcher: Mapping[str, Any], path: str, cluster: str | None) -> bool | None:
    name = str(matcher.get("name", "")).lower()
    if name == CLUSTER_HEADER:
        value = cluster
    elif name in (":path", ":method"):
        value = path if name == ":path" else "POST"
    else:
        return None
    if value is None and "present_match" not in matcher:
        return False  # Envoy: an absent header fails every other matcher, inverted or not
    result = _header_value_matches(matcher, value)
    return None if result is None else result != (matcher.get("invert_match") is True)


_LEGACY_MATCHERS = {
    "exact_match": "exact",
    "prefix_match": "prefix",
    "suffix_match": "suffix",
    "contains_match": "contains",
    "safe_regex_match": "safe_regex",
}


def _header_value_matches(matcher: Mapping[str, Any], value: str | None) -> bool | None:
    """A HeaderMatcher's verdict on a header's value (None: absent), before ``invert_match``."""
    if "present_match" in matcher:
        return (value is not None) == (matcher["present_match"] is True)
    if value is None:
        return False
    if "string_match" in matcher:
        return _string_matches(_map(matcher["string_match"]), value)
    for legacy, kind in _LEGACY_MATCHERS.items():
        if legacy in matcher:
            return _string_matches({kind: matcher[legacy]}, value)
    if "range_match" in matcher:
        return None
    return True  # a name alone: the header is present


def _string_matches(matcher: Mapping[str, Any], value: str) -> bool | None:
    """A StringMatcher's verdict; None for kinds not evaluated here."""
    fold = matcher.get("ignore_case") is True
    folded = _fold(value, fold)
    if "exact" in matcher:
        return folded == _fold(matcher["exact"], fold)
    if "prefix" in matcher:
        return folded.startswith(_fold(matcher["prefix"], fold))
    if "suffix" in matcher:
        return folded.endswith(_fold(matcher["suffix"], fold))
    if "contains" in matcher:
        return _fold(matcher["contains"], fold) in folded
    if "safe_regex" in matcher:
        return _regex(_map(matcher["safe_regex"]).get("regex"), value)
    return None


def _fold(text: object, fold: bool) -> str:
    return str(text).lower() if fold else str(text)


def _regex(pattern: object, value: str) -> bool | None:
    """RE2's whole-string match, approximated with Python's ``re``; None if ``re`` cannot read the pattern."""
    try:
        return re.fullmatch(str(pattern), value) is not None
    except re.error:
        return None


def _describe(route: Mapping[str, Any]) -> str:
    action = _map(route.get("route"))
    if "direct_response" in route:
        return f"direct_response {_map(route['direct_response']).get('status', '?')}"
    if "redirect" in route:
        return "redirect"
    for key in ("cluster", "cluster_header"):
        if key in action:
            return f"{key} {action[key]}"
    return "weighted_clusters" if "weighted_clusters" in action else "no cluster"
