"""A physical core of its own for the thread that launches the GPU's passes (LAUNCH_CORE).

On CUDA a short pass costs what the host takes to queue its ~230 kernels, and that host work slows when the
machine is busy (docs/PERFORMANCE.md): the server's front-ends, its other threads and anything else on the
machine take turns on the core the launching thread runs on, or on that core's SMT sibling. Reserved, the
core runs that thread alone: the engine process keeps the machine's other CPUs for itself, and the threads
and front-end processes it starts afterwards inherit them, while the MLX thread moves onto the reserved core
as it starts (Linux's affinity is a thread's own and is inherited by the threads and processes it makes).
"""

from __future__ import annotations

import os

from embedserver.tuning.cores import core_of

# The CPUs a reservation leaves to everything else, at the least: the front-ends, the engine's event loop and
# collector, the tokenizer's threads.
_LEAST_LEFT = 6

_reserved: set[int] = set()


def reserve_launch_core() -> set[int]:
    """Keep the last physical core this process may use for the MLX thread, and move the calling thread (and so
    what it starts later) onto the rest. The reserved CPUs; none where too few would be left, or off Linux."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:
        return set()
    core = core_of(max(cpus)) & cpus
    rest = cpus - core
    if len(rest) < _LEAST_LEFT:
        return set()
    os.sched_setaffinity(0, rest)
    _reserved.clear()
    _reserved.update(core)
    return set(core)


def enter_launch_core() -> None:
    """Called on the MLX thread as it starts: onto the reserved core, where one is reserved."""
    if _reserved:
        os.sched_setaffinity(0, _reserved)
