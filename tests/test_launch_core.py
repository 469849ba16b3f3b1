"""LAUNCH_CORE: the MLX thread on a physical core of its own, everything the process starts afterwards on the
rest. Affinity is a thread's own, so each case runs in a process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from embedserver_testing.python_path import first_on_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROBE = """
import json, os, threading
from embedserver.tuning import launch_core
from embedserver.tuning.threads import named_executor
launch_core._LEAST_LEFT = {least}
reserved = launch_core.reserve_launch_core()
seen = {{}}
later = threading.Thread(target=lambda: seen.setdefault("later", os.sched_getaffinity(0)))
later.start(); later.join()
mlx = named_executor("mlx", 1, then=launch_core.enter_launch_core)
seen["mlx"] = mlx.submit(os.sched_getaffinity, 0).result()
print(json.dumps([sorted(reserved), sorted(os.sched_getaffinity(0)), sorted(seen["later"]), sorted(seen["mlx"])]))
"""


def _probe(least: int) -> list[set[int]]:
    """The CPUs reserved, then those of the calling thread, of a thread it started later, and of the MLX
    thread."""
    env = dict(os.environ, PYTHONPATH=first_on_path(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(least=least)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [set(cpus) for cpus in json.loads(done.stdout)]


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="Linux, 2+ CPUs"
)
def test_the_mlx_thread_gets_the_reserved_core_and_everything_started_later_the_rest() -> None:
    cpus = os.sched_getaffinity(0)
    reserved, main, later, mlx = _probe(least=1)
    assert reserved and reserved < cpus and max(cpus) in reserved
    assert main == later == cpus - reserved
    assert mlx == reserved


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux")
def test_nothing_is_reserved_where_too_few_cpus_would_be_left() -> None:
    cpus = os.sched_getaffinity(0)
    reserved, main, later, mlx = _probe(least=len(cpus))
    assert not reserved
    assert main == later == mlx == cpus
