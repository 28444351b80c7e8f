"""``classifier.atomic_file``: output files written whole, in place where a rename would be wrong, never over an
input; the command-level cases (``/dev/stdout`` through a pipe or a redirect) are in ``tests/unit/test_cli.py``."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from classifier.atomic_file import clash, same_file, write_whole


def test_same_file_by_inode_or_by_resolved_path_and_never_raising(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.write_text("x")
    link = tmp_path / "link"
    link.symlink_to(a)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert same_file(a, link) and same_file(a, tmp_path / "." / "a")
    assert same_file(tmp_path / "new", tmp_path / "sub" / ".." / "new")  # neither exists: the same path
    assert not same_file(a, tmp_path / "new")
    assert not same_file(loop, a) and not same_file(a, loop)
    assert clash(("--out", link), [("the --data file", a)]) == f"--out {link} is the --data file"
    assert clash(("--out", tmp_path / "new"), [("the --data file", a)]) is None


def test_write_whole_replaces_a_file_and_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    write_whole(path, lambda fh: fh.write(b"new\n"))
    umask = os.umask(0)
    os.umask(umask)
    assert path.read_bytes() == b"new\n" and stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    path.chmod(0o600)
    link = tmp_path / "latest"
    link.symlink_to(path)
    write_whole(link, lambda fh: fh.write(b"newer\n"))
    assert link.is_symlink() and path.read_bytes() == b"newer\n" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "out.jsonl"]


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_write_whole_leaves_the_old_file_and_no_temporary_one(tmp_path: Path, error: BaseException) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"old\n")

    def fails(fh: object) -> None:
        raise error

    with pytest.raises(type(error)):
        write_whole(path, fails)
    assert path.read_bytes() == b"old\n" and [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_write_whole_writes_a_non_regular_file_in_place(tmp_path: Path) -> None:
    write_whole(Path("/dev/null"), lambda fh: fh.write(b"gone\n"))  # a rename would replace /dev/null
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        write_whole(fifo, lambda fh: fh.write(b"through\n"))
        assert os.read(reader, 100) == b"through\n"
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_write_whole_through_an_open_descriptor_shares_its_offset(tmp_path: Path) -> None:
    """``/dev/fd/N`` is written through N itself: a reopened file would start at offset 0 and overwrite."""
    path = tmp_path / "shell-redirect.txt"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"before\n")
        write_whole(Path(f"/dev/fd/{fd}"), lambda fh: fh.write(b"page\n"))
        os.write(fd, b"after\n")
    finally:
        os.close(fd)
    assert path.read_bytes() == b"before\npage\nafter\n"


def test_write_whole_on_a_symlink_loop_is_an_os_error(tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(OSError) as raised:
        write_whole(loop, lambda fh: fh.write(b"x"))
    assert raised.value.errno == errno.ELOOP
