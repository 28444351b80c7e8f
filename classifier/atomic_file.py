"""Output files of the command-line tools (``eval --out``, ``report --html``): written whole, never over an input.

:func:`write_whole` replaces a file in one step (a full disk or a crash midway leaves the previous file, or none,
never half of one), except where a rename would be wrong: a path that is not a regular file (``/dev/null``, a FIFO,
``/dev/stdout`` on a pipe or a terminal) and a path that names one of this process's open descriptors
(``/dev/stdout`` redirected to a file, ``/dev/fd/N``) are written in place, the latter through the descriptor itself,
so that what the process prints around it stays in the same stream. :func:`same_file` is the one test of "this
output is that input"; :func:`clash` words it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

__all__ = ["clash", "same_file", "write_whole"]

_FD_DIR = re.compile(r"/proc/(?:self|thread-self|\d+)(?:/task/\d+)?/fd")
_MAX_LINKS = 40  # as Linux's own limit on symbolic links followed in one lookup


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file: by device and inode when both exist (a hard link, a symlink, another
    spelling of the path), else by their paths with symlinks resolved. Never raises (a symlink loop is no file)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # either missing or unreadable (a loop, a NUL in the name)
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def clash(output: tuple[str, Path], inputs: Iterable[tuple[str, Path]]) -> str | None:
    """The message refusing ``output`` (option, path) if it is one of ``inputs`` (what, path), e.g.
    ``--out s.jsonl is the --data file``; None if it is none of them. ``what`` is ``the --data file``, ``a log``..."""
    option, path = output
    for what, other in inputs:
        if same_file(path, other):
            return f"{option} {path} is {what}"
    return None


def write_whole(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Have ``write`` write ``path``'s new contents, then put them in place whole, or leave ``path`` as it was.

    - ``path`` names one of this process's open descriptors (``/dev/stdout``, ``/dev/fd/1``, ``/proc/self/fd/1``):
      written through that descriptor, after flushing ``sys.stdout`` and ``sys.stderr`` (so a shell's ``> file``
      keeps the process's other output, in order: a rename would unlink the file the shell's descriptor writes to);
    - ``path`` exists and is not a regular file (a pipe, a terminal, ``/dev/null``, a FIFO): written in place;
    - otherwise into a new hidden sibling of the file ``path`` resolves to, fsynced, given the existing file's mode
      (a new file: ``0o666`` less the umask), and renamed over it; a symbolic link keeps pointing at it. On any
      exception (Ctrl-C included) the sibling is removed and the exception re-raised.

    Raises ``OSError`` if ``path`` cannot be written (a symbolic link loop is ``ELOOP``).
    """
    descriptor = _own_descriptor(path)
    if descriptor is not None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed or replaced stream has nothing to keep in order
                stream.flush()
        with os.fdopen(os.dup(descriptor), "wb") as fh:  # the same open file, offset and flags (O_APPEND) as it
            write(fh)
        return
    try:
        mode: int | None = os.stat(path).st_mode  # follows every link, /proc's too
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        with open(path, "wb") as fh:
            write(fh)
        return
    target = Path(os.path.realpath(path))
    tmp, fd = _create_sibling(target)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, stat.S_IMODE(mode))
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _create_sibling(target: Path) -> tuple[Path, int]:
    """A new file next to ``target``, under a name no other run uses, open for writing (mode ``0o666`` less the
    umask, as ``open()`` would create ``target``; ``mkstemp``'s ``0o600`` would not be)."""
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"no unused temporary name next to {target}")


def _own_descriptor(path: Path) -> int | None:
    """The descriptor N if resolving ``path`` reaches this process's ``/proc/PID/fd/N`` (``/dev/stdout`` ->
    ``/proc/self/fd/1``), else None. Links are followed one at a time, at most 40 (a loop is not a descriptor)."""
    current = os.path.abspath(path)
    for _ in range(_MAX_LINKS):
        parent, name = os.path.split(current)
        parent = os.path.realpath(parent)
        if _FD_DIR.fullmatch(parent) and name.isdigit():
            pid = parent.split("/")[2]
            own = pid in ("self", "thread-self") or pid == str(os.getpid())
            return int(name) if own else None
        current = os.path.join(parent, name)
        try:
            link = os.readlink(current)
        except (OSError, ValueError):  # not a link (or nothing there): the path ends here
            return None
        current = os.path.normpath(os.path.join(parent, link))
    return None
