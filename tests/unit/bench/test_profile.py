"""Bucketing py-spy samples and naming threads: the profile's pure pieces."""

from __future__ import annotations

import pytest

from bench.profile import IDLE, MAIN, bucket_of, parse_raw, split_thread, summarise, thread_group

LOOP = "_run_module_as_main (<frozen runpy>:198);Runner.run (asyncio/runners.py:118)"


@pytest.mark.parametrize(
    ("stack", "want"),
    [
        pytest.param(f"{LOOP};StreamHandler.handle (extproc/stream.py:155)", "router handler", id="handler"),
        pytest.param(
            f"{LOOP};StreamHandler.handle (extproc/stream.py:155);parse_request (extproc/request.py:80)",
            "parsing",
            id="innermost-wins",
        ),
        pytest.param(LOOP, "uvloop + gRPC aio", id="c-under-loop"),
        pytest.param("Thread.run (threading.py:982);uv_run (core.c:1);epoll_wait (libc.so.6)", IDLE, id="epoll"),
        pytest.param("x (grpc/_cython/cygrpc.so);sendmsg (libc.so.6)", "kernel", id="syscall"),
        pytest.param("Session.run (onnxruntime/capi/x.py:406)", "classifier", id="onnx"),
    ],
)
def test_bucket_of(stack: str, want: str) -> None:
    assert bucket_of(stack.split(";")).startswith(want)


def test_parse_and_summarise_skip_idle_samples() -> None:
    raw = [
        f"{LOOP};StreamHandler.handle (extproc/stream.py:155) 3\n",
        f"{LOOP};epoll_wait (libc.so.6) 10\n",
        f"{LOOP} 1\n",
    ]
    buckets, inclusive, busy = summarise(parse_raw(raw))
    assert busy == 4
    assert sum(buckets.values()) == 4
    assert inclusive["StreamHandler.handle (everything the router does per message)"] == 3


def test_split_thread() -> None:
    tid, frames = split_thread(["thread (4242): MainThread", "f (a.py:1)"])
    assert tid == 4242 and frames == ["f (a.py:1)"]
    assert split_thread(["f (a.py:1)"]) == (None, ["f (a.py:1)"])


@pytest.mark.parametrize(
    ("tid", "comm", "py_name", "want"),
    [
        pytest.param(100, "python", "MainThread", MAIN, id="main"),
        pytest.param(101, "python", "classify_0", "classifier", id="executor"),
        pytest.param(102, "event_engine", "", "gRPC", id="event-engine"),
        pytest.param(103, "python", "Thread-2 (_poll_wrapper)", "gRPC", id="aio-poller"),
        pytest.param(104, "python", "Thread-1 (serve_forever)", "metrics", id="metrics"),
    ],
)
def test_thread_group(tid: int, comm: str, py_name: str, want: str) -> None:
    assert thread_group(tid, 100, comm, py_name).startswith(want)
