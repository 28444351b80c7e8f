"""Builds and validates a new Snapshot from the config file, then swaps one reference; on error keeps the old one.

A reload is all or nothing: the new settings are first applied to the parts that live outside the snapshot (the
capture writer's file, via ``apply``), and a refusal there rejects the whole reload like an invalid file would, so
the running config never ends up half applied. Reloads run one at a time (SIGHUP and the file watcher may race).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from classifier.loader import DEFAULT_MODEL_DIR, load_difficulty_model
from classifier.model import DifficultyModel
from extproc.config import Settings, load_config, read_config_file
from extproc.errors import ConfigError
from extproc.fail_open_lua import render_fail_open_lua
from extproc.snapshot import Snapshot, SnapshotRef, build_snapshot

__all__ = [
    "Apply",
    "ReusingLoader",
    "load_model_for",
    "load_snapshot",
    "reload_snapshot",
    "restart_only_changes",
    "watch_config",
]

_log = logging.getLogger("model_router.reload")

Apply = Callable[[Settings], None]
"""Applies new settings outside the snapshot before it is swapped in; raises ``ConfigError`` to reject the reload."""


def _apply_nothing(_settings: Settings) -> None:
    return None


def load_model_for(settings: Settings) -> DifficultyModel:
    """Load the classifier the settings ask for; any failure is a ``ConfigError`` naming the field."""
    cfg = settings.classifier
    try:
        return load_difficulty_model(cfg.kind, cfg.model_dir)
    except Exception as exc:
        field = "classifier.model_dir" if cfg.model_dir else "classifier.kind"
        raise ConfigError([f"{field}: cannot load {cfg.kind} model: {exc}"]) from exc


_ModelKey = tuple[str, str, tuple[tuple[str, int, int], ...]]


def _model_key(settings: Settings) -> _ModelKey:
    """What :func:`load_model_for` reads: the kind, the directory, and each of its files' size and modification
    time (a model retrained into the same directory is a different model)."""
    cfg = settings.classifier
    directory = cfg.model_dir or (DEFAULT_MODEL_DIR if cfg.kind == "onnx" else None)
    files: list[tuple[str, int, int]] = []
    if directory is not None:
        with contextlib.suppress(OSError):
            for entry in sorted(directory.iterdir()):
                with contextlib.suppress(OSError):
                    stat = entry.stat()
                    files.append((entry.name, stat.st_size, stat.st_mtime_ns))
    return cfg.kind, str(directory), tuple(files)


class ReusingLoader:
    """:func:`load_model_for` for reloads: a config whose classifier settings and model files did not change gets
    the model already loaded. Every reload loaded the ONNX model again, which cost 23% of the throughput during a
    storm of SIGHUPs and missed classifier deadlines meanwhile. Keeps the models of the last ``size`` keys: the live
    model and the candidate, so a replaced model's memory is given back."""

    def __init__(self, load: Callable[[Settings], DifficultyModel] = load_model_for, size: int = 2) -> None:
        self._load = load
        self._size = size
        self._models: dict[_ModelKey, DifficultyModel] = {}
        self._lock = threading.Lock()  # SIGHUP's reload and the watcher's run on threads (one at a time, but still)

    def seed(self, settings: Settings, model: DifficultyModel) -> None:
        """Remember ``model`` as what ``settings`` load (the model loaded at start)."""
        with self._lock:
            self._remember(_model_key(settings), model)

    def __call__(self, settings: Settings) -> DifficultyModel:
        key = _model_key(settings)
        with self._lock:
            model = self._models.get(key)
        if model is None:
            model = self._load(settings)
            with self._lock:
                self._remember(key, model)
        return model

    def _remember(self, key: _ModelKey, model: DifficultyModel) -> None:
        self._models.pop(key, None)
        self._models[key] = model  # the most recent last
        while len(self._models) > self._size:
            del self._models[next(iter(self._models))]


def load_snapshot(
    path: Path, load_model: Callable[[Settings], DifficultyModel] = load_model_for, data: bytes | None = None
) -> Snapshot:
    """Read (unless ``data`` holds its bytes), validate and resolve the config at ``path`` into a ready snapshot,
    with the digest of the bytes read."""
    data = read_config_file(path) if data is None else data
    snapshot = build_snapshot(load_config(path, data), load_model)
    return dataclasses.replace(snapshot, config_digest=hashlib.sha256(data).digest())


def reload_snapshot(
    path: Path,
    ref: SnapshotRef,
    load_model: Callable[[Settings], DifficultyModel] = load_model_for,
    apply: Apply = _apply_nothing,
    serial: threading.Lock | None = None,
) -> bool:
    """Swap in a snapshot built from ``path``; return False (and keep the running one) if it is invalid or ``apply``
    refuses it. ``serial`` (the server's one reload lock) keeps two reloads from interleaving."""
    with serial if serial is not None else contextlib.nullcontext():
        return _reload(path, ref, load_model, apply)


def _reload(path: Path, ref: SnapshotRef, load_model: Callable[[Settings], DifficultyModel], apply: Apply) -> bool:
    data: bytes | None = None
    failed_load: list[tuple[Settings, _ModelKey]] = []

    def load(settings: Settings) -> DifficultyModel:
        key = _model_key(settings)  # before the load: a copy that completes during it is then a change
        try:
            return load_model(settings)
        except Exception:
            failed_load.append((settings, key))
            raise

    try:
        data = read_config_file(path)
        snapshot = load_snapshot(path, load, data)
        apply(snapshot.settings)
    except Exception as exc:
        ref.rejected = None if data is None else hashlib.sha256(data).digest()
        ref.rejected_model = failed_load[0] if failed_load else None
        if isinstance(exc, ConfigError):
            _log.error("config reload rejected, keeping the running config: %s", exc)
        else:  # e.g. a model directory that fails to load: still a rejected reload, never a crash
            _log.error("config reload failed (%s: %s), keeping the running config", type(exc).__name__, exc)
        return False
    ref.rejected, ref.rejected_model = None, None
    # Against what runs (the settings at start), not the last reload: a revert is no restart, and a pending change
    # is said again on every reload until a restart.
    pending = [key for key in restart_only_changes(ref.first, snapshot.settings) if key not in ref.command_line]
    if snapshot.settings.limits.max_body_bytes > ref.first.limits.max_body_bytes:  # server.message_limit: at start
        pending.append("limits.max_body_bytes (above the value at start: larger gRPC messages are refused)")
    stale_lua = render_fail_open_lua(ref.current.settings) != render_fail_open_lua(snapshot.settings)
    new_clusters = sorted({m.cluster for m in snapshot.catalog} - {m.cluster for m in ref.current.catalog})
    ref.current = snapshot
    if pending:  # applied, but these keys were read at start: say so, or an operator believes e.g. feedback is off
        _log.warning("config reloaded from %s; needs a restart to take effect: %s", path, ", ".join(pending))
    else:
        _log.info("config reloaded from %s", path)
    if new_clusters:  # the router cannot see Envoy's routes: without one, the shipped configs answer 503
        _log.warning(
            "config reloaded with new catalog cluster(s) %s: Envoy needs a route matching x-model-router-cluster for"
            " each, or their requests get 503 no_route_for_cluster (the shipped configs) or go to its default route"
            " (README, Envoy settings)",
            ", ".join(new_clusters),
        )
    if stale_lua:  # Envoy's copy of these tables acts only while the router is down: a stale one shows only then
        _log.warning(
            "the catalog, policy.routable_models or policy.default_model changed: regenerate Envoy's fail-open filter"
            " with `model-router fail-open-lua --config %s`",
            path,
        )
    return True


def restart_only_changes(old: Settings, new: Settings) -> list[str]:
    """The changed keys that only a restart applies (README "Configuration"): listeners, TLS, log level, telemetry
    except what is read per request, feedback, the stickiness memory's size."""

    def read_at_start(s: Settings) -> dict[str, object]:
        server = s.server.model_dump(include={"listen", "decision_api", "log_level", "config_poll_seconds", "tls"})
        telemetry = s.telemetry.model_dump(exclude={"response_usage", "log_prompts"})
        return {
            **{f"server.{k}": v for k, v in server.items()},
            **{f"telemetry.{k}": v for k, v in telemetry.items()},
            **{f"feedback.{k}": v for k, v in s.feedback.model_dump().items()},
            "policy.stickiness.max_entries": s.policy.stickiness.max_entries,
        }

    before, after = read_at_start(old), read_at_start(new)
    return [key for key in after if after[key] != before[key]]


_UNREADABLE_POLLS = 3
"""Polls in a row the config file must be unreadable before the watcher says so (once)."""


def _fingerprint(path: Path) -> bytes | None:
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except OSError:
        return None


async def watch_config(
    path: Path,
    ref: SnapshotRef,
    on_result: Callable[[bool], None],
    interval: float,
    load_model: Callable[[Settings], DifficultyModel] = load_model_for,
    apply: Apply = _apply_nothing,
    serial: threading.Lock | None = None,
    also: Sequence[Path] = (),
    on_state: Callable[[bool], None] = lambda _ok: None,
    on_readable: Callable[[bool], None] = lambda _ok: None,
) -> None:
    """Poll ``path`` and the files ``also`` names (read by ``apply``, e.g. the feedback signing keys) every
    ``interval`` seconds and reload when their content changes (runs until cancelled). ``on_result`` hears each
    reload's outcome; ``on_state``, on every other settled poll, whether the file is not one a reload refused (a
    refused file put back to the running config's content is fine again without a reload); ``on_readable``, that
    the file could not be read on several polls in a row (False), and that it can be again (True).

    Content hashing, not mtime, so editors that write in place and ConfigMap symlink swaps both count, and a
    touched-but-unchanged file does not reload. The file is compared with the bytes the running snapshot was built
    from (``Snapshot.config_digest``), not with the file as the watcher first saw it: an edit made while the model
    loaded at start is applied, and a SIGHUP reload of the same edit is not repeated. A change is acted on once the
    same content is read on two polls in a row, so a file being written in pieces is not applied half written (an
    atomic rename or a ConfigMap swap takes one poll more). The model is loaded off the event loop.
    """

    def fingerprint() -> tuple[bytes | None, ...] | None:
        config = _fingerprint(path)  # unreadable (e.g. mid-swap): wait; an unreadable `also` file is a change
        return None if config is None else (config, *(_fingerprint(p) for p in also))

    previous = fingerprint()
    also_seen = previous[1:] if previous is not None else None
    unreadable = 0  # polls in a row; a ConfigMap's symlink swap can miss one, a deleted file misses them all
    while True:
        await asyncio.sleep(interval)
        current = fingerprint()
        if current is not None and unreadable >= _UNREADABLE_POLLS:
            _log.info("config file %s can be read again", path)
            on_readable(True)
        unreadable = unreadable + 1 if current is None else 0
        if unreadable == _UNREADABLE_POLLS:
            _log.warning("config file %s cannot be read; keeping the running config until it can", path)
            on_readable(False)
        settled, previous = current is not None and current == previous, current
        if current is None or not settled:
            continue
        config, also_now = current[0], current[1:]
        # The running config, or one a reload (this watcher's or SIGHUP's) refused: not tried again each poll,
        # unless what refused it was a model that failed to load and has changed since (it appeared, or was fixed).
        changed = config not in (ref.current.config_digest, ref.rejected) or also_now != also_seen
        if not changed and config == ref.rejected and ref.rejected_model is not None:
            settings, key = ref.rejected_model
            changed = _model_key(settings) != key
        if not changed:
            on_state(config != ref.rejected)
            continue
        also_seen = also_now
        on_result(await asyncio.to_thread(reload_snapshot, path, ref, load_model, apply, serial))
