"""How long one forward pass takes, and how much memory MLX holds at its peak, per batch shape: can this machine
take the longest texts and the largest batches the limits let in (MAX_TEXT_LENGTH, MAX_BATCH_TOKENS)?

  python -m benchmarks.pass_memory MODEL_DIR [ROWSxLENGTH ...]

The model alone (`ModelRunner.embed`, as the batch worker calls it), random token ids, one pass a shape after a
pass of one short text (a GPU's first pass of a shape also compiles its kernels: run a shape twice to see
both). Peak is MLX's own count (`mx.get_peak_memory`: the weights and every buffer of the pass), reset before
each pass. To compare two source trees, run it from each tree's root in turn (copy this file and
pass_phases.py into an older tree's benchmarks/). Defaults: 1x512 1x2048 1x8192 4x2048.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from benchmarks.pass_phases import bench_runner, random_batch


def main() -> None:
    model, *shapes = sys.argv[1:] or [""]
    if not model:
        sys.exit(__doc__)
    runner = bench_runner(model)  # first: it readies the process for MLX
    import mlx.core as mx

    from embedserver.tuning import blas

    rng = np.random.default_rng(0)
    runner.embed([rng.integers(1, runner.tokenizer.vocab_size, size=16, dtype=np.int32)])
    print(
        f"device {mx.default_device()}, BLAS {blas.inspect().library or 'n/a'}, "
        f"weights {mx.get_active_memory() / 1e9:.2f} GB"
    )
    for shape in shapes or ["1x512", "1x2048", "1x8192", "4x2048"]:
        batch = random_batch(runner, shape, rng)
        rows, length = len(batch), len(batch[0])
        mx.reset_peak_memory()
        started = time.perf_counter()
        runner.embed(batch)
        seconds = time.perf_counter() - started
        print(
            f"{shape:>10}: {seconds:8.2f} s, {rows * length / seconds:10,.0f} tokens/s, "
            f"peak {mx.get_peak_memory() / 1e9:6.2f} GB",
            flush=True,
        )


if __name__ == "__main__":
    main()
