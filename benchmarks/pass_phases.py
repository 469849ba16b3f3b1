"""Where a forward pass's time goes on the host, per batch shape: the phases `ModelRunner.embed` runs one after
another on the MLX thread, timed apart.

  python -m benchmarks.pass_phases MODEL_DIR [ROWSxLENGTH ...] [--plain]

prep: padding the token ids and making the input arrays; build: the Python calls that build the pass's graph
(one per operation, each taking the interpreter lock); eval: `mx.eval`, which queues every kernel and waits for
the device (the lock released); read: the vectors to numpy. Then the same with the pass compiled (`COMPILE`).
Medians of 20 passes after 5; `--plain` leaves the compiled passes out. On a GPU, a short pass's eval is mostly the host queueing ~230 kernels (about
2.8 ms for one text of 16 tokens on an H200), not the device computing. Ids are int32 arrays, as the engine gets
them from its front-ends. Defaults: 1x16 64x16 256x16 64x128 256x128.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from typing import Any

import numpy as np

PHASES = ("prep", "build", "eval", "read", "total")


def bench_runner(model: str) -> Any:
    """The model's runner as the server pads batches (bucketed row counts on GPUs) and bounds MLX's memory,
    without the server's warm-up: the benchmark times its own shapes."""
    # Before MLX: on Linux CPU, MLX multiplies with the BLAS loaded before it (embedserver/tuning/blas.py).
    import embedserver.runtime  # noqa: F401  (readies the process for MLX: BLAS preload, MLX settings)
    from embedserver.catalog import ModelSpec
    from embedserver.runtime.device import bound_gpu_memory
    from embedserver.runtime.loader import load_runner
    from embedserver.settings import DEFAULT_GPU_WORKSPACE_BYTES

    runner = load_runner(ModelSpec(name="bench", source=model))
    import mlx.core as mx

    runner.bucket_rows = mx.default_device() == mx.gpu
    bound_gpu_memory(DEFAULT_GPU_WORKSPACE_BYTES)
    return runner


def random_batch(runner: Any, shape: str, rng: np.random.Generator) -> list[np.ndarray]:
    """`shape` ("ROWSxLENGTH") as that many random texts of that many token ids."""
    rows, length = (int(n) for n in shape.split("x"))
    return [rng.integers(1, runner.tokenizer.vocab_size, size=length, dtype=np.int32) for _ in range(rows)]


def main() -> None:
    args = sys.argv[1:]
    modes = (False,) if "--plain" in args else (False, True)
    model, *shapes = [arg for arg in args if arg != "--plain"] or [""]
    if not model:
        sys.exit(__doc__)
    runner = bench_runner(model)  # first: it readies the process for MLX
    import mlx.core as mx

    from embedserver.runtime.padding import pad_right

    rng = np.random.default_rng(0)
    for compiled in modes:
        forward = runner._compiled_forward if compiled else runner._forward
        for shape in shapes or ["1x16", "64x16", "256x16", "64x128", "256x128"]:
            batch = random_batch(runner, shape, rng)
            rows, length = len(batch), len(batch[0])
            times: dict[str, list[float]] = defaultdict(list)
            for n in range(25):
                t0 = time.perf_counter()
                ids, lengths = pad_right(batch, runner.tokenizer.pad_id, bucket_rows=runner.bucket_rows)
                inputs = mx.array(ids), mx.array(lengths)
                t1 = time.perf_counter()
                pooled = forward(*inputs)
                t2 = time.perf_counter()
                mx.eval(pooled)
                t3 = time.perf_counter()
                np.array(pooled, copy=False)
                t4 = time.perf_counter()
                if n >= 5:
                    for phase, seconds in zip(
                        PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0), strict=True
                    ):
                        times[phase].append(seconds)
            ms = {phase: float(np.median(times[phase])) * 1000 for phase in PHASES}
            cells = "  ".join(f"{phase} {ms[phase]:7.3f}" for phase in PHASES)
            mode = "compiled" if compiled else "plain"
            print(
                f"{mode:8} {rows:4}x{length:<5} {cells} ms  {rows * length / ms['total'] * 1000:,.0f} tok/s"
            )


if __name__ == "__main__":
    main()
