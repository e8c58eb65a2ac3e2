"""CPU threads per process, from the cores this process may really use.

torch's default intra-op thread count is the machine's core count; it ignores the CPU quota of a
container (cgroup) and, when several processes share the cores, every one of them spins on all of
them. On a busy 2-core machine that made a training iteration ~7x and simplex noise ~15x slower
than one thread per process (benchmarks/RESULTS.md). The policy here:

1. an explicit request (``pddpm <command> --threads N``) wins;
2. else ``OMP_NUM_THREADS`` when it holds a positive integer (as OpenMP reads it: the first entry of
   a comma list);
3. else the cores this process may use, shared among ``workers`` processes:
   ``max(1, cores // workers)``, where ``cores`` is the smallest of ``os.cpu_count()``, the CPU
   affinity mask (``os.sched_getaffinity``, e.g. ``taskset`` or a Slurm allocation) and the cgroup
   CPU quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``; a fractional
   quota is rounded down, at least 1).

The count applies to torch (``torch.set_num_threads``) and to ITK (SimpleITK's global default, used
by every filter that does not set its own, e.g. a registration that fixes its threads for
reproducibility keeps them). Threads never change what is computed beyond floating-point
summation order.

Example:
    >>> from pddpm_monai.threads import set_threads
    >>> set_threads(workers=2)  # in each of 2 worker processes on a 2-core machine: 1 thread
    1
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "THREADS_ENV",
    "available_cpus",
    "cgroup_cpu_limit",
    "keep_torch_threads",
    "resolve_threads",
    "set_threads",
]

#: the environment variable read as an explicit per-process thread count
THREADS_ENV = "OMP_NUM_THREADS"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return None


def _quota_cpus(quota: str | None, period: str | None) -> float | None:
    """CPUs of a quota/period pair; ``None`` for no limit (``max``, ``-1``) or unreadable values."""
    try:
        quota_us, period_us = float(quota), float(period)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return quota_us / period_us


def _cgroup_dirs(root: Path, proc_cgroup: str | None, controller: str | None) -> list[Path]:
    """The process's own cgroup folder (from ``/proc/self/cgroup``) and the root, in that order."""
    dirs = []
    for line in (proc_cgroup or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        names, _, rel = rest.partition(":")
        wanted = names == "" if controller is None else controller in names.split(",")
        if hierarchy and wanted and rel.strip("/"):
            base = root if controller is None else root / names
            dirs.append(base / rel.strip("/"))
    dirs.append(root if controller is None else root / controller)
    return dirs


def cgroup_cpu_limit(root: str | os.PathLike = CGROUP_ROOT, proc_cgroup: str | None = None) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (e.g. ``1.5``), or ``None`` when unlimited.

    Args:
        root: the cgroup mount point (a fake tree in tests).
        proc_cgroup: the text of ``/proc/self/cgroup`` (read when ``None``).
    """
    root = Path(root)
    if proc_cgroup is None:
        proc_cgroup = _read(Path("/proc/self/cgroup"))
    for folder in _cgroup_dirs(root, proc_cgroup, None):  # cgroup v2: "<quota> <period>" or "max <period>"
        text = _read(folder / "cpu.max")
        if text is not None:
            quota, _, period = text.partition(" ")
            return _quota_cpus(quota, period or "100000")
    for folder in _cgroup_dirs(root, proc_cgroup, "cpu"):  # cgroup v1 (also mounted as cpu,cpuacct)
        quota = _read(folder / "cpu.cfs_quota_us")
        if quota is not None:
            return _quota_cpus(quota, _read(folder / "cpu.cfs_period_us"))
    return None


def available_cpus(
    *, cpu_count: int | None = None, affinity: int | None = None, cgroup_limit: float | None = -1.0
) -> int:
    """Cores this process may use: the smallest of the CPU count, the affinity mask and the cgroup quota.

    Args:
        cpu_count: ``os.cpu_count()`` when ``None``.
        affinity: size of ``os.sched_getaffinity(0)`` when ``None`` (where the platform has it).
        cgroup_limit: quota in CPUs; ``-1`` (default) reads it with :func:`cgroup_cpu_limit`,
            ``None`` means unlimited.

    Returns:
        at least 1.
    """
    counts = [cpu_count if cpu_count is not None else (os.cpu_count() or 1)]
    if affinity is None and hasattr(os, "sched_getaffinity"):
        affinity = len(os.sched_getaffinity(0))
    if affinity is not None:
        counts.append(affinity)
    if cgroup_limit == -1.0:
        cgroup_limit = cgroup_cpu_limit()
    if cgroup_limit is not None:
        counts.append(max(1, math.floor(cgroup_limit)))
    return max(1, min(counts))


def _env_threads(env: Mapping[str, str]) -> int | None:
    """``OMP_NUM_THREADS`` as a positive int (first entry of a nested list), else ``None``."""
    value = env.get(THREADS_ENV, "").split(",")[0].strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def resolve_threads(
    requested: int | None = None,
    *,
    workers: int = 1,
    env: Mapping[str, str] | None = None,
    cpus: int | None = None,
) -> int:
    """Threads for each of ``workers`` processes: ``requested``, else ``OMP_NUM_THREADS``, else cores // workers.

    Args:
        requested: an explicit count (``--threads``); ``None`` or ``0`` for automatic.
        workers: processes sharing the cores (each gets this many threads).
        env: the environment (``os.environ`` when ``None``).
        cpus: the usable cores (:func:`available_cpus` when ``None``).

    Raises:
        ValueError: for a negative ``requested`` or ``workers < 1``.
    """
    if requested is not None and requested < 0:
        raise ValueError(f"threads must be >= 1 (or 0 for automatic), got {requested}.")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}.")
    if requested:
        return int(requested)
    from_env = _env_threads(os.environ if env is None else env)
    if from_env is not None:
        return from_env
    return max(1, (available_cpus() if cpus is None else cpus) // workers)


def set_threads(requested: int | None = None, *, workers: int = 1) -> int:
    """Apply :func:`resolve_threads` to torch and SimpleITK in this process; returns the count.

    Call it once at the start of a command, and in each worker process (``initializer`` of a
    process pool, with the pool's ``workers``).
    """
    import SimpleITK as sitk
    import torch

    threads = resolve_threads(requested, workers=workers)
    torch.set_num_threads(threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    return threads


@contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Restore torch's intra-op thread count on exit, whatever the code inside did to it.

    Some libraries change it behind torch's back. numba's OpenMP threading layer shares torch's
    ``libgomp``; the first ``parallel=True`` call of a process (e.g. ``opensimplex.noise2array``)
    starts it and sets the OpenMP thread count to the core count, so a process that asked torch
    for one thread per worker then runs and spins two on cores other processes use. In the test
    suite on 2 cores this made a tiny training run 8x slower (tests/test_threads.py shows the
    leak and this fix).
    """
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
