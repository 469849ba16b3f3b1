"""How many cores this process may use, for what is sized from it (`HTTP_WORKERS=auto`, the tokenizer's threads).

`os.cpu_count()` counts the machine's cores. A container or a pinned process may use fewer: the CPUs it may run
on (affinity: cpusets, `taskset`, Kubernetes' static CPU manager), and at most its CPU quota's worth of time
(a container's CPU limit: cgroup v2's `cpu.max`, v1's `cpu.cfs_quota_us`). A server sized from the machine's
count in a 4-CPU pod on a 64-core node would start processes that only take turns on those 4.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def usable_cores(cgroup: Path = CGROUP) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = cpu_quota(cgroup)
    return max(1, min(cores, math.ceil(quota))) if quota else max(1, cores)


def cpu_quota(cgroup: Path = CGROUP) -> float | None:
    """CPUs' worth of time the process's cgroup may use (e.g. 2.5), None when it is not limited."""
    limit = _read_pair(cgroup / "cpu.max")  # v2: "QUOTA PERIOD" or "max PERIOD"
    if limit is None:  # v1: two files; a quota of -1 means none
        quota, period = (
            _read_int(cgroup / "cpu" / "cpu.cfs_quota_us"),
            _read_int(cgroup / "cpu" / "cpu.cfs_period_us"),
        )
        limit = (quota, period) if quota is not None and period is not None else None
    if limit is None:
        return None
    quota, period = limit
    return quota / period if quota > 0 and period > 0 else None


def _read_pair(path: Path) -> tuple[int, int] | None:
    try:
        quota, period = path.read_text().split()
        return (-1 if quota == "max" else int(quota)), int(period)
    except (OSError, ValueError):
        return None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
