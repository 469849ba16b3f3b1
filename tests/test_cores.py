"""The cores `HTTP_WORKERS=auto` is sized from: the CPUs the process may run on, capped by a container's CPU
limit (cgroup v2 `cpu.max` or v1 `cpu.cfs_quota_us`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from embedserver.tuning.cores import cpu_quota, usable_cores


def _v2(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cpu.max").write_text(text)
    return root


def _v1(root: Path, quota: int, period: int) -> Path:
    (root / "cpu").mkdir(parents=True)
    (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (root / "cpu" / "cpu.cfs_period_us").write_text(f"{period}\n")
    return root


@pytest.mark.parametrize(
    ("text", "expected"),
    [("400000 100000\n", 4.0), ("250000 100000", 2.5), ("max 100000\n", None), ("garbage", None)],
)
def test_a_cgroup_v2_limit_reads_as_cpus(tmp_path: Path, text: str, expected: float | None) -> None:
    assert cpu_quota(_v2(tmp_path, text)) == expected


def test_a_cgroup_v1_limit_reads_as_cpus_and_minus_one_as_none(tmp_path: Path) -> None:
    assert cpu_quota(_v1(tmp_path / "a", 150000, 100000)) == 1.5
    assert cpu_quota(_v1(tmp_path / "b", -1, 100000)) is None
    assert cpu_quota(tmp_path / "nothing-here") is None


def test_usable_cores_are_the_affinity_capped_by_the_quota_rounded_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(64)), raising=False)
    assert usable_cores(tmp_path / "unlimited") == 64
    assert usable_cores(_v2(tmp_path / "pod", "250000 100000")) == 3  # 2.5 CPUs of time: 3 can be busy
    assert usable_cores(_v2(tmp_path / "tiny", "10000 100000")) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1}, raising=False)  # pinned to two
    assert usable_cores(_v2(tmp_path / "big", "800000 100000")) == 2
