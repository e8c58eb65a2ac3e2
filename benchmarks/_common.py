"""What the benchmark scripts share: the machine they ran on, its load, and how they time a call."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: the shared real scans (BraTS18, MSLUB, the healthy head, SRI24) next to the repository
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``/proc/loadavg`` writes them."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (the workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(
    fn: Callable[[], Any], repeats: int, *, warmup: bool = False, sync: Callable[[], Any] = lambda: None
) -> tuple[float, float, Any]:
    """Best wall time and best process CPU time of ``repeats`` calls of ``fn``, and its last output.

    The CPU time (all threads of this process) is robust to other processes on a shared machine;
    the wall time is what a user waits. ``warmup``: one untimed call first (and compilation);
    ``sync`` (e.g. ``torch.cuda.synchronize``) runs around each timed call.
    """
    output = fn() if warmup else None
    best_wall, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        sync()
        start, start_cpu = time.perf_counter(), time.process_time()
        output = fn()
        sync()
        best_wall = min(best_wall, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - start_cpu)
    return best_wall, best_cpu, output
