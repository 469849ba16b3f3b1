"""What a benchmark ran on, recorded with its results: the same card reads up to 40% apart between hosts at
short texts (bound by the host's time to queue a pass's kernels), so a result names its CPU, how the CPUs sit
around the GPU, the hypervisor's share of them, and the code each server ran.

    python -m benchmarks.host_facts [TREE ...]

prints this host's facts and each source tree's commit and sources digest as JSON (Linux's /proc and /sys,
nvidia-smi where there is one; a fact the host does not offer is left out or empty).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.cpu_census import cpu_set

# What a server's behaviour comes from, for the sources digest: its code, its kernels' device code and its
# model catalog.
_SOURCE_SUFFIXES = (".py", ".cuh", ".toml")
CPUS = Path("/sys/devices/system/cpu")


def host_facts() -> dict[str, Any]:
    """This host's CPU, its layout around the GPUs, and the software that computes a pass."""
    cpuinfo = _cpuinfo()
    cores, sockets = cpu_layout()
    facts: dict[str, Any] = {
        "cpu_model": (cpuinfo[0].get("model name") if cpuinfo else None) or platform.processor() or None,
        "cpus": os.cpu_count(),
        "usable_cpus": cpu_text(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        # SMT siblings share a core: a count below `cpus` means two threads a core.
        "cores": cores,
        "sockets": sockets,
        "numa_nodes": _numa_nodes(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": _versions("mlx", "mlx-cuda", "numpy", "tokenizers", "torch", "sentence-transformers"),
        "gpus": _gpus(),
    }
    governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    if governor.exists():
        facts["cpu_governor"] = governor.read_text().strip()
    return facts


def host_line(facts: dict[str, Any]) -> str:
    """`host_facts` in one line, for a results table's head."""
    gpus = facts.get("gpus") or []
    gpu = f"{gpus[0]['name']} (driver {gpus[0]['driver']})" if gpus else "no GPU"
    local = f"; the GPU's local CPUs {gpus[0]['local_cpus']}" if gpus and "local_cpus" in gpus[0] else ""
    layout = f"{facts['cpus']} CPUs, {facts['cores']} cores, {facts['sockets']} socket(s)"
    return f"{gpu} on {facts['cpu_model']}: {layout}, {len(facts['numa_nodes'])} NUMA node(s){local}"


def tree_code(tree: Path) -> dict[str, str | None]:
    """A source tree's commit (None outside a git checkout, such as a copied tree; "-dirty" when tracked files
    differ from it) and a digest of its server sources, equal for trees that serve the same code."""
    return {"commit": _commit(tree), "sources": sources_digest(tree)}


def sources_digest(tree: Path) -> str:
    """The first 12 hex digits of a SHA-256 over `tree`'s embedserver package: each source file's path and
    bytes, in path order."""
    digest = hashlib.sha256()
    package = tree / "embedserver"
    for path in sorted(p for p in package.rglob("*") if p.suffix in _SOURCE_SUFFIXES and p.is_file()):
        digest.update(path.relative_to(tree).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def cpu_text(cpus: set[int]) -> str:
    """A kernel CPU list such as "0-7,16" for a set of CPUs (cpu_census.cpu_set's inverse)."""
    runs: list[list[int]] = []  # [first, last] of each run of consecutive CPUs
    for cpu in sorted(cpus):
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(first) if first == last else f"{first}-{last}" for first, last in runs)


def core_of(cpu: int, cpus: Path = CPUS) -> set[int]:
    """The CPUs that share `cpu`'s physical core (its SMT siblings, itself included); {cpu} where the kernel
    does not say."""
    try:
        listed = (cpus / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text()
    except OSError:
        return {cpu}
    return cpu_set(listed) | {cpu}


def cpu_layout(cpus: Path = CPUS) -> tuple[int | None, int | None]:
    """(physical cores, sockets) as the kernel lists its CPUs' topology; None where it lists none."""
    cores: set[frozenset[int]] = set()
    packages: set[str] = set()
    for topology in cpus.glob("cpu[0-9]*/topology"):
        cores.add(frozenset(core_of(int(topology.parent.name[3:]), cpus)))
        try:
            packages.add((topology / "physical_package_id").read_text().strip())
        except OSError:
            continue
    return len(cores) or None, len(packages) or None


def pci_device(bus_id: str) -> Path:
    """The sysfs directory of the PCI device nvidia-smi names as `bus_id`: nvidia-smi writes an 8-digit
    domain in upper case ("00000000:1B:00.0"), sysfs a 4-digit one in lower case."""
    domain, rest = bus_id.split(":", 1)
    return Path("/sys/bus/pci/devices") / f"{domain[-4:]}:{rest}".lower()


def gpu_local_cpus() -> set[int]:
    """The CPUs the kernel lists as local to the first GPU nvidia-smi names (its PCI device's NUMA node)."""
    gpus = _gpus()
    if not gpus or "local_cpus" not in gpus[0]:
        raise SystemExit("no GPU's local CPUs: nvidia-smi named none, or sysfs does not list them")
    return cpu_set(gpus[0]["local_cpus"])


def _cpuinfo() -> list[dict[str, str]]:
    """/proc/cpuinfo's entries, one a logical CPU (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    entries = []
    for block in filter(None, text.strip().split("\n\n")):
        pairs = (line.split(":", 1) for line in block.splitlines() if ":" in line)
        entries.append({key.strip(): value.strip() for key, value in pairs})
    return entries


def _numa_nodes() -> dict[str, str]:
    """NUMA node -> its CPU list, as sysfs has them."""
    nodes = Path("/sys/devices/system/node")
    found = sorted(nodes.glob("node[0-9]*"), key=lambda p: int(p.name[4:])) if nodes.exists() else []
    return {node.name[4:]: (node / "cpulist").read_text().strip() for node in found}


def _versions(*names: str) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _gpus() -> list[dict[str, str]]:
    """Each GPU nvidia-smi lists: its name, driver, PCI bus id, and the NUMA node and CPUs sysfs gives its
    PCI device (none without nvidia-smi)."""
    query = "name,driver_version,pci.bus_id"
    try:
        done = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    gpus = []
    for line in done.stdout.splitlines() if done.returncode == 0 else []:
        parts = [part.strip() for part in line.split(",")]
        if len(parts) != 3:  # not a GPU's line (a warning, say): a benchmark must not fail on it
            continue
        name, driver, bus = parts
        gpu = {"name": name, "driver": driver, "bus_id": bus}
        device = pci_device(bus)
        for key, file in (("numa_node", "numa_node"), ("local_cpus", "local_cpulist")):
            if (device / file).exists():
                gpu[key] = (device / file).read_text().strip()
        gpus.append(gpu)
    return gpus


def _commit(tree: Path) -> str | None:
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True, timeout=30)

    try:
        # A copied tree inside another checkout (such as an ignored folder of this one) is not that commit.
        top = git("rev-parse", "--show-toplevel")
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != tree.resolve():
            return None
        head = git("rev-parse", "--short=7", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("-dirty" if changed else "")


def main() -> None:
    trees = [Path(arg) for arg in sys.argv[1:]]
    print(json.dumps({"host": host_facts()} | {str(t): tree_code(t) for t in trees}, indent=2))


if __name__ == "__main__":
    main()
