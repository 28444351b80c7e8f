"""``check_envoy``: the shipped gateways agree with their router configs, and each mismatch of a copy of
``envoy/envoy.yaml`` (one change per case) gives exactly the findings it should, naming the Envoy path."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from extproc.config import Settings, load_config, load_yaml, parse_config
from extproc.envoy_check import Finding, Severity, check_envoy, parse_duration
from extproc.stream import CLUSTER_HEADER, OVERRIDE_TOKEN_HEADER

ROOT = Path(__file__).resolve().parents[2]
EXT_PROC = "envoy.filters.http.ext_proc"
LUA = "envoy.filters.http.lua"
LISTENER = "listener llm_gateway"
FILTER = f"{LISTENER}, ext_proc filter {EXT_PROC}"
VHOST = f"{LISTENER}, route_config llm_routes, virtual host llm"
ENVOY: dict[str, Any] = load_yaml(ROOT / "envoy" / "envoy.yaml")  # type: ignore[assignment]
ROUTER: dict[str, Any] = load_yaml(ROOT / "envoy" / "model-router.yaml")  # type: ignore[assignment]
TOKEN = "0" * 64

Change = Callable[[dict[str, Any]], object]


def _sidecar_listen() -> str:
    """The ``serve --listen`` of the router sidecar in k8s/base/deployment.yaml."""
    deployment = yaml.safe_load((ROOT / "k8s" / "base" / "deployment.yaml").read_text())
    (sidecar,) = [c for c in deployment["spec"]["template"]["spec"]["initContainers"] if c["name"] == "model-router"]
    args: list[str] = sidecar["args"]
    return args[args.index("--listen") + 1]


@pytest.mark.parametrize(
    ("envoy_yaml", "router_yaml", "listen"),
    [
        pytest.param("envoy/envoy.yaml", "envoy/model-router.yaml", None, id="envoy"),
        pytest.param("k8s/base/envoy.yaml", "k8s/base/router-config/model-router.yaml", _sidecar_listen(), id="k8s"),
    ],
)
def test_the_shipped_pairs_agree(envoy_yaml: str, router_yaml: str, listen: str | None) -> None:
    envoy: Any = load_yaml(ROOT / envoy_yaml)
    assert check_envoy(load_config(ROOT / router_yaml), envoy, listen) == []


def _hcm(envoy: dict[str, Any]) -> dict[str, Any]:
    hcm: dict[str, Any] = envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def _filter(envoy: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in _hcm(envoy)["http_filters"] if f["name"] == name)


def _ext_proc(envoy: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = _filter(envoy, EXT_PROC)["typed_config"]
    return config


def _mode(envoy: dict[str, Any]) -> dict[str, Any]:
    mode: dict[str, Any] = _ext_proc(envoy)["processing_mode"]
    return mode


def _vhost(envoy: dict[str, Any]) -> dict[str, Any]:
    vhost: dict[str, Any] = _hcm(envoy)["route_config"]["virtual_hosts"][0]
    return vhost


def _routes(envoy: dict[str, Any]) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = _vhost(envoy)["routes"]
    return routes


def _route_for(envoy: dict[str, Any], cluster: str) -> dict[str, Any]:
    """The shipped header route of a catalog cluster."""
    (route,) = [
        r
        for r in _routes(envoy)
        if {"exact": cluster} in [h.get("string_match") for h in r["match"].get("headers", [])]
    ]
    return route


def _cluster(envoy: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in envoy["static_resources"]["clusters"] if c["name"] == name)


def _update(part: Callable[[dict[str, Any]], dict[str, Any]], **values: object) -> Change:
    return lambda envoy: part(envoy).update(values)


def _drop(part: Callable[[dict[str, Any]], dict[str, Any]], key: str) -> Change:
    return lambda envoy: part(envoy).pop(key)


def _router(**sections: dict[str, Any]) -> Change:
    """A change of the router config: each section's keys updated."""
    return lambda router: [router.setdefault(name, {}).update(values) for name, values in sections.items()]


def _no_deciding_filter(envoy: dict[str, Any]) -> None:
    _hcm(envoy)["http_filters"].remove(_filter(envoy, EXT_PROC))
    del _filter(envoy, "model_router_usage")["disabled"]  # the usage observer, on, is no deciding filter


def _one_cluster_header_route(envoy: dict[str, Any]) -> None:
    routes = _routes(envoy)
    for cluster in ("small", "cheap", "frontier"):
        routes.remove(_route_for(envoy, cluster))
    match = {"prefix": "/", "headers": [{"name": CLUSTER_HEADER, "present_match": True}]}
    routes.insert(1, {"match": match, "route": {"cluster_header": CLUSTER_HEADER}})


def _add_model(cluster: str) -> Change:
    model = {"name": "mistral-small", "cluster": cluster, "tier": "cheap", "input_price_per_mtok": 0.1}
    return lambda router: router["catalog"].append({**model, "output_price_per_mtok": 0.3})


def _router_endpoint(address: dict[str, Any]) -> Change:
    def change(envoy: dict[str, Any]) -> None:
        (locality,) = _cluster(envoy, "model_router")["load_assignment"]["endpoints"]
        locality["lb_endpoints"][0]["endpoint"]["address"] = address

    return change


def _behind_matcher(envoy: dict[str, Any]) -> None:
    """The deciding filter wrapped in an ExtensionWithMatcher, as the shipped request_gzip filter is."""
    filters = _hcm(envoy)["http_filters"]
    index = filters.index(_filter(envoy, EXT_PROC))
    wrapper = copy.deepcopy(_filter(envoy, "request_gzip"))
    wrapper["typed_config"]["extension_config"] = filters[index]
    filters[index] = {"name": EXT_PROC, "typed_config": wrapper["typed_config"]}


def _auto_config(envoy: dict[str, Any]) -> None:
    """The router's cluster on auto_config: HTTP/2 only by ALPN, which needs TLS."""
    (options,) = _cluster(envoy, "model_router")["typed_extension_protocol_options"].values()
    del options["explicit_http_config"]
    options["auto_config"] = {}


def _weighted(cluster: str) -> Change:
    """The frontier route split over weighted clusters (one here)."""

    def change(envoy: dict[str, Any]) -> None:
        action = _route_for(envoy, "frontier")["route"]
        del action["cluster"]
        action["weighted_clusters"] = {"clusters": [{"name": cluster, "weight": 1}]}

    return change


def _per_route(filter_config: dict[str, Any]) -> Change:
    """The router's API route (the safe_regex one) with this per-filter config for the deciding filter."""

    def change(envoy: dict[str, Any]) -> None:
        (api,) = [r for r in _routes(envoy) if "safe_regex" in r["match"]]
        api["typed_per_filter_config"] = {EXT_PROC: filter_config}

    return change


def _by_the_default_route(*clusters: str, default: dict[str, Any] | None = None) -> Change:
    """The header routes of ``clusters`` and the two 503 catch-alls removed: the clusters' requests take the
    default route (its action replaced by ``default`` if given)."""

    def change(envoy: dict[str, Any]) -> None:
        routes = _routes(envoy)
        for cluster in clusters:
            routes.remove(_route_for(envoy, cluster))
        for route in [r for r in routes if "direct_response" in r]:
            routes.remove(route)
        if default is not None:
            (api,) = [r for r in routes if "safe_regex" in r["match"]]
            api["route"] = default

    return change


def _host_off_routes_on(envoy: dict[str, Any]) -> None:
    """ext_proc off for the virtual host, and on again (``overrides``) on each route a router path can take."""
    _vhost(envoy)["typed_per_filter_config"] = {EXT_PROC: _EXT_PROC_OFF}
    for route in _routes(envoy)[1:7]:
        route["typed_per_filter_config"] = {EXT_PROC: copy.deepcopy(_EXT_PROC_OVERRIDES)}


def _both(*changes: Change) -> Change:
    return lambda target: [change(target) for change in changes]


_TLS = {
    "name": "envoy.transport_sockets.tls",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"},
}
_EXT_PROC_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
_EXT_PROC_OFF = {"@type": _EXT_PROC_PER_ROUTE, "disabled": True}
_ON = {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": False}
_EXT_PROC_OVERRIDES = {"@type": _EXT_PROC_PER_ROUTE, "overrides": {"failure_mode_allow": True}}
_NO_ROUTER_PATHS = f"{LISTENER}, route_config llm_routes: no route sends the router's API paths"
_STALE_LUA = f"{LISTENER}, lua filter {LUA}: the fail-open filter is not the one for this config"
_NOTHING: list[tuple[Severity, str]] = []

# fmt: off
CASES = [
    # the deciding filter
    pytest.param(
        _no_deciding_filter, None, None, [("error", "no HTTP connection manager in static_resources.listeners")],
        id="no-deciding-filter",
    ),
    pytest.param(
        _update(_mode, request_header_mode="SKIP"), None, None,
        [("error", f"{FILTER}: processing_mode.request_header_mode SKIP")], id="header-mode-skip",
    ),
    pytest.param(
        _drop(_mode, "request_body_mode"), None, None,
        [("error", f"{FILTER}: processing_mode.request_body_mode not set (NONE)")], id="body-mode-unset",
    ),
    pytest.param(
        _update(_mode, request_body_mode=0), None, None, [("error", "request_body_mode NONE: the router never sees")],
        id="body-mode-none-as-a-number",
    ),
    pytest.param(
        _update(_mode, request_body_mode="STREAMED"), None, None, [("error", "request_body_mode STREAMED")],
        id="body-mode-streamed",
    ),
    pytest.param(
        _update(_mode, request_body_mode="FULL_DUPLEX_STREAMED"), None, None,
        [("error", "request_body_mode FULL_DUPLEX_STREAMED")], id="body-mode-full-duplex",
    ),
    pytest.param(
        _update(_mode, request_body_mode="BUFFERED_PARTIAL"), None, None,
        [("warning", "request_body_mode BUFFERED_PARTIAL")], id="body-mode-buffered-partial",
    ),
    pytest.param(
        _update(_ext_proc, route_cache_action="RETAIN"), None, None,
        [("error", f"{FILTER}: route_cache_action RETAIN")], id="route-cache-retain",
    ),
    pytest.param(_update(_ext_proc, route_cache_action="CLEAR"), None, None, _NOTHING, id="route-cache-clear"),
    pytest.param(
        _update(_ext_proc, disable_clear_route_cache=True), None, None,
        [("error", f"{FILTER}: disable_clear_route_cache: true")], id="disable-clear-route-cache",
    ),
    pytest.param(
        _update(_ext_proc, message_timeout="0.1s"), None, None,
        [("warning", f"{FILTER}: message_timeout 0.1s is not above server.classifier_timeout_ms (150 ms)")],
        id="timeout-below-deadline",
    ),
    pytest.param(
        _update(_ext_proc, message_timeout="0.15s"), None, None, [("warning", "message_timeout 0.15s is not above")],
        id="timeout-at-deadline",
    ),
    pytest.param(
        _update(_ext_proc, message_timeout={"seconds": 0, "nanos": 160000000}), None, None,
        [("warning", "message_timeout 0.16s leaves 10 ms beyond server.classifier_timeout_ms")],
        id="timeout-too-little-room",
    ),
    pytest.param(
        _drop(_ext_proc, "message_timeout"), _router(server={"classifier_timeout_ms": 180}), None,
        [("warning", "message_timeout (0.2s, the default) leaves 20 ms")], id="timeout-default",
    ),
    pytest.param(
        _update(_ext_proc, message_timeout={"seconds": "1"}), None, None, _NOTHING, id="timeout-whole-seconds"
    ),
    pytest.param(
        _update(_ext_proc, message_timeout="200ms"), None, None, [("warning", "message_timeout '200ms' is not a")],
        id="timeout-not-a-duration",
    ),
    pytest.param(
        _update(_ext_proc, failure_mode_allow=False), None, None,
        [("note", f"{FILTER}: failure_mode_allow false: while the router is down")], id="fail-closed",
    ),
    pytest.param(
        _drop(_ext_proc, "metadata_options"), None, None,
        [("warning", f"{FILTER}: metadata_options.receiving_namespaces.untyped does not list model_router")],
        id="metadata-dropped",
    ),
    pytest.param(
        None, _router(server={"decision_headers_on_response": True}), None,
        [("warning", f"{FILTER}: processing_mode.response_header_mode SKIP, but server.decision_headers_on_response")],
        id="decision-headers-without-response-headers",
    ),
    # its gRPC cluster
    pytest.param(
        lambda e: _ext_proc(e).update(http_service=_ext_proc(e).pop("grpc_service")), None, None,
        [("error", f"{FILTER}: http_service")], id="http-service",
    ),
    pytest.param(
        lambda e: _ext_proc(e)["grpc_service"]["envoy_grpc"].update(cluster_name="nope"), None, None,
        [("error", f"{FILTER}: grpc_service.envoy_grpc.cluster_name 'nope' is not in static_resources.clusters")],
        id="router-cluster-missing",
    ),
    pytest.param(
        _drop(lambda e: _cluster(e, "model_router"), "typed_extension_protocol_options"), None, None,
        [("error", f"{FILTER}, cluster model_router: does not speak HTTP/2")], id="router-cluster-http1",
    ),
    pytest.param(
        _both(
            _drop(lambda e: _cluster(e, "model_router"), "typed_extension_protocol_options"),
            _update(lambda e: _cluster(e, "model_router"), http2_protocol_options={}),
        ),
        None, None, _NOTHING, id="router-cluster-legacy-http2",
    ),
    pytest.param(
        _auto_config, None, None, [("error", "cluster model_router: does not speak HTTP/2")],
        id="router-cluster-auto-plaintext",
    ),
    pytest.param(
        None, None, "127.0.0.1:50052",
        [("warning", f"{FILTER}, cluster model_router: connects to 127.0.0.1:50051, but the router listens on"
                     " 127.0.0.1:50052 (--listen)")],
        id="router-port-listen-flag",
    ),
    pytest.param(
        None, _router(server={"listen": "127.0.0.1:6000"}), None,
        [("warning", "connects to 127.0.0.1:50051, but the router listens on 127.0.0.1:6000 (server.listen)")],
        id="router-port-server-listen",
    ),
    pytest.param(
        None, None, "unix:/run/router.sock",
        [("warning", "connects to 127.0.0.1:50051, but the router listens on unix:/run/router.sock")],
        id="router-unix-socket-tcp-cluster",
    ),
    pytest.param(
        _router_endpoint({"pipe": {"path": "/run/router.sock"}}), None, "unix:/run/router.sock", _NOTHING,
        id="router-unix-socket-same-path",
    ),
    pytest.param(
        _router_endpoint({"pipe": {"path": "/run/other.sock"}}), None, "unix:/run/router.sock",
        [("warning", "connects to the Unix socket /run/other.sock, but the router listens on unix:/run/router.sock")],
        id="router-unix-socket-other-path",
    ),
    pytest.param(
        _update(lambda e: _cluster(e, "model_router"), transport_socket=_TLS), None, None,
        [("warning", "cluster model_router: connects with TLS (transport_socket), but the router serves plaintext")],
        id="tls-to-a-plaintext-router",
    ),
    pytest.param(
        None, _router(server={"tls": {"cert_file": "/tls/crt.pem", "key_file": "/tls/key.pem"}}), None,
        [("warning", "cluster model_router: connects in plaintext, but the router serves TLS")],
        id="plaintext-to-a-tls-router",
    ),
    # routes
    pytest.param(
        lambda e: _routes(e).remove(_route_for(e, "cheap")), None, None,
        [("error", f"{VHOST}: catalog cluster cheap (gpt-4o-mini): on /v1/chat/completions, {CLUSTER_HEADER}:"
                   " cheap takes routes[4] (direct_response 503), not a route for it; likewise on every other path")],
        id="catalog-cluster-without-route",
    ),
    pytest.param(
        None, _add_model("medium"), None,
        [
            ("error", "catalog cluster medium (mistral-small): on /v1/chat/completions, x-model-router-cluster"),
            ("warning", _STALE_LUA),  # its catalog table lacks the new model
        ],
        id="catalog-cluster-unknown-to-envoy",
    ),
    pytest.param(
        lambda e: _route_for(e, "small")["route"].update(cluster="nope"), None, None,
        [("error", "catalog cluster small (llama-3.1-8b-instruct): on /v1/chat/completions, its route, routes[1],"
                   " sends it to cluster nope, which is not in static_resources; likewise on every other path")],
        id="route-to-undefined-cluster",
    ),
    pytest.param(
        lambda e: _routes(e).insert(1, _routes(e)[-3]), None, None,
        [
            ("error", f"cluster {cluster} ({model}): on /v1/chat/completions, {CLUSTER_HEADER}: {cluster} takes"
                      " routes[1] (direct_response 503)")
            for cluster, model in (("small", "llama-3.1-8b-instruct"), ("cheap", "gpt-4o-mini"), ("frontier", "gpt-4o"))
        ],
        id="catch-all-before-the-cluster-routes",
    ),
    pytest.param(
        lambda e: _route_for(e, "small")["match"].update(headers=[{"name": CLUSTER_HEADER, "exact_match": "small"}]),
        None, None, _NOTHING, id="legacy-exact-match",
    ),
    pytest.param(
        lambda e: _route_for(e, "small")["match"]["headers"][0].update(string_match={"safe_regex": {"regex": "sm.ll"}}),
        None, None, _NOTHING, id="regex-header-match",
    ),
    pytest.param(
        lambda e: _route_for(e, "small")["match"]["headers"][0].update(string_match={"prefix": "smallish"}),
        None, None, [("error", "catalog cluster small (llama-3.1-8b-instruct)")], id="header-match-not-the-cluster",
    ),
    pytest.param(
        lambda e: _route_for(e, "small")["match"]["headers"].append({"name": "x-tenant", "present_match": True}),
        None, None, _NOTHING, id="cluster-route-that-also-matches-another-header",
    ),
    pytest.param(
        lambda e: _routes(e).insert(1, {"match": {"prefix": "/", "headers": [{"name": "x-tenant", "exact_match": "a"}]},
                                        "route": {"cluster": "frontier"}}),
        None, None, _NOTHING, id="earlier-route-on-another-header",
    ),
    pytest.param(_one_cluster_header_route, None, None, _NOTHING, id="one-cluster-header-route"),
    pytest.param(
        _one_cluster_header_route, _add_model("medium"), None,
        [("error", "catalog cluster medium (mistral-small): on /v1/chat/completions, routes[1] sends it to the"
                   f" cluster its {CLUSTER_HEADER} names, and there is no such cluster"), ("warning", _STALE_LUA)],
        id="cluster-header-route-to-a-missing-cluster",
    ),
    pytest.param(
        _weighted("frontier"), None, None, _NOTHING, id="weighted-clusters",
    ),
    pytest.param(
        _weighted("nope"), None, None, [("error", "catalog cluster frontier (gpt-4o): on /v1/chat/completions, its"
                                                  " route, routes[3], sends it to cluster nope")],
        id="weighted-clusters-to-a-missing-cluster",
    ),
    pytest.param(_by_the_default_route("frontier"), None, None, _NOTHING, id="default-route-to-the-cluster"),
    pytest.param(
        _by_the_default_route("small"), None, None,
        [("error", f"{VHOST}: catalog cluster small (llama-3.1-8b-instruct): on /v1/chat/completions, {CLUSTER_HEADER}:"
                   " small takes routes[3] (cluster frontier), not a route for it; likewise on every other path")],
        id="default-route-to-another-cluster",
    ),
    pytest.param(
        _by_the_default_route("small", default={"cluster": "small_then_stronger"}), None, None,
        [("warning", f"{VHOST}: a request to /v1/chat/completions without {CLUSTER_HEADER} takes routes[3] (cluster"
                     " small_then_stronger), but policy.default_model gpt-4o is in cluster frontier")],
        id="default-route-to-an-aggregate-whose-first-member-is-the-cluster",
    ),
    pytest.param(
        _by_the_default_route(
            "frontier", default={"weighted_clusters": {"clusters": [{"name": "frontier", "weight": 1}]}}
        ),
        None, None, _NOTHING, id="default-route-to-weighted-clusters-with-the-cluster",
    ),
    pytest.param(
        lambda e: _hcm(e).update(rds={"route_config_name": _hcm(e).pop("route_config")["name"]}), None, None,
        [("note", f"{LISTENER}: routes come from RDS (rds): not checked")], id="rds",
    ),
    pytest.param(
        lambda e: (e["static_resources"]["clusters"].remove(_cluster(e, "model_router")),
                   e.update(dynamic_resources={"cds_config": {"ads": {}}})),
        None, None, [("note", "clusters come from CDS")], id="cds",
    ),
    pytest.param(
        lambda e: (e["static_resources"].pop("listeners"), e.update(dynamic_resources={"lds_config": {"ads": {}}})),
        None, None, [("note", "listeners come from LDS")], id="lds",
    ),
    pytest.param(
        _per_route(_EXT_PROC_OFF), None, None, [("warning", f"{_NO_ROUTER_PATHS} (such as /v1/chat/completions)")],
        id="ext-proc-off-on-the-api-route",
    ),
    pytest.param(
        _update(lambda e: _filter(e, EXT_PROC), disabled=True), None, None, [("warning", _NO_ROUTER_PATHS)],
        id="ext-proc-disabled",
    ),
    pytest.param(
        _both(_update(lambda e: _filter(e, EXT_PROC), disabled=True), _per_route(_ON)), None, None, _NOTHING,
        id="ext-proc-disabled-but-on-for-the-api-route",
    ),
    pytest.param(
        _both(_update(lambda e: _filter(e, EXT_PROC), disabled=True), _per_route(_EXT_PROC_OVERRIDES)), None, None,
        _NOTHING, id="ext-proc-disabled-but-overridden-for-the-api-route",
    ),
    pytest.param(_host_off_routes_on, None, None, _NOTHING, id="ext-proc-off-for-the-host-overridden-on-the-routes"),
    pytest.param(
        _both(_host_off_routes_on, lambda e: _routes(e).remove(_route_for(e, "small"))), None, None,
        [("error", f"{VHOST}: catalog cluster small (llama-3.1-8b-instruct): on /v1/chat/completions, {CLUSTER_HEADER}:"
                   " small takes routes[4] (direct_response 503), not a route for it")],
        id="ext-proc-overridden-on-the-routes-checks-them",
    ),
    pytest.param(_behind_matcher, None, None, _NOTHING, id="ext-proc-behind-a-matcher"),
    pytest.param(
        None, _router(policy={"default_model": "gpt-4o-mini"}), None,
        [
            ("warning", f"{VHOST}: a request to /v1/chat/completions without {CLUSTER_HEADER} takes routes[6] (cluster"
                        " frontier), but policy.default_model gpt-4o-mini is in cluster cheap"),
            ("warning", _STALE_LUA),
        ],
        id="default-route-not-the-default-models",
    ),
    # the rest of the connection manager
    pytest.param(
        _drop(_hcm, "early_header_mutation_extensions"), None, None,
        [("warning", f"{LISTENER}: no early_header_mutation_extensions entry removes {CLUSTER_HEADER}")],
        id="cluster-header-not-removed-early",
    ),
    pytest.param(
        lambda e: _hcm(e)["early_header_mutation_extensions"][0]["typed_config"].update(
            mutations=[{"remove_on_match": {"key_matcher": {"prefix": "x-model-router-"}}}]
        ),
        None, None, _NOTHING, id="cluster-header-removed-early-by-prefix",
    ),
    pytest.param(
        lambda e: _filter(e, "envoy.filters.http.buffer")["typed_config"].update(max_request_bytes=8388608), None, None,
        [
            ("warning", f"{LISTENER}, buffer filter envoy.filters.http.buffer: max_request_bytes 8388608 is above"
                        " limits.max_body_bytes (4194304)"),
            ("warning", f"{_STALE_LUA} (its aliases, default model, catalog clusters or body limit): replace its"
                        " inline_string with the output of model-router fail-open-lua --config FILE --max-body-bytes"
                        " 8388608"),
        ],
        id="body-limit-above-the-routers",
    ),
    pytest.param(
        lambda e: _filter(e, "envoy.filters.http.buffer")["typed_config"].update(max_request_bytes=1048576), None, None,
        [("warning", f"{_STALE_LUA} (its aliases, default model, catalog clusters or body limit): replace its"
                     " inline_string with the output of model-router fail-open-lua --config FILE --max-body-bytes"
                     " 1048576")],
        id="body-limit-below-the-routers",
    ),
    pytest.param(None, _router(policy={"routable_models": ["auto"]}), None, [("warning", _STALE_LUA)], id="stale-lua"),
    pytest.param(
        lambda e: _hcm(e)["http_filters"].remove(_filter(e, LUA)), None, None,
        [("note", f"{LISTENER}: no fail-open filter (model-router fail-open-lua)")], id="no-fail-open-filter",
    ),
    pytest.param(
        lambda e: _vhost(e)["request_headers_to_remove"].remove(OVERRIDE_TOKEN_HEADER),
        _router(security={"override": {"token_sha256": TOKEN}}), None,
        [("warning", f"{VHOST}: request_headers_to_remove does not list {OVERRIDE_TOKEN_HEADER}")],
        id="override-token-not-removed",
    ),
    pytest.param(None, _router(security={"override": {"token_sha256": TOKEN}}), None, _NOTHING, id="override-token"),
]
# fmt: on


@pytest.mark.parametrize(("change_envoy", "change_router", "listen", "want"), CASES)
def test_each_mismatch_is_found(
    change_envoy: Change | None, change_router: Change | None, listen: str | None, want: list[tuple[Severity, str]]
) -> None:
    envoy, router = copy.deepcopy(ENVOY), copy.deepcopy(ROUTER)
    if change_envoy is not None:
        change_envoy(envoy)
    if change_router is not None:
        change_router(router)
    got = [(f.severity, f.message) for f in check_envoy(parse_config(router), envoy, listen)]
    assert len(got) == len(want), got
    assert all(severity == s and text in message for (s, message), (severity, text) in zip(got, want, strict=True)), got


def test_findings_print_as_severity_and_message() -> None:
    assert str(Finding("warning", "listener x: y")) == "warning: listener x: y"


def test_errors_come_first() -> None:
    envoy = copy.deepcopy(ENVOY)
    _update(_ext_proc, failure_mode_allow=False, message_timeout="0.1s", route_cache_action="RETAIN")(envoy)
    settings: Settings = parse_config(ROUTER)
    assert [f.severity for f in check_envoy(settings, envoy)] == ["error", "warning", "note"]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0.2s", 0.2),
        ("1.5s", 1.5),
        ("2s", 2.0),
        ("0.000000001s", 1e-9),
        ({"seconds": 1, "nanos": 500000000}, 1.5),
        ({"seconds": "2"}, 2.0),  # proto JSON writes int64 as a string
        ({"nanos": 200000000}, 0.2),
        ("200ms", None),
        ("0.2", None),
        ("0.0000000001s", None),  # ten fractional digits
        (0.2, None),
        ({}, None),
        ({"seconds": "x"}, None),
        ({"seconds": 1, "minutes": 2}, None),
    ],
)
def test_parse_duration(value: object, seconds: float | None) -> None:
    assert parse_duration(value) == (pytest.approx(seconds) if seconds is not None else None)
