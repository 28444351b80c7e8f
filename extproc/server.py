"""grpc.aio server lifecycle: bind, health service, signal handling, graceful stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from extproc.record import LogSink
from extproc.reload import reload_snapshot
from extproc.service import ExternalProcessorService, executor_classify
from extproc.snapshot import SnapshotRef

__all__ = ["serve"]

_log = logging.getLogger("model_router.server")
EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"


async def serve(config_path: Path, snapshots: SnapshotRef, listen: str | None = None) -> None:
    """Serve until SIGTERM/SIGINT; SIGHUP reloads ``config_path``. Returns after a graceful stop."""
    settings = snapshots.current.settings.server
    address = listen or settings.listen
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="classify")
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 1), ("grpc.max_receive_message_length", 64 << 20)]
    )
    service = ExternalProcessorService(
        snapshots, executor_classify(executor), LogSink(logging.getLogger("model_router.decisions"))
    )
    pb_grpc.add_ExternalProcessorServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if server.add_insecure_port(address) == 0 and not address.startswith("unix:"):
        raise OSError(f"cannot listen on {address}")
    await server.start()
    for name in ("", EXT_PROC_SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    _log.info("model-router listening on %s (classifier %s)", address, snapshots.current.model.name)
    print(f"model-router ready on {address}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: reload_snapshot(config_path, snapshots))
    await stop.wait()

    _log.info("stopping: draining in-flight streams for up to %.1fs", settings.grace_seconds)
    await health_servicer.enter_graceful_shutdown()
    await server.stop(settings.grace_seconds)
    executor.shutdown(wait=False, cancel_futures=True)
    _log.info("stopped")
