"""Where the machine's CPU goes while a benchmark runs: per process, and per thread name within each (Linux
/proc). `python -m benchmarks.cpu_census SECONDS` prints core-percentages, highest first, and the total
against the number of cores, to tell a saturated machine from an idle one, and the share a hypervisor stole
(gave its other guests while this one had work)."""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

_TICK = os.sysconf("SC_CLK_TCK")


def _threads() -> dict[tuple[int, int], tuple[str, str, int]]:
    """(pid, tid) -> (process label, thread name, CPU ticks so far)."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            label = f"{proc.name} {cmd[:70]}"
            for task in (proc / "task").iterdir():
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                ticks = int(fields[11]) + int(fields[12])  # utime + stime
                # Python threads share the process's name: the main thread (the event loop) is told apart.
                name = "main" if task.name == proc.name else (task / "comm").read_text().strip()
                out[(int(proc.name), int(task.name))] = (label, name, ticks)
        except (OSError, IndexError, ValueError):
            continue
    return out


Snapshot = dict[tuple[int, int], tuple[str, str, int]]


def threads_now() -> Snapshot:
    """Every thread's CPU ticks so far, to measure from."""
    return _threads()


def since(before: Snapshot, seconds: float) -> tuple[dict[str, float], dict[tuple[str, str], float]]:
    """Percent of a core per process and per (process, thread name) since `before`, taken `seconds` ago."""
    processes: dict[str, float] = defaultdict(float)
    threads: dict[tuple[str, str], float] = defaultdict(float)
    for key, (label, name, ticks) in _threads().items():
        used = (ticks - before.get(key, (label, name, 0))[2]) / _TICK / seconds * 100
        if used > 0:
            processes[label] += used
            threads[(label, name)] += used
    return processes, threads


def census(seconds: float) -> tuple[dict[str, float], dict[tuple[str, str], float]]:
    before = threads_now()
    time.sleep(seconds)
    return since(before, seconds)


class Ticks(NamedTuple):
    """The whole machine's CPU ticks so far, all cores (/proc/stat)."""

    busy: int
    total: int
    # Time the hypervisor gave this machine's virtual CPUs to others while they had work: a neighbour's load.
    steal: int


def machine_ticks() -> Ticks:
    """The machine's ticks so far: counts what processes that have exited used too, such as a load
    generator's workers."""
    fields = [int(x) for x in _proc_stat().split()[1:]]
    # user nice system idle iowait irq softirq steal; guest time after them is counted in user already.
    counted = fields[:8]
    idle = counted[3] + (counted[4] if len(counted) > 4 else 0)  # idle + iowait
    steal = counted[7] if len(counted) > 7 else 0
    return Ticks(sum(counted) - idle, sum(counted), steal)


def _proc_stat() -> str:
    """/proc/stat's first line: the ticks of all the machine's cores together."""
    return Path("/proc/stat").read_text().split("\n", 1)[0]


def machine_shares(before: Ticks) -> tuple[float, float]:
    """The shares of all the machine's cores since `before` (machine_ticks) that were busy (time stolen by the
    hypervisor included) and that the hypervisor gave to others, in percent: one reading for both."""
    now = machine_ticks()
    span = max(1, now.total - before.total)
    return round(100 * (now.busy - before.busy) / span, 1), round(100 * (now.steal - before.steal) / span, 1)


def busiest(before: Snapshot, seconds: float, floor: float = 1.0) -> dict[str, float]:
    """`since` as one flat mapping for a results file: processes and their threads at or over `floor` percent
    of a core, busiest first."""
    processes, threads = since(before, seconds)
    out = {label: round(used, 1) for label, used in processes.items() if used >= floor}
    out |= {f"{owner} [{name}]": round(used, 1) for (owner, name), used in threads.items() if used >= floor}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def cpu_set(listed: str) -> set[int]:
    """The CPUs of a kernel CPU list such as "0-7,16" (sysfs, cpuset and taskset all write them so)."""
    cpus: set[int] = set()
    for part in filter(None, listed.strip().split(",")):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    machine = machine_ticks()
    processes, threads = census(seconds)
    total = sum(processes.values())
    cores = os.cpu_count() or 1
    _, stolen = machine_shares(machine)
    print(f"CPU over {seconds:.0f} s: {total:.0f}% of {cores * 100}% ({cores} cores), {stolen}% stolen")
    for label, used in sorted(processes.items(), key=lambda kv: -kv[1])[:20]:
        print(f"{used:7.1f}%  {label}")
        for (owner, name), t_used in sorted(threads.items(), key=lambda kv: -kv[1]):
            if owner == label and t_used >= 3:
                print(f"          {t_used:6.1f}%  thread {name}")


if __name__ == "__main__":
    main()
