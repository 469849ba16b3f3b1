"""How many passes a second the host can queue with one, two or three threads, or processes, launching them: the
model alone, each thread with its own MLX stream (MLX gives each thread its own default stream and command
encoder), each process with its own copy of the model and its own CUDA context.

  python -m benchmarks.launch_parallel MODEL_DIR [--threads 1,2,3] [--processes 1,2] [--busy 0,0.5]
      [--spin 0,10] [--pin none,apart,beside] [--compile] [--seconds 3] [ROWSxLENGTH ...]

Each thread warms the shapes on its own stream first (kernel and attention-graph set-up is per thread), then
launches passes of fresh token ids back to back for --seconds, waiting for each pass only after launching the
next (as the server's overlapped worker does). Prints passes/s, texts/s and tokens/s per setting and shape. On
a GPU a short pass is mostly the host queueing its kernels, so this says what changes that host work:

- --threads T: T threads launching at once, each on its own stream: whether queueing from several threads
  adds up.
- --processes P: P processes running each shape at once (one thread each, started together); the line gives
  their sum: whether separate processes add up where threads do not (CUDA time-slices between processes'
  contexts).
- --busy F: beside the launching threads, a Python thread holding the interpreter lock a fraction F of the
  time in 2 ms turns, as a busy event loop does in the server's engine process: what sharing the lock costs
  the launches.
- --spin N: N other processes spinning in Python meanwhile, as a loaded server's front-ends and clients keep
  the machine's other cores busy: what that costs a launch (on an H200, 64x16 272-293 passes a second alone,
  200-250 beside ten).
- --pin P: where the launching process and the spinning ones run. `none` lets the kernel place them; `apart`
  gives the launcher a physical core of its own (every hardware thread of it) and the spinners the other
  cores; `beside` gives the launcher one hardware thread and the spinners every other one, its core's SMT
  sibling included. Whether a busy sibling or a shared core, rather than busy cores elsewhere, is what slows
  a loaded host's launches (the two differ only on a machine with SMT).
- --compile: the mx.compile'd forward pass (COMPILE=true), whose graph is built without Python.
- --collector: each pass waited for on a thread of its own, at most two in flight, as the server's overlapped
  worker does, instead of on the launching thread after it launched the next.

Defaults: 128x16 256x16 128x32 256x128.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.host_facts import core_of
from benchmarks.pass_phases import bench_runner


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path)
    parser.add_argument("shapes", nargs="*", default=["128x16", "256x16", "128x32", "256x128"])
    parser.add_argument("--threads", default="1,2,3")
    parser.add_argument("--processes", default="1")
    parser.add_argument("--busy", default="0", help="fractions of time a Python thread holds the lock")
    parser.add_argument("--spin", default="0", help="counts of other processes spinning in Python meanwhile")
    parser.add_argument("--pin", default="none", help="none, apart, beside: where launcher and spinners run")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--collector", action="store_true")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_intermixed_args()
    shapes = [tuple(int(n) for n in shape.split("x")) for shape in args.shapes]

    for processes in (int(n) for n in args.processes.split(",")):
        if processes > 1:
            for rows, length, counts, seconds in _in_processes(
                str(args.model), processes, shapes, args.seconds
            ):
                _report(f"processes {processes}", rows, length, counts, seconds)
            continue
        # Imported here, not at the top: the spawned processes (--processes, --spin) import this module too.
        from embedserver.runtime import device
        from embedserver.runtime.device_policy import compiled_below

        runner = bench_runner(str(args.model))
        runner.compiled_below = compiled_below(args.compile, device.backend())
        settings = [
            (float(busy), int(spin), pin)
            for busy in args.busy.split(",")
            for spin in args.spin.split(",")
            for pin in args.pin.split(",")
        ]
        # Affinity is Linux's: read and set only where a setting pins, so --pin none runs anywhere (Metal).
        pinning = any(pin != "none" for _, _, pin in settings)
        everywhere = os.sched_getaffinity(0) if pinning else set()
        for busy, spin, pin in settings:
            launcher, spinners = _placement(pin, everywhere)
            if pinning:
                os.sched_setaffinity(0, launcher)
            for threads in (int(n) for n in args.threads.split(",")):
                for rows, length in shapes:
                    with _busy_thread(busy), _spinning(spin, spinners):
                        counts, seconds = _run(
                            runner, threads, rows, length, args.seconds, collector=args.collector
                        )
                    label = f"threads {threads}" + (f" busy {busy:.2f}" if busy else "")
                    label += f" spin {spin}" if spin else ""
                    label += f" pin {pin}" if pin != "none" else ""
                    label += " collector" if args.collector else ""
                    _report(label, rows, length, counts, seconds)
            if pinning:
                os.sched_setaffinity(0, everywhere)
        del runner


def _placement(pin: str, cpus: set[int]) -> tuple[set[int], set[int]]:
    """The CPUs of the launching process and of the spinning ones for --pin `pin`, out of `cpus`."""
    if pin == "none":
        return cpus, cpus
    first = min(cpus)
    if pin == "apart":
        own = core_of(first) & cpus
        return own, (cpus - own) or cpus
    if pin == "beside":
        return {first}, (cpus - {first}) or cpus
    raise SystemExit(f"--pin takes none, apart or beside, not {pin!r}")


def _launch_collected(runner: Any, batch: Any, stop: threading.Event, counts: list[int], k: int) -> None:
    """Launch passes until `stop`, each waited for on a collector thread, at most two in flight."""
    with ThreadPoolExecutor(1) as collector:
        in_flight: deque[Future[Any]] = deque()
        while not stop.is_set():
            if len(in_flight) == 2:
                in_flight.popleft().result()
                counts[k] += 1
            in_flight.append(collector.submit(runner.launch(batch())))
        for waiting in in_flight:
            waiting.result()
            counts[k] += 1


@contextmanager
def _busy_thread(fraction: float, turn: float = 0.002) -> Iterator[None]:
    """A thread running Python (holding the interpreter lock) `fraction` of the time, `turn` seconds at a
    time, sleeping in between; none at 0."""
    if fraction <= 0:
        yield
        return
    stop = threading.Event()

    def spin() -> None:
        clock = time.perf_counter
        while not stop.is_set():
            end, work = clock() + turn, 0
            while clock() < end:
                work += 1
            time.sleep(turn * (1 - fraction) / fraction)

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextmanager
def _spinning(processes: int, cpus: set[int] | None = None) -> Iterator[None]:
    """`processes` other processes running Python without pause while the block runs, on `cpus` (by default
    anywhere); none at 0."""
    if processes <= 0:
        yield
        return
    context = mp.get_context("spawn")
    started = context.Barrier(processes + 1)
    pool = [context.Process(target=_spin, args=(started, cpus), daemon=True) for _ in range(processes)]
    for process in pool:
        process.start()
    started.wait()  # each is spinning before the measurement starts
    try:
        yield
    finally:
        for process in pool:
            process.terminate()
        for process in pool:
            process.join()


def _spin(started: Any, cpus: set[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    started.wait()
    work = 0
    while True:
        work += 1


def _report(label: str, rows: int, length: int, counts: list[int], seconds: float) -> None:
    passes = sum(counts)
    print(
        f"{label}  {rows:4}x{length:<4}  {passes / seconds:7.1f} passes/s  "
        f"{passes * rows / seconds:9,.0f} texts/s  {passes * rows * length / seconds:11,.0f} tokens/s  "
        f"(each {', '.join(str(c) for c in counts)})",
        flush=True,
    )


def _in_processes(
    model: str, processes: int, shapes: list[tuple[int, ...]], seconds: float
) -> list[tuple[int, int, list[int], float]]:
    """Each shape run by `processes` processes at once, one launching thread each: passes per process and
    the longest time one took."""
    context = mp.get_context("spawn")
    start = context.Barrier(processes)
    results = context.Queue()
    pool = [
        context.Process(target=_process, args=(model, shapes, seconds, start, results))
        for _ in range(processes)
    ]
    for process in pool:
        process.start()
    parts = [results.get() for _ in pool]
    for process in pool:
        process.join()
    summary = []
    for index, (rows, length) in enumerate(shapes):
        counts = [sum(part[index][0]) for part in parts]
        summary.append((rows, length, counts, max(part[index][1] for part in parts)))
    return summary


def _process(model: str, shapes: list[tuple[int, int]], seconds: float, start: Any, results: Any) -> None:
    runner = bench_runner(model)
    results.put([_run(runner, 1, rows, length, seconds, start.wait) for rows, length in shapes])


def _run(
    runner: Any,
    threads: int,
    rows: int,
    length: int,
    seconds: float,
    warmed: Any = None,
    *,
    collector: bool = False,
) -> tuple[list[int], float]:
    """Passes each thread completed in about `seconds`, all threads launching at once, and the time taken.
    `warmed` runs once every thread has warmed the shape, before they start (another process's barrier).
    `collector`: each thread's passes are waited for on a thread of its own, at most two in flight."""
    counts = [0] * threads
    ready = threading.Barrier(threads + 1)
    go, stop = threading.Event(), threading.Event()
    vocab = runner.tokenizer.vocab_size

    def work(k: int) -> None:
        rng = np.random.default_rng(k)

        def batch() -> list[np.ndarray]:
            return [rng.integers(1, vocab, size=length, dtype=np.int32) for _ in range(rows)]

        for _ in range(3):  # this thread's stream: kernels and attention graphs set up here
            runner.embed(batch())
        ready.wait()
        go.wait()
        if collector:
            _launch_collected(runner, batch, stop, counts, k)
            return
        waiting = runner.launch(batch())
        while not stop.is_set():
            following = runner.launch(batch())
            waiting()
            counts[k] += 1
            waiting = following
        waiting()
        counts[k] += 1

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for thread in pool:
        thread.start()
    ready.wait()
    if warmed is not None:
        warmed()
    started = time.perf_counter()
    go.set()
    time.sleep(seconds)
    stop.set()
    for thread in pool:
        thread.join()
    return counts, time.perf_counter() - started


if __name__ == "__main__":
    main()
