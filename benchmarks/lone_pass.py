"""What a lone request's pass costs on the server's MLX thread against the same pass on a process's main
thread, and what handing it to that thread and back costs: the part of one client's latency that is neither
the model nor HTTP.

  python -m benchmarks.lone_pass MODEL_DIR [--tokens 128] [--passes 200] [--rounds 2] [--cpus LIST|gpu]
      [--loop-cpus LIST] [--placements main,mlx[,spin]]

Each placement runs in a process of its own, loaded, readied (a lone text's pass compiled, as the server's
defaults run it) and timed on one thread, since MLX work stays on the thread that owns it:
- `main`: the process's main thread runs the passes.
- `mlx`: the server's MLX thread (`embedserver.runtime.device.mlx_executor`) runs them, each sent from an
  asyncio event loop as the batch worker sends a lone pass; the pass is timed on that thread, and the wait
  the loop sees includes the hand-over both ways.
- `spin`: the main thread again, spinning through the gap between passes where `main` sleeps: whether a
  CPU left idle (its sleep states, a virtual machine's halted CPU) makes the next pass's launch slower.
A pass every millisecond or so, as a lone client's next request follows its answer: each thread sleeps 1 ms
between passes. The placements' processes alternate (main, mlx, then mlx, main, ...) --rounds times, so a
host's drift touches both. --cpus pins the thread that runs the passes to those CPUs (a list such as
0-7,16; `gpu`: the CPUs the kernel lists as local to the GPU's PCI device, its NUMA node), --loop-cpus the
`mlx` placement's event loop: whether where the scheduler puts the two threads is what costs the time.
Prints each process's p50s and a JSON line.

On an H100 (2026-12-05, 128 tokens, medians of round p50s): the main thread 3.5-3.8 ms, the MLX thread
4.1 ms, and 4.5 ms as its event loop saw it. On the 2-core VM (the tiny model, 16 tokens, CPU): 0.88-0.97 ms
against 1.13-1.33, and 0.92 with the MLX thread on one CPU and its loop on the other; but there the server's
own MLX thread took 0.93-1.08 ms a lone client's pass (the mean of its `/metrics` forward times, where these
are medians), nearer the main thread's, so `mlx` overstates the server's cost on CPU. Spinning instead of
sleeping made the VM's CPU passes slower (1.47-1.65 ms against 0.88-0.90: MLX's CPU backend computes on
threads of its own, which the spinning thread crowds on two CPUs); on a GPU the passes' thread only
launches, which is what `spin` asks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.cpu_census import cpu_set
from benchmarks.host_facts import gpu_local_cpus, host_facts

PLACEMENTS = ("main", "mlx", "spin")
# Between passes, as a lone client's next request follows its answer.
_GAP_S = 0.001
# The CPUs the passes' thread may run on, as it read them once pinned (reported with the results).
_ran_on: set[int] = set()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--passes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cpus", default="", help="pin the passes' thread: a CPU list, or gpu")
    parser.add_argument("--loop-cpus", default="", help="pin the mlx placement's event loop: a CPU list")
    parser.add_argument("--placements", default="main,mlx", help=f"which of {', '.join(PLACEMENTS)} to run")
    parser.add_argument("--placement", choices=PLACEMENTS, help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    placements = tuple(args.placements.split(","))
    if unknown := sorted(set(placements) - set(PLACEMENTS)):
        parser.error(f"--placements: no placement {', '.join(unknown)}")
    cpus = cpu_list(args.cpus) if args.cpus else None
    if args.placement:
        if args.loop_cpus and args.placement == "mlx":
            os.sched_setaffinity(0, cpu_list(args.loop_cpus))  # this thread runs the event loop
        _child(args.model, args.placement, args.tokens, args.passes, cpus)
        return
    runs: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        for placement in placements if round_ % 2 == 0 else placements[::-1]:
            run = _in_process(args, placement)
            runs.append(run)
            waited = f", the loop waited {run['wait_p50_ms']:.3f}" if "wait_p50_ms" in run else ""
            print(
                f"round {round_ + 1}, {placement}: pass p50 {run['pass_p50_ms']:.3f} ms{waited}", flush=True
            )
    summary = {
        placement: {
            key: round(statistics.median(run[key] for run in runs if run["placement"] == placement), 3)
            for key in ("pass_p50_ms", "wait_p50_ms")
            if any(key in run for run in runs if run["placement"] == placement)
        }
        for placement in placements
    }
    print(f"median over rounds: {summary}")
    loop_cpus = sorted(cpu_list(args.loop_cpus)) if args.loop_cpus else None
    print(
        json.dumps(
            {
                "host": host_facts(),
                "tokens": args.tokens,
                "cpus": sorted(cpus) if cpus else None,
                "loop_cpus": loop_cpus,
                "runs": runs,
            }
        )
    )


def _in_process(args: argparse.Namespace, placement: str) -> dict[str, Any]:
    """One placement's passes in a process of its own: its results line."""
    command = [sys.executable, "-m", "benchmarks.lone_pass", str(args.model), "--placement", placement]
    command += ["--tokens", str(args.tokens), "--passes", str(args.passes)]
    command += ["--cpus", args.cpus, "--loop-cpus", args.loop_cpus]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{placement} failed (status {done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def cpu_list(spec: str) -> set[int]:
    """CPUs from a list such as "0-7,16", or from the GPU's PCI device ("gpu")."""
    return gpu_local_cpus() if spec == "gpu" else cpu_set(spec)


def _ready(model: Path, tokens: int, passes: int, cpus: set[int] | None) -> tuple[Any, list[np.ndarray]]:
    """On the thread that will run the passes: pinned, the model loaded and readied as the server readies it
    for one text, and the passes' token ids (random: a pass's time does not depend on them)."""
    if cpus:
        os.sched_setaffinity(0, cpus)  # on Linux, 0 is the calling thread
    _ran_on.update(os.sched_getaffinity(0))
    # Before MLX: on Linux CPU, MLX multiplies with the BLAS loaded before it (embedserver/tuning/blas.py).
    import embedserver.runtime  # noqa: F401  (readies the process for MLX: BLAS preload, MLX settings)
    from embedserver.catalog import ModelSpec
    from embedserver.runtime.device_policy import DevicePlan, ready_for_device
    from embedserver.runtime.loader import load_runner

    runner = ready_for_device(
        load_runner(ModelSpec(name="lone", source=str(model))), DevicePlan(max_batch=1, max_tokens=tokens)
    )
    rng = np.random.default_rng(0)
    ids = [
        rng.integers(1, runner.tokenizer.vocab_size, size=tokens, dtype=np.int32) for _ in range(passes + 5)
    ]
    for sequence in ids[-5:]:  # not timed: the first passes on this thread
        runner.embed([sequence])
    return runner, ids[:passes]


def _timed(runner: Any, sequence: np.ndarray) -> float:
    started = time.perf_counter()
    runner.embed([sequence])
    return time.perf_counter() - started


def _spin(seconds: float) -> None:
    """Wait `seconds` on the CPU, never leaving it idle."""
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


def _child(model: Path, placement: str, tokens: int, passes: int, cpus: set[int] | None) -> None:
    result: dict[str, Any] = {"placement": placement}
    if placement in ("main", "spin"):
        runner, ids = _ready(model, tokens, passes, cpus)
        times = []
        for sequence in ids:
            times.append(_timed(runner, sequence))
            if placement == "spin":
                _spin(_GAP_S)
            else:
                time.sleep(_GAP_S)
    else:
        times, waits = asyncio.run(_on_mlx_thread(model, tokens, passes, cpus))
        result["wait_p50_ms"] = round(1000 * statistics.median(waits), 3)
    result["pass_p50_ms"] = round(1000 * statistics.median(times), 3)
    result["ran_on"] = sorted(_ran_on)
    print(json.dumps(result), flush=True)
    from embedserver.runtime.device import hard_exit

    hard_exit(0)  # MLX used from a thread other than the main one may abort in its static destructors


async def _on_mlx_thread(
    model: Path, tokens: int, passes: int, cpus: set[int] | None
) -> tuple[list[float], list[float]]:
    from embedserver.runtime.device import mlx_executor

    loop = asyncio.get_running_loop()
    thread = mlx_executor()
    runner, ids = await loop.run_in_executor(thread, _ready, model, tokens, passes, cpus)
    times, waits = [], []
    for sequence in ids:
        sent = time.perf_counter()
        times.append(await loop.run_in_executor(thread, _timed, runner, sequence))
        waits.append(time.perf_counter() - sent)
        await asyncio.sleep(_GAP_S)
    return times, waits


if __name__ == "__main__":
    main()
