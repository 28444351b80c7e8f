"""CPU accounting from ``/proc``: per-process CPU time and the whole machine's busy time.

The router's CPU per request (utime + stime of every worker, all threads included, over a wrk run) is the number
that says how many requests one core can route. The machine's busy time minus our own processes' is the load
other engineers put on the shared cores during the run, recorded so a slow run can be told from a slow router.
"""

from __future__ import annotations

import os
import platform
import resource
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "MachineTimes",
    "children_cpu_seconds",
    "machine_info",
    "machine_times",
    "process_cpu_seconds",
    "resident_kib",
]

_TICK = float(os.sysconf("SC_CLK_TCK"))


def process_cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of the live processes ``pids``, in seconds (fields 14 and 15 of ``/proc/<pid>/stat``)."""
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            # the command name (field 2) may hold spaces; everything after its closing paren is space-separated
            fields = f.read().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def children_cpu_seconds() -> float:
    """CPU seconds of every child process this process has waited for (wrk's, once it has exited)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@dataclass(frozen=True, slots=True)
class MachineTimes:
    """Cumulative machine CPU seconds (all cores) from ``/proc/stat``."""

    busy: float
    total: float


def machine_times() -> MachineTimes:
    """Busy (everything but idle and iowait) and total CPU seconds since boot, summed over cores."""
    with open("/proc/stat") as f:
        parts = f.readline().split()
    values = [int(v) for v in parts[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])  # guest time is already counted in user
    return MachineTimes(busy=(total - idle) / _TICK, total=total / _TICK)


def machine_info() -> dict[str, object]:
    """Cores, CPU model, memory and load average, for the record of a run."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "mem_gib": round(mem_gib, 1),
        "loadavg": os.getloadavg(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def resident_kib(pid: int) -> int:
    """``VmRSS`` of a live process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise ValueError(f"no VmRSS for process {pid}")
