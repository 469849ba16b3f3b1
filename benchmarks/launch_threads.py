"""How many passes a second the host can queue with one, two or three threads launching them: the model alone,
each thread with its own MLX stream (MLX gives each thread its own default stream and command encoder).

  python -m benchmarks.launch_threads MODEL_DIR [--threads 1,2,3] [--seconds 3] [ROWSxLENGTH ...]

Each thread warms the shapes on its own stream first (kernel and attention-graph set-up is per thread), then
launches passes of fresh token ids back to back for --seconds, waiting for each pass only after launching the
next (as the server's overlapped worker does). Prints passes/s, texts/s and tokens/s per thread count and shape;
on a GPU a short pass is mostly the host queueing its kernels, so this says whether queueing from several
threads at once adds up. Defaults: 128x16 256x16 128x32 256x128.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.pass_phases import bench_runner


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path)
    parser.add_argument("shapes", nargs="*", default=["128x16", "256x16", "128x32", "256x128"])
    parser.add_argument("--threads", default="1,2,3")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_intermixed_args()

    runner = bench_runner(str(args.model))
    shapes = [tuple(int(n) for n in shape.split("x")) for shape in args.shapes]

    for threads in (int(n) for n in args.threads.split(",")):
        for rows, length in shapes:
            counts, seconds = _run(runner, threads, rows, length, args.seconds)
            passes = sum(counts)
            print(
                f"threads {threads}  {rows:4}x{length:<4}  {passes / seconds:7.1f} passes/s  "
                f"{passes * rows / seconds:9,.0f} texts/s  {passes * rows * length / seconds:11,.0f} tokens/s  "
                f"(per thread {', '.join(str(c) for c in counts)})",
                flush=True,
            )


def _run(runner: Any, threads: int, rows: int, length: int, seconds: float) -> tuple[list[int], float]:
    """Passes each thread completed in about `seconds`, all threads launching at once, and the time taken."""
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
    started = time.perf_counter()
    go.set()
    time.sleep(seconds)
    stop.set()
    for thread in pool:
        thread.join()
    return counts, time.perf_counter() - started


if __name__ == "__main__":
    main()
