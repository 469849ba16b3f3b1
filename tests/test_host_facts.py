"""What a benchmark records about the host it ran on and the code each server ran: a result compared with
another is only as good as the two named machines and trees."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

from benchmarks.cpu_census import Ticks, cpu_set, machine_shares, machine_ticks
from benchmarks.host_facts import cpu_layout, host_facts, host_line, sources_digest, tree_code


def test_the_host_facts_name_this_machines_cpus_and_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # no nvidia-smi: no GPU named
    facts = host_facts()
    assert facts["cpus"] == os.cpu_count()
    assert cpu_set(facts["usable_cpus"]) == os.sched_getaffinity(0)
    assert 1 <= facts["sockets"] <= facts["cores"] <= facts["cpus"]
    # Every CPU this process may use sits on one of the NUMA nodes sysfs lists.
    on_nodes = set().union(*(cpu_set(cpus) for cpus in facts["numa_nodes"].values()))
    assert os.sched_getaffinity(0) <= on_nodes
    assert facts["packages"]["mlx"] == metadata.version("mlx")
    assert facts["gpus"] == [] and len(facts["load_average"]) == 3


def test_the_host_facts_read_each_gpu_from_nvidia_smi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nvidia-smi's CSV line a GPU becomes its name, driver and bus id (the NUMA node and local CPUs come
    from the bus id's sysfs device, absent for this made-up one); a line that is no GPU's is left out."""
    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        'echo "NVIDIA H100 80GB HBM3, 580.65.06, 00000000:1B:00.0"\n'
        'echo "NVIDIA H100 80GB HBM3, 580.65.06, 00000000:9A:00.0"\n'
        'echo "WARNING: infoROM is corrupted"\n'
    )
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    facts = host_facts()
    gpus = facts["gpus"]
    assert gpus == [
        {"name": "NVIDIA H100 80GB HBM3", "driver": "580.65.06", "bus_id": "00000000:1B:00.0"},
        {"name": "NVIDIA H100 80GB HBM3", "driver": "580.65.06", "bus_id": "00000000:9A:00.0"},
    ]
    # The table's head names the first GPU and the CPU around it.
    assert host_line(facts).startswith(f"NVIDIA H100 80GB HBM3 (driver 580.65.06) on {facts['cpu_model']}: ")
    assert f"{os.cpu_count()} CPUs" in host_line(facts)


def test_the_cpu_layout_counts_smt_siblings_as_one_core_and_packages_as_sockets(tmp_path: Path) -> None:
    """Eight CPUs as two sockets of two cores with two threads each (siblings listed as a list or a range)."""
    siblings = {0: "0,4", 1: "1,5", 2: "2-3", 3: "2-3", 4: "0,4", 5: "1,5", 6: "6-7", 7: "6-7"}
    for cpu, listed in siblings.items():
        topology = tmp_path / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "thread_siblings_list").write_text(listed + "\n")
        (topology / "physical_package_id").write_text("0\n" if cpu in (0, 1, 4, 5) else "1\n")
    (tmp_path / "cpufreq").mkdir()  # not a CPU
    assert cpu_layout(tmp_path) == (4, 2)
    assert cpu_layout(tmp_path / "none") == (None, None)


def _git(repo: Path, *args: str) -> str:
    command = ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t", *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


def test_a_trees_code_is_its_commit_and_a_digest_its_copies_share(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "embedserver" / "runtime").mkdir(parents=True)
    (repo / "embedserver" / "__init__.py").write_text("")
    (repo / "embedserver" / "runtime" / "kernel.cuh").write_text("// device code\n")
    (repo / "README.md").write_text("not a source\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "first")
    head = _git(repo, "rev-parse", "--short=7", "HEAD")
    code = tree_code(repo)
    assert code["commit"] == head and code["sources"] == sources_digest(repo) and len(code["sources"]) == 12

    # A copy without its .git, even inside a checkout (an ignored folder of it), names no commit, and its
    # digest says it is the same code.
    copy = repo / "copy"
    shutil.copytree(repo / "embedserver", copy / "embedserver")
    assert tree_code(copy) == {"commit": None, "sources": code["sources"]}

    # A changed tracked file makes the checkout dirty; a changed source, a different digest, where a file
    # outside the package does not.
    (repo / "README.md").write_text("changed\n")
    assert tree_code(repo) == {"commit": f"{head}-dirty", "sources": code["sources"]}
    (copy / "embedserver" / "runtime" / "kernel.cuh").write_text("// other device code\n")
    assert sources_digest(copy) != code["sources"]


def test_the_machines_ticks_split_the_hypervisors_steal_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """/proc/stat's first line: busy is everything but idle and iowait, steal its eighth field, and guest
    time (already inside user) is not counted twice."""
    monkeypatch.setattr("benchmarks.cpu_census._proc_stat", lambda: "cpu  100 0 50 800 50 0 0 0 40 0")
    before = machine_ticks()
    assert before == Ticks(busy=150, total=1000, steal=0)
    # 1,000 ticks later: 300 of them busy, 100 of those stolen.
    monkeypatch.setattr("benchmarks.cpu_census._proc_stat", lambda: "cpu  250 0 100 1450 100 0 0 100 120 0")
    assert machine_shares(before) == (30.0, 10.0)
    # The real file reads so too.
    monkeypatch.undo()
    now = machine_ticks()
    assert 0 <= now.steal <= now.busy <= now.total
