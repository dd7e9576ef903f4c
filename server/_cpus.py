"""How many serving workers ``--workers 0`` starts: the CPUs this process may really use.

A container's CPU limit is a cgroup quota, which ``os.cpu_count`` does not
see (it counts the host's CPUs). The order, first answer wins:

1. cgroup v2: ``cpu.max`` (``"<quota> <period>"`` microseconds, or ``"max <period>"``: no limit);
2. cgroup v1: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (a quota of ``-1``: no limit);
3. the CPUs the process may run on (``os.sched_getaffinity``, a cpuset);
4. ``os.cpu_count()``.

A quota gives its ceiling (1.5 CPUs: 2 workers), and never fewer than 1.
:func:`cpu_budget` decides from the files' contents (pure, tested on every
shape); :func:`read_cpu_budget` reads them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CpuBudget:
    """How many workers, and where the number came from (logged at start)."""

    workers: int
    """At least 1."""
    source: str
    """E.g. ``"cgroup v2 cpu.max 150000 100000"``, ``"sched_getaffinity"``, ``"os.cpu_count"``."""


def _quota(quota: str, period: str) -> float | None:
    """CPUs of a quota and period in microseconds, or None when unlimited or unreadable."""
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    if q <= 0 or p <= 0:
        return None
    return q / p


def cpu_budget(
    cpu_max: str | None = None,
    cfs_quota_us: str | None = None,
    cfs_period_us: str | None = None,
    affinity: int | None = None,
    cpu_count: int | None = None,
) -> CpuBudget:
    """The workers for the CPUs given: each argument is a file's content (None: no such file) or a count."""
    if cpu_max is not None:
        fields = cpu_max.split()
        cpus = _quota(fields[0], fields[1]) if len(fields) == 2 and fields[0] != "max" else None
        if cpus is not None:
            return CpuBudget(max(1, math.ceil(cpus)), f"cgroup v2 cpu.max {' '.join(fields)}")
    if cfs_quota_us is not None and cfs_period_us is not None:
        cpus = _quota(cfs_quota_us.strip(), cfs_period_us.strip())
        if cpus is not None:
            return CpuBudget(
                max(1, math.ceil(cpus)), f"cgroup v1 cpu.cfs_quota_us {cfs_quota_us.strip()} / {cfs_period_us.strip()}"
            )
    if affinity:
        return CpuBudget(affinity, "sched_getaffinity")
    return CpuBudget(max(1, cpu_count or 1), "os.cpu_count")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None


def _own_cgroup_v2(proc_self_cgroup: str | None) -> str:
    """This process's cgroup v2 path (``0::/path``), ``/`` inside a container's cgroup namespace."""
    for line in (proc_self_cgroup or "").splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return "/"


def read_cpu_budget(root: Path = Path("/sys/fs/cgroup")) -> CpuBudget:
    """:func:`cpu_budget` of this process: its cgroup's files under ``root``, its affinity, the CPU count."""
    own = _own_cgroup_v2(_read(Path("/proc/self/cgroup"))).lstrip("/")
    cpu_max = _read(root / own / "cpu.max") if own else None
    if cpu_max is None:
        cpu_max = _read(root / "cpu.max")
    v1 = next((root / d for d in ("cpu", "cpu,cpuacct") if (root / d / "cpu.cfs_quota_us").exists()), root)
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return cpu_budget(
        cpu_max, _read(v1 / "cpu.cfs_quota_us"), _read(v1 / "cpu.cfs_period_us"), affinity, os.cpu_count()
    )
