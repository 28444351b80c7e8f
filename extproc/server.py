"""grpc.aio server lifecycle: bind, health service, metrics endpoint, signal handling, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, make_wsgi_app

from extproc.api.model_router.v1 import model_router_pb2_grpc as api_grpc
from extproc.classify import ClassifierThreads
from extproc.config import LimitSettings, parse_listen
from extproc.conversations import ConversationMemory
from extproc.decide import DECIDE_SERVICE, DecisionService
from extproc.errors import CANNOT_START, ConfigError
from extproc.feedback import FeedbackStatus
from extproc.health_http import Health
from extproc.learning import start_learning
from extproc.reload import ReusingLoader, load_model_for, reload_snapshot, watch_config
from extproc.service import ExternalProcessorService
from extproc.snapshot import SnapshotRef, candidate_settings
from extproc.telemetry import Telemetry
from extproc.tls import server_credentials
from extproc.wsgi_server import PER_PEER, ListenError, serve_wsgi

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication

__all__ = ["metrics_app", "serve"]

_log = logging.getLogger("model_router.server")
EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
MESSAGE_HEADROOM = 1 << 20
"""Room in a gRPC message beside a body of ``limits.max_body_bytes``: its headers, attributes and protobuf framing."""


def message_limit(limits: LimitSettings) -> int:
    """The largest gRPC message the router accepts, fixed at start.

    gRPC buffers and decodes a whole message before the handler sees it, so this, not ``limits.max_body_bytes``,
    bounds the memory one stream or Decide call can take (with a fixed 64 MiB, six concurrent Decide calls took the
    router to 684 MB). A body up to the limit plus the headroom still reaches the handler and passes through as
    ``body_too_large``; a larger message is refused with RESOURCE_EXHAUSTED, which Envoy treats as a router failure
    (``failure_mode_allow``: forwarded unrouted). Set Envoy's body limit equal to ``limits.max_body_bytes``.
    """
    return limits.max_body_bytes + MESSAGE_HEADROOM


def metrics_app(registry: CollectorRegistry) -> WSGIApplication:
    """``/metrics`` and nothing else: any other path is 404, so a probe or a typo in a scrape config pointed at this
    port fails instead of passing on the metrics page."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: the metrics are at /metrics\n"]
        body: Iterable[bytes] = metrics(environ, start_response)
        return body

    return app


def _start_metrics(telemetry: Telemetry, listen: str | None) -> Callable[[], None]:
    """Serve ``/metrics`` on ``listen`` (``host:port``); return a stop function."""
    if not listen:
        return lambda: None
    # A scraper needs one connection; capped per client address, one pod holding idle connections cannot take all
    # the slots and blind Prometheus (the k8s NetworkPolicy opens this port to every source).
    return serve_wsgi(listen, metrics_app(telemetry.registry), "metrics-http", max_per_peer=PER_PEER)


@contextlib.contextmanager
def _listening(field: str) -> Iterator[None]:
    """A listener that cannot bind refuses the start like an invalid config: one line naming ``field``, exit 2."""
    try:
        yield
    except ListenError as exc:
        raise ConfigError([f"{field}: {exc}"], CANNOT_START) from None


def _probe(address: str) -> None:
    """Bind ``address`` once with a plain socket and let go, for the OS's reason if it cannot be bound (gRPC only
    says that binding failed); :class:`ListenError` if a ``unix:`` path is not free for gRPC to take."""
    tcp = parse_listen(address, unix=True)
    if tcp is None:
        _probe_unix(address)
        return
    family, kind, proto, _, where = socket.getaddrinfo(*tcp, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: a closed socket's TIME_WAIT is no owner
        sock.bind(where)


def _probe_unix(address: str) -> None:
    """gRPC unlinks any socket file at the path before it binds, even one a running process listens on (a second
    router would take the path and leave the first running but unreachable), and fails with only "Failed to bind"
    on anything else there. So: no file, a test bind; a socket, a connect, refused when something accepts it and
    left to gRPC when nobody does (a stale socket left by a crash); anything else (a regular file, a directory) is
    not gRPC's to take."""
    path = address.removeprefix("unix:")
    if not os.path.lexists(path):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(path)
        os.unlink(path)
        return
    try:
        is_socket = stat.S_ISSOCK(os.stat(path).st_mode)  # through a symbolic link, as gRPC's own check
    except FileNotFoundError:
        is_socket = False  # a dangling symbolic link
    if not is_socket:
        raise ListenError(address, "it exists and is not a socket")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(2)
        try:
            sock.connect(path)
        except ConnectionRefusedError:
            return  # stale: nobody listens, gRPC replaces it
        except (BlockingIOError, TimeoutError):
            pass  # a listener whose backlog is full: still a listener
    raise ListenError(address, "another process is listening on it")


UNIX_SOCKET_MODE = 0o660
"""A ``unix:`` socket's permissions: its owner and its group may connect (an Envoy under another user joins the
group: in Kubernetes, the pod's ``fsGroup`` owns a shared ``emptyDir`` and the files made in it)."""


def _bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> None:
    """Add the port; :class:`ListenError` if it cannot be bound (in use, no such address or directory, no right, a
    ``unix:`` path another process listens on or that is not a socket)."""
    try:
        _probe(address)
        if credentials:
            server.add_secure_port(address, credentials)
        else:
            server.add_insecure_port(address)
        if address.startswith("unix:"):  # bound now; the umask's 0755 let no other user (Envoy's) connect
            os.chmod(address.removeprefix("unix:"), UNIX_SOCKET_MODE)
    except ListenError:
        raise
    except OSError as exc:
        raise ListenError(address, exc) from None
    except RuntimeError:  # gRPC's "Failed to bind", after the probe found nothing wrong (a race, or gRPC's own limits)
        raise ListenError(address, "gRPC could not bind it (its log line says why)") from None


async def serve(
    config_path: Path, snapshots: SnapshotRef, listen: str | None = None, probe: Health | None = None
) -> None:
    """Serve until SIGTERM/SIGINT; SIGHUP reloads ``config_path``. Returns after a graceful stop.

    The port opens only once the classifier is loaded (the caller builds the snapshot first), so gRPC health and
    readiness probes fail until the model is ready; ``probe`` (the ``--health-listen`` port's state) says serving
    once it is. A listener that cannot bind (``server.listen``, ``--listen``, ``telemetry.metrics_listen``,
    ``feedback.listen``) is a ``ConfigError`` naming it, raised after everything already started is closed again.
    """
    first = snapshots.current.settings
    address, field = (listen, "--listen") if listen else (first.server.listen, "server.listen")
    if listen:
        snapshots.command_line = frozenset({"server.listen"})
    try:
        parse_listen(address, unix=True)  # server.listen is validated with the config; --listen here
    except ValueError as exc:
        raise ConfigError([f"{field}: {exc}"]) from None
    credentials = server_credentials(first.server.tls) if first.server.tls else None  # ConfigError before anything
    with contextlib.ExitStack() as undo:  # a failed start closes what it started, so the process exits at once
        telemetry = Telemetry(first.telemetry, logging.getLogger("model_router.decisions"))
        telemetry.config_in_force(snapshots.current.config_digest)
        undo.callback(telemetry.shutdown)
        with _listening("telemetry.metrics_listen"):
            stop_metrics = _start_metrics(telemetry, first.telemetry.metrics_listen)
        undo.callback(stop_metrics)
        with _listening("feedback.listen"):
            learning = start_learning(
                first, lambda: snapshots.current.by_name, telemetry.error, telemetry.feedback_result
            )
        undo.callback(learning.close)
        if learning.feedback is not None:
            sources = [s for s, on in (("grpc", first.server.decision_api), ("http", first.feedback.listen)) if on]
            telemetry.expect_feedback([status.value for status in FeedbackStatus], sources)
        classify = ClassifierThreads(workers=2)
        undo.callback(classify.close, timeout=0)
        # One router per port: with SO_REUSEPORT (gRPC's default on Linux) a second router, e.g. an old process in a
        # restart overlap, would silently share the port and answer part of the traffic with its own config.
        options = [("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", message_limit(first.limits))]
        server = grpc.aio.server(options=options)
        sticky = first.policy.stickiness
        memory = ConversationMemory(sticky.max_entries, sticky.ttl_seconds)  # one memory for ext_proc and Decide
        pb_grpc.add_ExternalProcessorServicer_to_server(
            ExternalProcessorService(snapshots, classify, telemetry, memory=memory, tap=learning.tap), server
        )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        services = [EXT_PROC_SERVICE]
        if first.server.decision_api:
            api_grpc.add_ModelRouterServiceServicer_to_server(
                DecisionService(
                    snapshots,
                    classify,
                    telemetry,
                    memory,
                    tap=dataclasses.replace(learning.tap, via_decide=True),
                    feedback=learning.feedback,
                ),
                server,
            )
            services.append(DECIDE_SERVICE)
            # Reflection only beside the Decide API: it reveals the services, and decision_api: false turns both off.
            reflection.enable_server_reflection([*services, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
        with _listening(field):
            _bind(server, address, credentials)
        await server.start()
        undo.pop_all()
    for name in ("", *services):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if probe is not None:
        probe.serving(asyncio.get_running_loop())
    clusters = ", ".join(sorted({m.cluster for m in snapshots.current.catalog}))
    # Envoy needs a route matching x-model-router-cluster for each (the router cannot see Envoy's routes).
    _log.info(
        "model-router listening on %s (classifier %s; catalog clusters %s)",
        address,
        snapshots.current.model.name,
        clusters,
    )
    print(f"model-router ready on {address}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    reloads: set[asyncio.Task[None]] = set()
    serial = threading.Lock()  # SIGHUP and the file watcher may both reload at once
    load_model = ReusingLoader(load_model_for)
    load_model.seed(snapshots.current.settings, snapshots.current.model)
    candidate = candidate_settings(snapshots.current.settings)
    if candidate is not None and snapshots.current.candidate is not None:
        load_model.seed(candidate, snapshots.current.candidate)

    def reloaded(applied: bool) -> None:
        telemetry.config_reloaded(applied)
        if applied:
            telemetry.config_in_force(snapshots.current.config_digest)

    async def reload() -> None:
        reloaded(
            await asyncio.to_thread(reload_snapshot, config_path, snapshots, load_model, learning.reconfigure, serial)
        )

    def on_sighup() -> None:
        task = loop.create_task(reload())  # the model loads off the event loop; streams keep flowing
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    poll = first.server.config_poll_seconds
    watcher = (
        asyncio.create_task(
            watch_config(
                config_path,
                snapshots,
                reloaded,
                poll,
                load_model,
                learning.reconfigure,
                serial,
                also=(learning.key_file,) if learning.key_file else (),
                on_state=telemetry.config_file_state,
                on_readable=telemetry.config_file_readable,
            )
        )
        if poll
        else None
    )
    await stop.wait()
    if watcher:
        watcher.cancel()

    grace = snapshots.current.settings.server.grace_seconds
    _log.info("stopping: no new streams; draining in-flight streams for up to %.1fs", grace)
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace)
    classify.close(timeout=0)
    await asyncio.to_thread(learning.close)  # flush captured prompts and feedback
    telemetry.shutdown()
    stop_metrics()
    _log.info("stopped")
