"""Append-only JSON Lines files bounded in size and age, written by one background thread from a bounded queue.

Prompt capture and feedback must never slow a request down: the caller (the event loop) only appends a dict to a
bounded in-memory queue (:meth:`Spool.offer` never waits on I/O; a full queue drops the item and counts it), and
one daemon thread encodes the items and appends them to the file.

Retention works without ever rewriting a file. The live file is rotated to ``<path>.1`` (replacing the previous
one) when the next line would take it past half of ``max_bytes``, or when its oldest line is half the TTL old;
``<path>.1`` is deleted as soon as its oldest line is older than the TTL. So the two files together stay under
``max_bytes``, no line outlives the TTL (checked on startup, on every write and on a timer), and a line lives at
least half the TTL unless the size bound rotates it out sooner. Files are created with mode 0600 (an existing file
is set to 0600), never through a symlink; a last line cut short by a crash is closed with a newline before
appending, so it stays one malformed line instead of corrupting the next.

One writer per file. Rotation renames the live file and expiry deletes ``<path>.1``, so two writers of one path
(two router replicas on a shared volume, a restarted process overlapping the old one) would lose lines and break
the size bound. The writer therefore holds an exclusive, non-blocking ``flock`` on ``<path>.lock`` (created 0600,
never through a symlink, like the data files; a separate file because rotation renames the data file) from the
moment the spool opens the path until it closes it. A path whose lock another process holds is refused with
:class:`SpoolBusyError`, before anything is read, rotated or deleted. The lock file is never deleted (deleting it
would let two writers lock two different files of the same name); it stays, empty. A :class:`Spool` keeps the lock
of its path across :meth:`Spool.configure` calls that keep the path (a config reload), so it never fights itself.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from extproc.errors import RouterError

__all__ = [
    "RotatingJsonl",
    "Spool",
    "SpoolBusyError",
    "SpoolLock",
    "SpoolPathError",
    "SpoolTarget",
    "check_spool_path",
    "lock_path",
    "open_private_append",
    "rotated_path",
]

_log = logging.getLogger("model_router.spool")
_MODE = 0o600
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_MAX_WAIT = 60.0
"""Longest the writer thread sleeps between retention checks when nothing is due sooner."""
_LOG_EVERY = 60.0
"""At most one "dropped" warning per this many seconds."""


@dataclass(frozen=True, slots=True)
class SpoolTarget:
    """Where a spool writes and how much it may keep."""

    path: Path
    max_bytes: int
    """Bound of the live file and ``<path>.1`` together."""
    ttl_seconds: float | None = None
    """No line is kept longer than this; None = bounded by size only."""


def open_private_append(path: Path) -> int:
    """A file descriptor appending to ``path``, created or made owner-only (0600), never through a symlink: the files
    the router and its tools write hold prompts."""
    fd = os.open(path, _OPEN_FLAGS, _MODE)
    try:
        os.fchmod(fd, _MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def lock_path(path: Path) -> Path:
    """The lock file of the spool at ``path``: ``<path>.lock``."""
    return path.with_name(path.name + ".lock")


def rotated_path(path: Path) -> Path:
    """The rotated predecessor of the spool file at ``path``: ``<path>.1``."""
    return path.with_name(path.name + ".1")


class SpoolPathError(RouterError):
    """A spool cannot take this path: its lock file cannot be created or opened (a missing, unwritable or read-only
    directory), so nothing could ever be written there."""

    def __init__(self, path: Path, message: str | None = None) -> None:
        self.path = path
        self.lock_path = lock_path(path)
        super().__init__(message or f"cannot open {self.lock_path}")


def check_spool_path(path: Path) -> None:
    """:class:`SpoolPathError` if ``path`` can never be a spool's file (a directory: the lock file beside it was made,
    then every line failed to open), or its directory does not exist. A missing directory was created once: a typo
    (``/var/lib/model-routr/``) then wrote to the container's own filesystem, beside the volume meant for it, and
    the lines were lost at the next restart."""
    if path.is_dir():
        raise SpoolPathError(path, f"{path} is a directory")
    if not path.parent.is_dir():
        what = "is not a directory" if path.parent.exists() else "does not exist (create it, or mount a volume there)"
        raise SpoolPathError(path, f"{path.parent} {what}")


class SpoolBusyError(SpoolPathError):
    """Another process holds the lock of a spool path: it is writing (rotating, expiring) those files."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            path,
            f"another process is writing {path} (it holds {lock_path(path)}); give each router process its own "
            "path, or stop the other one",
        )


def _open_lock_file(path: Path) -> tuple[int, tuple[int, int]]:
    """A descriptor of ``<path>.lock`` (created 0600, never through a symlink) and the file's (device, inode), which
    name it however ``path`` is spelled. The directory is never made (:func:`check_spool_path`)."""
    fd = open_private_append(lock_path(path))
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd, (st.st_dev, st.st_ino)


class SpoolLock:
    """The exclusive ``flock`` on ``<path>.lock`` that makes this process the one writer of ``path``.

    Held until :meth:`release` (or the process exits: the kernel drops it with the descriptor, so a crash never
    leaves a stale lock). ``key`` names the lock file (device, inode), however the path is spelled.
    """

    def __init__(self, fd: int, path: Path, key: tuple[int, int]) -> None:
        """Lock the open lock-file descriptor ``fd`` of ``path`` (``key``: its file); ``fd`` is closed if the lock is
        not taken."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolBusyError(path) from None
        except BaseException:
            os.close(fd)
            raise
        self.path = path
        self.key = key
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: Path) -> SpoolLock:
        """Take the lock of ``path`` now, or raise :class:`SpoolBusyError` (any other ``OSError`` as raised)."""
        fd, key = _open_lock_file(path)
        return cls(fd, path, key)

    def release(self) -> None:
        """Let another process write ``path`` (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor of the open file drops the flock
            self._fd = None


_STAMP_LINES = 1000
"""How many leading lines may be torn or foreign before a file counts as unreadable."""


def _first_stamp(path: Path, time_key: str) -> float | None:
    """The time of the first readable line of ``path``; None if the file is missing or empty, 0.0 if none of its
    first lines has a time (or it cannot be read).

    0.0 (the epoch) makes an unreadable file expire at once: for personal data, deleting is the safe side. A torn
    line (a short write on a full disk) is skipped rather than condemning the whole file.
    """
    try:
        with path.open("rb") as f:
            lines = [line for _, line in zip(range(_STAMP_LINES), f, strict=False)]
    except FileNotFoundError:
        return None
    except OSError:
        return 0.0
    if not lines:
        return None
    for line in lines:
        try:
            stamp = orjson.loads(line).get(time_key)
        except (orjson.JSONDecodeError, AttributeError):
            continue
        if isinstance(stamp, (int, float)) and not isinstance(stamp, bool):
            return float(stamp)
    return 0.0


def _last_byte(path: Path) -> bytes:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


class RotatingJsonl:
    """One live JSON Lines file and its rotated predecessor, kept within a :class:`SpoolTarget`'s bounds.

    Synchronous and single-threaded: :class:`Spool` calls it from its writer thread only. It touches the files only
    while ``target.path``'s :class:`SpoolLock` is held: ``lock`` is one the caller holds (and releases), or None to
    take one here (:class:`SpoolBusyError` if another process holds it), released by :meth:`close`.
    """

    def __init__(
        self,
        target: SpoolTarget,
        time_key: str,
        clock: Callable[[], float] = time.time,
        lock: SpoolLock | None = None,
    ) -> None:
        self.target = target
        self._time_key = time_key
        self._clock = clock
        self._fd: int | None = None
        self._size = 0
        self._torn = False
        self._oldest: float | None = None
        self._previous_oldest: float | None = None
        self._previous_size = 0
        self._own_lock = SpoolLock.acquire(target.path) if lock is None else None
        try:
            self._open()
            self.maintain()
        except BaseException:
            self.close()
            raise

    @property
    def previous_path(self) -> Path:
        """The rotated file, ``<path>.1``."""
        return rotated_path(self.target.path)

    @property
    def line_limit(self) -> int:
        """The largest line this file accepts (half of ``max_bytes``, newline included)."""
        return self.target.max_bytes // 2

    def _open(self) -> None:
        path = self.target.path
        fd = open_private_append(path)  # a directory removed since start is a write error, not made again elsewhere
        try:
            self._size = os.fstat(fd).st_size
            if self._size and _last_byte(path) != b"\n":
                self._size += os.write(fd, b"\n")
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._oldest = _first_stamp(path, self._time_key)
        self._previous_oldest = _first_stamp(self.previous_path, self._time_key)
        try:
            self._previous_size = self.previous_path.stat().st_size
        except FileNotFoundError:
            self._previous_size = 0

    def retarget(self, target: SpoolTarget) -> None:
        """Apply new bounds (same path) at once."""
        self.target = target
        self.maintain()

    def append(self, line: bytes, stamp: float) -> bool:
        """Append one encoded line (ending in a newline); False if it is too large to keep at all."""
        if len(line) > self.line_limit:
            return False
        if self._fd is None:
            self._open()
        if self._size and self._size + len(line) > self.line_limit:
            self._rotate()
        assert self._fd is not None
        if self._torn:  # end the fragment a failed write left, so this line starts a line of its own
            self._size += os.write(self._fd, b"\n")
            self._torn = False
        self._write_all(line)
        if self._oldest is None:
            self._oldest = stamp
        self.maintain()
        return True

    def _write_all(self, line: bytes) -> None:
        """``os.write`` until the whole line is out: a full disk may take part of it and then fail."""
        assert self._fd is not None
        view, done = memoryview(line), 0
        try:
            while done < len(line):
                done += os.write(self._fd, view[done:])
        finally:
            self._size += done
            self._torn = 0 < done < len(line)

    def _rotate(self) -> None:
        """The live file becomes ``<path>.1`` (the previous ``.1`` is gone); a new, empty live file is opened."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._size:
            os.replace(self.target.path, self.previous_path)
            self._previous_oldest = self._oldest
        self._oldest = None
        self._size = 0
        self._torn = False  # a fragment left in the old file: its reader skips it; the new file starts clean
        self._open()

    def _drop_previous(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.previous_path.unlink()
        self._previous_oldest = None
        self._previous_size = 0

    def maintain(self) -> float | None:
        """Rotate or delete what is due now; return when the next check is due (None: nothing ever will be)."""
        now = self._clock()
        ttl = self.target.ttl_seconds
        if self._size > self.line_limit:  # the bound shrank on reload
            self._rotate()
        if self._previous_size > self.line_limit:
            self._drop_previous()
        if ttl is None:
            return None
        if self._previous_oldest is not None and self._previous_oldest + ttl <= now:
            self._drop_previous()
        if self._oldest is not None and self._oldest + ttl / 2 <= now:
            self._rotate()
            if self._previous_oldest is not None and self._previous_oldest + ttl <= now:
                self._drop_previous()
        due = []
        if self._oldest is not None:
            due.append(self._oldest + ttl / 2)
        if self._previous_oldest is not None:
            due.append(self._previous_oldest + ttl)
        return min(due, default=None)

    def close(self) -> None:
        """Close the live file (everything written is already in the OS: each line is one ``write``), then release
        the lock if this object took it."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._own_lock is not None:
            self._own_lock.release()
            self._own_lock = None


class Spool:
    """A bounded queue of JSON objects and the one thread that appends them to a :class:`RotatingJsonl`.

    ``on_drop(reason)`` counts what could not be kept (``<name>_queue_full``, ``<name>_too_large``,
    ``<name>_write_failed``); it is called on the offering thread for a full queue, on the configuring thread for a
    lock file it cannot create, and on the writer thread otherwise, and never receives the item's content.

    The path's :class:`SpoolLock` is taken by :meth:`configure`, on the caller's thread, so a path another process
    writes is refused right there; the writer thread releases it after closing the file. The spool counts its
    references to each lock it holds, so a new target on a path it already holds (a reload that keeps the path, or
    one back to a path whose switch is still queued) shares the lock instead of fighting itself over it.
    """

    def __init__(
        self,
        name: str,
        time_key: str,
        on_drop: Callable[[str], None],
        capacity: int = 1024,
        clock: Callable[[], float] = time.time,
        start: bool = True,
    ) -> None:
        self.name = name
        self._time_key = time_key
        self._on_drop = on_drop
        self._capacity = capacity
        self._clock = clock
        self._cond = threading.Condition()
        self._items: collections.deque[tuple[Mapping[str, Any], Callable[[bool], None] | None]] = collections.deque()
        self._pending: tuple[SpoolTarget, SpoolLock] | tuple[None, None] | None = None
        self._closed = False
        self._file: RotatingJsonl | None = None
        self._file_lock: SpoolLock | None = None
        self._locks: dict[tuple[int, int], tuple[SpoolLock, int]] = {}  # lock file -> (its lock, references)
        self._locks_guard = threading.Lock()  # taken on the configuring thread, released on the writer thread
        self._next_due: float | None = None
        self.dropped: collections.Counter[str] = collections.Counter()
        """What could not be kept, by reason (also reported through ``on_drop``)."""
        self._stats_lock = threading.Lock()  # drops are counted on the offering threads and on the writer thread
        self._last_warning = -_LOG_EVERY
        self._thread = threading.Thread(target=self._run, name=f"{name}-writer", daemon=True)
        if start:
            self._thread.start()

    def configure(self, target: SpoolTarget | None) -> None:
        """Write to ``target`` from now on (None: stop writing; items offered meanwhile are discarded).

        Takes ``target.path``'s lock first (a little file I/O: call it at start-up and on reload, not per request).
        Raises :class:`SpoolBusyError` if another process holds it, or :class:`SpoolPathError` if the lock file
        cannot be created or opened, and then changes nothing: the spool keeps its current file. (Errors writing
        later, such as a full disk, are logged and counted per line instead: the router keeps serving.)
        """
        pending: tuple[SpoolTarget, SpoolLock] | tuple[None, None] = (None, None)
        if target is not None:
            check_spool_path(target.path)
            try:
                pending = (target, self._acquire(target.path))
            except OSError as exc:
                lock = lock_path(target.path)
                raise SpoolPathError(target.path, f"cannot open {lock}: {exc.strerror or exc}") from None
        with self._cond:
            if self._closed:  # the writer is gone: nobody would ever apply (and release) it
                stale = pending[1]
            else:
                stale = self._pending[1] if self._pending is not None else None  # replaced before it was applied
                self._pending = pending
                self._cond.notify()
        self._release(stale)

    def _acquire(self, path: Path) -> SpoolLock:
        """One more reference to ``path``'s lock: the one this spool holds already, or a new one."""
        fd, key = _open_lock_file(path)
        with self._locks_guard:
            held, refs = self._locks.get(key, (None, 0))
            if held is not None:
                # A second open file: locking it would conflict with our own lock. Closing it leaves that lock alone
                # (a flock belongs to the open file it was taken on, unlike fcntl record locks).
                os.close(fd)
            else:
                held = SpoolLock(fd, path, key)
            self._locks[key] = (held, refs + 1)
            return held

    def _release(self, lock: SpoolLock | None) -> None:
        """Drop one reference to ``lock``; the last one releases it."""
        if lock is None:
            return
        with self._locks_guard:
            refs = self._locks[lock.key][1] - 1
            if refs > 0:
                self._locks[lock.key] = (lock, refs)
                return
            del self._locks[lock.key]
        lock.release()

    def offer(self, item: Mapping[str, Any], written: Callable[[bool], None] | None = None) -> bool:
        """Queue ``item`` for writing without waiting; False (and counted) if the queue is full or closed.

        ``written(ok)`` is called on the writer thread once the line is appended (True) or lost (False: the write
        failed, the line is too large, or writing was turned off meanwhile); it must not block or raise.
        """
        with self._cond:
            if not self._closed and len(self._items) < self._capacity:
                self._items.append((item, written))
                self._cond.notify()
                return True
        self._drop("queue_full")
        return False

    def _drop(self, what: str) -> None:
        reason = f"{self.name}_{what}"
        now = time.monotonic()
        with self._stats_lock:
            self.dropped[reason] += 1
            count = self.dropped[reason]
            warn = now - self._last_warning >= _LOG_EVERY
            if warn:
                self._last_warning = now
        self._on_drop(reason)
        if warn:
            _log.warning("%s: %s; lines dropped (%d so far)", self.name, what.replace("_", " "), count)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, close the file and stop the thread (new offers are dropped from now on)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        elif not self._thread.ident:  # never started (tests): write on this thread
            self._run()

    def _wait_seconds(self) -> float:
        if self._next_due is None:
            return _MAX_WAIT
        return min(_MAX_WAIT, max(0.0, self._next_due - self._clock()))

    def _run(self) -> None:
        while True:
            with self._cond:
                if not (self._items or self._pending or self._closed):
                    self._cond.wait(self._wait_seconds())
                items = list(self._items)
                self._items.clear()
                pending, self._pending = self._pending, None
                closed = self._closed
            if pending is not None:
                self._switch(*pending)
            for item, written in items:
                ok = self._write(item)
                if written is not None:
                    try:
                        written(ok)
                    except Exception:  # the writer thread must survive a caller's bug
                        _log.exception("%s: a write callback failed", self.name)
            self._maintain()
            if closed:
                self._close_file()
                return

    def _close_file(self) -> None:
        """Close the current file, then release its lock (never before: another writer could start meanwhile)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._release(self._file_lock)
        self._file_lock = None

    def _switch(self, target: SpoolTarget | None, lock: SpoolLock | None) -> None:
        current = self._file
        if current is not None and target is not None and current.target.path == target.path:
            self._release(lock)  # the same lock the current file holds a reference to
            try:
                current.retarget(target)
            except OSError as exc:
                self._failed(exc)
            return
        self._close_file()
        if target is not None:
            try:
                self._file = RotatingJsonl(target, self._time_key, self._clock, lock=lock)
                self._file_lock = lock
            except OSError as exc:
                _log.error("%s: cannot open %s: %s", self.name, target.path, exc.strerror)
                self._drop("write_failed")
                self._release(lock)

    def _write(self, item: Mapping[str, Any]) -> bool:
        """Append one line; whether it was written."""
        file = self._file
        if file is None:
            return False  # turned off while the item was queued
        try:
            line = orjson.dumps(item) + b"\n"
        except (orjson.JSONEncodeError, TypeError):
            self._drop("write_failed")
            return False
        stamp = item.get(self._time_key)
        stamp = float(stamp) if isinstance(stamp, (int, float)) else self._clock()
        try:
            if not file.append(line, stamp):
                self._drop("too_large")
                return False
        except OSError as exc:
            self._failed(exc)
            return False
        return True

    def _maintain(self) -> None:
        file = self._file
        if file is None:
            self._next_due = None
            return
        try:
            self._next_due = file.maintain()
        except OSError as exc:
            self._next_due = self._clock() + _MAX_WAIT
            self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        """A file operation failed: logged (path and error, never content) and counted, never raised."""
        path = self._file.target.path if self._file is not None else None
        _log.error("%s: writing %s failed: %s", self.name, path, exc.strerror or exc)
        self._drop("write_failed")
