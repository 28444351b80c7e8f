"""The bounded JSON Lines writer: rotation by size and age, file modes, the queue's drop counting, flush on close,
and one writer per path (the lock on ``<path>.lock``, across processes and across reloads)."""

from __future__ import annotations

import fcntl
import json
import os
import random
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.stack import ENVOY_DIR
from extproc.cli import main
from extproc.config import Settings, parse_config
from extproc.errors import ConfigError
from extproc.learning import start_learning
from extproc.reload import load_snapshot, reload_snapshot
from extproc.snapshot import SnapshotRef
from extproc.spool import RotatingJsonl, Spool, SpoolBusyError, SpoolPathError, SpoolTarget, lock_path
from tests.fakes import FakeDifficultyModel

KEY = "t"


class Clock:
    """A settable wall clock."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _line(stamp: float, pad: int = 0) -> bytes:
    return json.dumps({KEY: stamp, "x": "y" * pad}).encode() + b"\n"


def _stamps(path: Path) -> list[float]:
    if not path.exists():
        return []
    return [json.loads(line)[KEY] for line in path.read_text().splitlines()]


def _previous(path: Path) -> Path:
    return path.with_name(path.name + ".1")


def test_size_rotation_keeps_one_previous_file_within_max_bytes(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    clock = Clock()
    f = RotatingJsonl(SpoolTarget(path, max_bytes=1000), KEY, clock)
    line = _line(clock.now, pad=100 - len(_line(clock.now)))
    assert len(line) == 100
    for i in range(23):
        assert f.append(_line(float(i), pad=100 - len(_line(float(i)))), float(i))
        total = path.stat().st_size + (_previous(path).stat().st_size if _previous(path).exists() else 0)
        assert total <= 1000
    assert _stamps(path) == [20.0, 21.0, 22.0]
    assert _stamps(_previous(path)) == [15.0, 16.0, 17.0, 18.0, 19.0]  # lines 0..14 were deleted with older files
    assert not (tmp_path / "c.jsonl.2").exists()


def test_a_line_larger_than_half_the_bound_is_refused(tmp_path: Path) -> None:
    f = RotatingJsonl(SpoolTarget(tmp_path / "c.jsonl", max_bytes=200), KEY, Clock())
    assert not f.append(_line(1.0, pad=150), 1.0)
    assert f.append(_line(1.0, pad=10), 1.0)


def test_ttl_rotates_at_half_and_deletes_at_full_age(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    clock = Clock(0.0)
    f = RotatingJsonl(SpoolTarget(path, max_bytes=1 << 20, ttl_seconds=100.0), KEY, clock)
    f.append(_line(0.0), 0.0)
    clock.now = 49.0
    assert f.maintain() == 50.0
    assert _stamps(path) == [0.0]
    clock.now = 50.0
    f.maintain()
    assert _stamps(path) == [] and _stamps(_previous(path)) == [0.0]
    clock.now = 60.0
    f.append(_line(60.0), 60.0)
    assert f.maintain() == 100.0  # the previous file's oldest line expires first
    clock.now = 100.0
    assert f.maintain() == 110.0
    assert not _previous(path).exists() and _stamps(path) == [60.0]


def test_no_line_outlives_the_ttl_and_none_dies_before_half_of_it(tmp_path: Path) -> None:
    """Random writes over simulated days, with the checks the writer thread makes (on writes and when due)."""
    path = tmp_path / "c.jsonl"
    clock = Clock(0.0)
    ttl = 3600.0
    f = RotatingJsonl(SpoolTarget(path, max_bytes=1 << 30, ttl_seconds=ttl), KEY, clock)
    rng = random.Random(7)
    written: list[float] = []
    due = f.maintain()
    while clock.now < 5 * 86400:
        step = rng.expovariate(1 / 300.0)
        if due is not None and clock.now + step >= due:
            clock.now = due  # the writer wakes exactly when something is due
            due = f.maintain()
        else:
            clock.now += step
            f.append(_line(clock.now), clock.now)
            written.append(clock.now)
            due = f.maintain()
        kept = _stamps(path) + _stamps(_previous(path))
        assert all(clock.now - s < ttl for s in kept), "a line outlived the TTL"
        gone = set(written) - set(kept)
        assert all(clock.now - s >= ttl / 2 for s in gone), "a line was deleted before half the TTL"


def test_startup_expires_old_files_and_unreadable_ones(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(_line(0.0) + _line(10.0))
    _previous(path).write_bytes(b"not json\n")
    clock = Clock(10_000.0)
    RotatingJsonl(SpoolTarget(path, max_bytes=1 << 20, ttl_seconds=100.0), KEY, clock).close()
    assert not _previous(path).exists(), "old lines must not survive a restart"
    assert _stamps(path) == []


def test_startup_keeps_fresh_lines_and_closes_a_cut_line(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(_line(9_990.0) + b'{"t": 9995.0, "x": "cut sh')
    clock = Clock(10_000.0)
    f = RotatingJsonl(SpoolTarget(path, max_bytes=1 << 20, ttl_seconds=100.0), KEY, clock)
    f.append(_line(10_000.0), 10_000.0)
    lines = path.read_bytes().splitlines()
    assert json.loads(lines[0])[KEY] == 9_990.0
    assert lines[1] == b'{"t": 9995.0, "x": "cut sh'
    assert json.loads(lines[2])[KEY] == 10_000.0


def test_files_are_private_and_symlinks_are_not_followed(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    f = RotatingJsonl(SpoolTarget(path, max_bytes=1 << 20), KEY, Clock())
    f.append(_line(1.0), 1.0)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    f.close()
    gone = tmp_path / "gone" / "c.jsonl"  # its directory removed while the router ran: not made again elsewhere
    with pytest.raises(FileNotFoundError):
        RotatingJsonl(SpoolTarget(gone, max_bytes=1 << 20), KEY, Clock())
    assert not gone.parent.exists()
    loose = tmp_path / "loose.jsonl"
    loose.write_text("")
    loose.chmod(0o644)
    RotatingJsonl(SpoolTarget(loose, max_bytes=1 << 20), KEY, Clock()).close()
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600
    victim = tmp_path / "victim"
    victim.write_text("keep")
    link = tmp_path / "link.jsonl"
    link.symlink_to(victim)
    with pytest.raises(OSError):
        RotatingJsonl(SpoolTarget(link, max_bytes=1 << 20), KEY, Clock())
    assert victim.read_text() == "keep"


def test_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    drops: list[str] = []
    spool = Spool("capture", KEY, drops.append, capacity=2, clock=Clock(), start=False)
    spool.configure(SpoolTarget(tmp_path / "c.jsonl", max_bytes=1 << 20))
    assert spool.offer({KEY: 1.0, "n": 1})
    assert spool.offer({KEY: 2.0, "n": 2})
    assert not spool.offer({KEY: 3.0, "n": 3})
    assert drops == ["capture_queue_full"] and spool.dropped["capture_queue_full"] == 1
    spool.close()
    assert [json.loads(x)["n"] for x in (tmp_path / "c.jsonl").read_text().splitlines()] == [1, 2]
    assert not spool.offer({KEY: 4.0}), "closed: dropped"


def test_writer_thread_writes_everything_offered_before_close(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    spool = Spool("capture", KEY, lambda _reason: None, capacity=100_000)
    spool.configure(SpoolTarget(path, max_bytes=1 << 30))
    threads = [
        threading.Thread(target=lambda k=k: [spool.offer({KEY: 1.0, "k": k, "i": i}) for i in range(500)])
        for k in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spool.close()
    got = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(got) == 2000 and not spool.dropped
    for k in range(4):
        assert [g["i"] for g in got if g["k"] == k] == list(range(500)), "per-producer order is kept"


def test_unwritable_items_are_counted_not_raised(tmp_path: Path) -> None:
    drops: list[str] = []
    spool = Spool("feedback", KEY, drops.append, start=False, clock=Clock())
    spool.configure(SpoolTarget(tmp_path / "f.jsonl", max_bytes=8192))
    spool.offer({KEY: 1.0, "x": "y" * 5000})  # over half of max_bytes
    spool.offer({KEY: 1.0, "x": object()})  # cannot be encoded
    spool.offer({KEY: 1.0, "ok": True})
    spool.close()
    assert drops == ["feedback_too_large", "feedback_write_failed"]
    assert len((tmp_path / "f.jsonl").read_text().splitlines()) == 1


def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_reconfigure_switches_the_file_and_none_discards(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    spool = Spool("capture", KEY, lambda _reason: None)
    spool.configure(SpoolTarget(a, max_bytes=1 << 20))
    spool.offer({KEY: 1.0, "n": 1})
    _wait_for(lambda: a.exists() and a.read_text().count("\n") == 1)
    spool.configure(SpoolTarget(b, max_bytes=1 << 20))
    spool.offer({KEY: 1.0, "n": 2})
    _wait_for(lambda: b.exists() and b.read_text().count("\n") == 1)
    spool.configure(None)
    _wait_for(lambda: spool._file is None)
    assert not _locked(a) and not _locked(b), "turned off: no path is held"
    spool.offer({KEY: 1.0, "n": 3})
    spool.close()
    assert [json.loads(x)["n"] for x in a.read_text().splitlines()] == [1]
    assert [json.loads(x)["n"] for x in b.read_text().splitlines()] == [2]


def test_the_writer_expires_lines_on_its_own_timer(tmp_path: Path) -> None:
    """No new writes: the thread still wakes when a line is due and deletes it (real clock, a 0.3 s TTL)."""
    path = tmp_path / "c.jsonl"
    spool = Spool("capture", KEY, lambda _reason: None)
    spool.configure(SpoolTarget(path, max_bytes=1 << 20, ttl_seconds=0.3))
    spool.offer({KEY: time.time()})
    _wait_for(lambda: _stamps(path) != [])
    _wait_for(lambda: _stamps(path) == [] and not _previous(path).exists(), timeout=3.0)
    spool.close()


def test_a_short_write_is_ended_before_the_next_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk takes part of a line and fails: the next line starts on its own line, and readers (and a
    restart) skip the fragment instead of losing the next line or expiring the whole file."""
    import os

    path = tmp_path / "c.jsonl"
    clock = Clock(10_000.0)
    f = RotatingJsonl(SpoolTarget(path, max_bytes=1 << 20, ttl_seconds=100.0), KEY, clock)
    real_write, calls = os.write, []

    def disk_full(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:7]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError):
        f.append(_line(10_000.0), 10_000.0)
    monkeypatch.setattr(os, "write", real_write)
    f.append(_line(10_001.0), 10_001.0)
    f.close()
    lines = path.read_bytes().splitlines()
    assert len(lines) == 2 and lines[0] == _line(10_000.0)[:7] and json.loads(lines[1])[KEY] == 10_001.0
    again = RotatingJsonl(SpoolTarget(path, max_bytes=1 << 20, ttl_seconds=100.0), KEY, clock)  # a restart
    again.close()
    assert path.read_bytes().splitlines()[1:] == lines[1:], "the torn first line does not expire the file"


# --- One writer per path: the lock on <path>.lock ---------------------------------------------------------------

_REPO = Path(__file__).resolve().parents[2]
_HOLDER = """
import sys
from pathlib import Path
from extproc.spool import RotatingJsonl, SpoolTarget
f = RotatingJsonl(SpoolTarget(Path(sys.argv[1]), max_bytes=1 << 20), "t")
print("ready", flush=True)
sys.stdin.readline()
f.close()
print("closed", flush=True)
"""


class OtherProcess:
    """Another router process writing ``path`` through the real spool code, until :meth:`stop`."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(path)],
            cwd=_REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready", "the other process did not open the spool"

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            assert self.proc.stdout.readline().strip() == "closed"
        self.proc.communicate(timeout=10)  # closes the pipes
        assert self.proc.returncode == 0


@pytest.fixture
def other_process() -> Iterator[Callable[[Path], OtherProcess]]:
    started: list[OtherProcess] = []

    def start(path: Path) -> OtherProcess:
        started.append(OtherProcess(path))
        return started[-1]

    yield start
    for other in started:
        if other.proc.poll() is None:
            other.proc.kill()
        other.proc.communicate(timeout=10)


def _locked(path: Path) -> bool:
    """Whether some writer holds ``path``'s lock (a fresh descriptor conflicts even with this process's own)."""
    if not lock_path(path).exists():
        return False
    fd = os.open(lock_path(path), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_a_path_another_process_writes_is_refused_until_it_closes(
    tmp_path: Path, other_process: Callable[[Path], OtherProcess]
) -> None:
    path = tmp_path / "c.jsonl"
    _previous(path).write_bytes(_line(0.0))  # expired for a TTL of 100 s at 10 000
    other = other_process(path)
    assert _locked(path)
    assert stat.S_IMODE(lock_path(path).stat().st_mode) == 0o600
    with pytest.raises(SpoolBusyError, match="another process is writing") as refused:
        RotatingJsonl(SpoolTarget(path, max_bytes=1 << 20, ttl_seconds=100.0), KEY, Clock(10_000.0))
    assert str(path) in str(refused.value) and refused.value.path == path
    assert _stamps(_previous(path)) == [0.0], "refused before expiring (deleting) the other writer's file"

    spool = Spool("capture", KEY, lambda _reason: None, start=False, clock=Clock(10_000.0))
    with pytest.raises(SpoolBusyError, match="another process is writing"):
        spool.configure(SpoolTarget(path, max_bytes=1 << 20, ttl_seconds=100.0))
    spool.offer({KEY: 10_000.0, "n": 1})
    spool.close()
    assert _stamps(path) == [] and _stamps(_previous(path)) == [0.0], "the refused spool wrote nothing"

    other.stop()
    assert not _locked(path)
    f = RotatingJsonl(SpoolTarget(path, max_bytes=1 << 20, ttl_seconds=100.0), KEY, Clock(10_000.0))
    assert _locked(path) and not _previous(path).exists(), "now the one writer: it expires the old file"
    f.close()
    assert not _locked(path) and lock_path(path).exists(), "released on close; the lock file stays"


def test_a_lock_file_planted_as_a_symlink_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    path = tmp_path / "c.jsonl"
    lock_path(path).symlink_to(victim)
    with pytest.raises(OSError):
        RotatingJsonl(SpoolTarget(path, max_bytes=1 << 20), KEY, Clock())
    assert victim.read_text() == "keep" and not path.exists()
    spool = Spool("capture", KEY, lambda _reason: None, start=False)
    with pytest.raises(SpoolPathError, match=f"cannot open {lock_path(path)}: "):  # refused like an unwritable path
        spool.configure(SpoolTarget(path, max_bytes=1 << 20))
    spool.offer({KEY: 1.0})
    spool.close()
    assert victim.read_text() == "keep" and not path.exists()


def test_a_reload_that_keeps_the_path_keeps_the_lock(tmp_path: Path) -> None:
    """The running spool never fights itself: same path again (new bounds), another path, and back."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    spool = Spool("capture", KEY, lambda _reason: None)
    spool.configure(SpoolTarget(a, max_bytes=1 << 20))
    spool.offer({KEY: 1.0, "n": 1})
    _wait_for(lambda: _stamps(a) == [1.0])
    assert _locked(a)
    spool.configure(SpoolTarget(a, max_bytes=1 << 19))  # a reload keeping the path
    spool.offer({KEY: 2.0, "n": 2})
    _wait_for(lambda: _stamps(a) == [1.0, 2.0])
    assert _locked(a)
    (tmp_path / "link").symlink_to(tmp_path)
    spool.configure(SpoolTarget(tmp_path / "link" / "a.jsonl", max_bytes=1 << 19))  # the same file, spelled otherwise
    spool.offer({KEY: 2.5, "n": 2})
    _wait_for(lambda: _stamps(a) == [1.0, 2.0, 2.5])
    assert _locked(a)
    spool.configure(SpoolTarget(b, max_bytes=1 << 20))
    spool.offer({KEY: 3.0, "n": 3})
    _wait_for(lambda: _stamps(b) == [3.0])
    _wait_for(lambda: not _locked(a))  # released once the writer closed a.jsonl
    assert _locked(b)
    spool.configure(SpoolTarget(a, max_bytes=1 << 20))  # and back
    spool.offer({KEY: 4.0, "n": 4})
    _wait_for(lambda: _stamps(a) == [1.0, 2.0, 2.5, 4.0])
    _wait_for(lambda: not _locked(b))
    spool.close()
    assert not _locked(a) and not _locked(b)


def test_switches_replaced_before_the_writer_applies_them(tmp_path: Path) -> None:
    """a -> b -> a queued faster than the writer runs: no conflict with itself, b is released, a is written."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    spool = Spool("capture", KEY, lambda _reason: None, start=False)
    spool.configure(SpoolTarget(a, max_bytes=1 << 20))
    spool.configure(SpoolTarget(b, max_bytes=1 << 20))
    assert _locked(b) and not _locked(a)
    spool.configure(SpoolTarget(a, max_bytes=1 << 20))
    assert _locked(a) and not _locked(b)
    spool.offer({KEY: 1.0})
    spool.close()
    assert _stamps(a) == [1.0] and not b.exists()
    assert not _locked(a)
    spool.configure(SpoolTarget(b, max_bytes=1 << 20))  # after close: nothing would apply it, so nothing is held
    assert not _locked(b)


def _learning_settings(**sections: dict[str, Any]) -> Settings:
    data = yaml.safe_load((ENVOY_DIR / "model-router.yaml").read_text())
    data["telemetry"]["metrics_listen"] = None
    data["feedback"]["listen"] = None
    for name, values in sections.items():
        data[name].update(values)
    return parse_config(data)


def test_start_refuses_a_busy_capture_or_feedback_path(
    tmp_path: Path, other_process: Callable[[Path], OtherProcess]
) -> None:
    capture, feedback = tmp_path / "capture.jsonl", tmp_path / "feedback.jsonl"
    on = {"enabled": True, "path": str(capture)}
    other = other_process(capture)
    with pytest.raises(ConfigError) as refused:
        start_learning(_learning_settings(capture=on), lambda: (), lambda _r: None)
    assert refused.value.problems == [f"capture.path: {SpoolBusyError(capture)}"]
    assert str(refused.value).startswith("cannot start:\n"), "another process, not the YAML, is the problem"
    assert str(capture) in str(refused.value) and "another process is writing" in str(refused.value)
    other.stop()

    other = other_process(feedback)
    settings = _learning_settings(capture=on, feedback={"enabled": True, "path": str(feedback)})
    with pytest.raises(ConfigError, match=r"feedback\.path: another process is writing .*feedback\.jsonl"):
        start_learning(settings, lambda: (), lambda _r: None)
    assert not _locked(capture), "the capture writer started first is closed again"
    other.stop()
    learning = start_learning(settings, lambda: (), lambda _r: None)
    assert _locked(capture) and _locked(feedback)
    learning.close()
    assert not _locked(capture) and not _locked(feedback)


def _in_a_file(tmp: Path) -> tuple[Path, str]:
    (tmp / "file").write_text("not a directory")
    return tmp / "file" / "spool.jsonl", f"{tmp / 'file'} is not a directory"


def _in_a_missing_directory(tmp: Path) -> tuple[Path, str]:
    return (
        tmp / "model-routr" / "spool.jsonl",
        f"{tmp / 'model-routr'} does not exist (create it, or mount a volume there)",
    )


def _a_directory(tmp: Path) -> tuple[Path, str]:
    return tmp, f"{tmp} is a directory"


@pytest.mark.parametrize("section", ["capture", "feedback"])
@pytest.mark.parametrize("bad_path", [_a_directory, _in_a_file, _in_a_missing_directory])
def test_a_path_that_cannot_be_a_spool_is_refused_at_start_and_by_check_config(
    tmp_path: Path, section: str, bad_path: Callable[[Path], tuple[Path, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Each was once accepted: ``capture.path: /tmp`` started, left ``/tmp.lock`` behind and dropped every line ("Is
    a directory"), and ``check-config`` said ok; a mistyped directory was created, outside the volume meant for the
    file, so its lines were lost at the next restart."""
    path, problem = bad_path(tmp_path)
    had_directory = path.parent.exists()
    settings = _learning_settings(**{section: {"enabled": True, "path": str(path)}})
    with pytest.raises(ConfigError) as refused:
        start_learning(settings, lambda: (), lambda _r: None)
    assert refused.value.problems == [f"{section}.path: {problem}"]
    assert not lock_path(path).exists() and path.parent.exists() == had_directory, "nothing made"
    config = tmp_path / "model-router.yaml"
    data = yaml.safe_load((ENVOY_DIR / "model-router.yaml").read_text())
    data[section] = {"enabled": True, "path": str(path)}
    config.write_text(yaml.safe_dump(data))
    assert main(["check-config", "--config", str(config)]) == 2
    assert f"{section}.path: {problem}" in capsys.readouterr().err


def test_capture_off_leaves_a_busy_path_to_its_writer(
    tmp_path: Path, other_process: Callable[[Path], OtherProcess], caplog: pytest.LogCaptureFixture
) -> None:
    """Capture off but old files at the path (normally expired by this router): another writer has them."""
    capture = tmp_path / "capture.jsonl"
    capture.write_bytes(_line(1.0))
    other = other_process(capture)
    learning = start_learning(_learning_settings(capture={"path": str(capture)}), lambda: (), lambda _r: None)
    assert "another process is writing" in caplog.text and str(capture) in caplog.text
    learning.close()
    assert _locked(capture), "still the other process's"
    other.stop()


def _ns(path: Path) -> list[int]:
    return [json.loads(x)["n"] for x in path.read_text().splitlines()] if path.exists() else []


def test_learning_reload_keeps_or_refuses_the_capture_path(
    tmp_path: Path, other_process: Callable[[Path], OtherProcess], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first = _learning_settings(capture={"enabled": True, "path": str(a)})
    learning = start_learning(first, lambda: (), lambda _r: None)
    assert _locked(a)
    learning.reconfigure(_learning_settings(capture={"enabled": True, "path": str(a), "sample_rate": 0.5}))
    learning.reconfigure(first)
    assert "another process" not in caplog.text
    assert learning.capture._spool.offer({"captured_unix": time.time(), "n": 1})
    _wait_for(lambda: _ns(a) == [1])
    other = other_process(b)
    with pytest.raises(ConfigError) as refused:
        learning.reconfigure(_learning_settings(capture={"enabled": True, "path": str(b)}))
    assert refused.value.problems == [f"capture.path: {SpoolBusyError(b)}"]
    assert learning.capture._spool.offer({"captured_unix": time.time(), "n": 2})
    _wait_for(lambda: _ns(a) == [1, 2])  # still writing a
    assert _locked(a)
    learning.close()
    assert not _locked(a) and _locked(b)
    other.stop()
    assert b.read_text() == ""


def test_a_reload_onto_a_busy_capture_path_is_rejected_whole(
    tmp_path: Path, other_process: Callable[[Path], OtherProcess], caplog: pytest.LogCaptureFixture
) -> None:
    """The new config is not half applied: it stays out (policy included) and capture keeps its file."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    path = tmp_path / "model-router.yaml"

    def write_config(capture: Path, quality_target: float) -> None:
        data = yaml.safe_load((ENVOY_DIR / "model-router.yaml").read_text())
        data["telemetry"]["metrics_listen"] = None
        data["feedback"]["listen"] = None
        data["capture"].update({"enabled": True, "path": str(capture)})
        data["policy"]["quality_target"] = quality_target
        path.write_text(yaml.safe_dump(data))

    write_config(a, 0.8)
    ref = SnapshotRef(load_snapshot(path, lambda _s: FakeDifficultyModel()))
    running = ref.current
    learning = start_learning(running.settings, lambda: (), lambda _r: None)
    other = other_process(b)
    serial = threading.Lock()

    def reload() -> bool:
        return reload_snapshot(path, ref, lambda _s: FakeDifficultyModel(), learning.reconfigure, serial)

    write_config(b, 0.7)
    assert not reload()
    assert ref.current is running and ref.current.settings.policy.quality_target == 0.8
    assert (
        f"capture.path: another process is writing {b}" in caplog.text and "keeping the running config" in caplog.text
    )
    assert learning.capture._spool.offer({"captured_unix": time.time(), "n": 1})
    _wait_for(lambda: _ns(a) == [1])  # capture still writes the running config's file
    assert _locked(a) and not serial.locked()

    other.stop()
    assert reload(), "the same config applies once the other writer is gone"
    assert ref.current.settings.policy.quality_target == 0.7
    assert learning.capture._spool.offer({"captured_unix": time.time(), "n": 2})
    _wait_for(lambda: _ns(b) == [2])
    learning.close()
    assert _ns(a) == [1] and not _locked(a) and not _locked(b)
