"""Replace a model directory in one step: write a complete sibling, then swap it in (``model-router adapt --out``).

Approach:

1. Every file is written into a fresh hidden sibling, ``.<name>.tmp-<pid>`` (same parent as ``out``, so the same
   filesystem and ``rename`` is atomic), each file fsynced, then the directory itself. ``out`` is not touched.
2. ``out`` is re-checked (:func:`check_target`: it may have changed while the model was fitted), then swapped:

   - ``out`` does not exist: ``rename(tmp, out)``;
   - ``out`` exists, on Linux: ``renameat2(tmp, out, RENAME_EXCHANGE)`` swaps the two directories in one system
     call, then the old one, now under the temporary name, is removed;
   - ``out`` exists and the exchange is unsupported (not Linux, or a filesystem without it): ``out`` is renamed
     aside to ``.<name>.old-<pid>``, the new one renamed in, the old one removed. If the second rename fails the old
     one is renamed back.
3. The parent directory is fsynced, so the swap survives a power cut.

What a reader of ``out`` can observe, at any instant: the complete old directory or the complete new one, never a
directory with some files written, nor a mix of old and new files, because a directory is never modified in place.
``out`` is never absent during a replacement, except on the fallback path for the microseconds between its two
renames (a load then fails with "missing", which a config hot reload rejects, keeping the running config). A reader
that opens the files one at a time *by path* across the swap, as the loader does, can still take some files from
each version: the loader's parity check (:mod:`classifier.onnx_model`) rejects that, and a retry sees the new one.

Why not versioned directories behind a symlink flipped with ``rename``: it also never shows a missing ``out``, but it
changes what ``out`` is (a symlink; turning an existing directory into one still needs a swap), leaves versions to
collect, and gives a path-by-path reader nothing more than the exchange does.

On any exception before the swap (a write error, a full disk, Ctrl-C), the temporary directory is removed and
``out`` is exactly as it was. Only SIGKILL or a power cut can leave a ``.<name>.tmp-<pid>`` behind (harmless, safe to
delete) or, on the fallback path and exactly between its two renames, ``out`` missing with the old version at
``.<name>.old-<pid>`` (rename it back).

``out`` is refused, never deleted, when it is not something this module would write: a symlink, a file, or a
non-empty directory without ``metadata.json``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["MARKER_FILE", "OutDirError", "check_target", "check_writable", "publish_dir"]

MARKER_FILE = "metadata.json"
"""A directory holding this file is a model directory and may be replaced."""
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP})


class OutDirError(Exception):
    """``out`` is something this module refuses to replace."""


def check_target(out: Path) -> Path:
    """``out`` as an absolute path whose last component is a real name; :class:`OutDirError` if it may not be
    replaced: a symlink, anything but a directory, or a non-empty directory without :data:`MARKER_FILE`."""
    target = out.resolve() if out.name in ("", "..") else out.parent.resolve() / out.name
    if target == target.parent:
        raise OutDirError(f"{out}: cannot replace a filesystem root; name a new directory")
    if target.is_symlink():
        raise OutDirError(
            f"{out} is a symbolic link; name the directory it points to ({target.resolve()}) or a new path"
        )
    if not target.exists():
        return target
    if not target.is_dir():
        raise OutDirError(f"{out} exists and is not a directory; refusing to replace it (name a new path)")
    if not (target / MARKER_FILE).is_file() and any(target.iterdir()):
        raise OutDirError(
            f"{out} is a non-empty directory without {MARKER_FILE}, so not a model directory; refusing to replace"
            " it (name a new path, or an existing model directory to replace)"
        )
    return target


def check_writable(target: Path) -> None:
    """Raise the ``OSError`` that :func:`publish_dir` would meet creating its temporary sibling of ``target`` (an
    absolute path, as :func:`check_target` returns it): a read-only or pseudo filesystem, a parent that is a file.
    The probe is made, and removed, in the nearest existing ancestor (``publish_dir`` creates missing parents)."""
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    _fresh(parent, f".{target.name}.tmp-{os.getpid()}", mkdir=True).rmdir()


def publish_dir(out: Path, files: Mapping[str, bytes]) -> list[str]:
    """Make ``out`` a directory holding exactly ``files`` (name -> bytes), atomically (see the module docstring).

    Raises :class:`OutDirError` (see :func:`check_target`) or :class:`OSError`, with ``out`` left as it was. Returns
    warnings about steps after the swap that failed (the new directory is in place): removing the old one, fsyncing
    the parent."""
    target = check_target(out)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh(parent, f".{target.name}.tmp-{os.getpid()}", mkdir=True)
    try:
        for name, payload in files.items():
            _write_file(tmp / name, payload)
        _fsync(tmp)
        check_target(target)
        if target.exists():
            os.chmod(tmp, stat.S_IMODE(target.stat().st_mode))
            old = _swap(tmp, target)
        else:
            os.rename(tmp, target)
            old = None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    warnings = []
    try:
        _fsync(parent)
    except OSError as exc:
        warnings.append(f"{target} is in place, but fsyncing {parent} failed ({exc})")
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        if old.exists():
            warnings.append(f"{target} is in place, but the previous version could not be removed: {old}")
    return warnings


def _swap(new: Path, target: Path) -> Path:
    """Put ``new`` at ``target`` (which exists); return where the old version now is (to be removed)."""
    if _exchange(new, target):
        return new
    aside = _fresh(target.parent, f".{target.name}.old-{os.getpid()}", mkdir=False)
    try:
        os.rename(target, aside)
        os.rename(new, target)
    except BaseException:
        if not os.path.lexists(target) and os.path.lexists(aside):  # state, not a flag: Ctrl-C may land anywhere
            os.rename(aside, target)
        raise
    return aside


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if sys.platform != "linux":
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # no libc symbol (old glibc, some libcs)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:  # kernel or filesystem without the flag
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fresh(parent: Path, stem: str, *, mkdir: bool) -> Path:
    """The first of ``stem``, ``stem-1``, ... ``stem-999`` in ``parent`` that does not exist yet; with ``mkdir``, it
    is created, an empty directory (the umask applies), in the same step as the check."""
    for n in range(1000):
        path = parent / (stem if n == 0 else f"{stem}-{n}")
        if mkdir:
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return path
        if not path.exists() and not path.is_symlink():
            return path
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(parent / stem))


def _write_file(path: Path, payload: bytes) -> None:
    """Create ``path`` (it must not exist), write ``payload`` and fsync it."""
    with path.open("xb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync(directory: Path) -> None:
    """Make a directory's entries durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
