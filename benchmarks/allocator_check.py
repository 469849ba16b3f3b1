"""Is MLX's buffer cache what slows forward passes inside the server? (docs/PERFORMANCE.md, session 3)

The engine alone, on the batch sizes a loaded server runs (random rows of 128-token texts, bucketed as the
server does), in four states: fresh; after the server's load-time warm-up (every bucketed shape up to 512
tokens and the batch limits); warm-up then `mx.clear_cache()`; warm-up with a cache limit. Prints tokens/s
and the cached bytes after each. A warm-up that leaves the allocator near its limit shows as the slow state.

A first line runs one shape (128 x 128) over and over: the engine's best case, for scale. `--quick` stops
after the fresh state (for comparing MLX environment variables such as MLX_USE_CUDA_GRAPHS run to run).

  python benchmarks/allocator_check.py [MODEL_DIR] [--max-batch 256] [--max-tokens 65536] [--cache-gb 8] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import embedserver  # noqa: F401  (BLAS preload before MLX)
from embedserver.catalog import ModelSpec
from embedserver.runtime.loader import load_engine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default="/tmp/embedserver-bench/qwen3-0.6b")
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=65536)
    parser.add_argument("--cache-gb", type=float, default=8.0)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workspace-gb", type=float, help="bound in-flight memory as the server does")
    parser.add_argument(
        "--mlx-lm-layers", action="store_true", help="without the CUDA kernels (CUDA_KERNELS=false)"
    )
    args = parser.parse_args()

    import mlx.core as mx

    engine = load_engine(ModelSpec(name="bench", source=args.model), cuda_kernels=not args.mlx_lm_layers)
    engine.bucket_rows = True
    if args.workspace_gb:
        from embedserver.runtime.device import bound_gpu_memory

        bound_gpu_memory(int(args.workspace_gb * (1 << 30)))
    rng = np.random.default_rng(0)
    # Batch sizes as a 256-client server saw them (mostly 32-128 rows, some small, some full).
    rows = rng.choice([8, 24, 40, 56, 72, 88, 104, 120, 160, 250], size=args.batches).tolist()
    batches = [[rng.integers(300, 30000, size=128).tolist() for _ in range(n)] for n in rows]

    def run(state: str, sequence: list[list[list[int]]] = batches) -> None:
        for batch in {len(b): b for b in sequence}.values():  # every shape once: first-use costs not counted
            engine.embed(batch)
        started = time.perf_counter()
        for batch in sequence:
            engine.embed(batch)
        seconds = time.perf_counter() - started
        tokens = sum(len(b) for b in sequence) * 128
        cached = mx.get_cache_memory() / 1e9
        peak = mx.get_peak_memory() / 1e9
        print(
            f"{state:34s} {tokens / seconds:10,.0f} tokens/s   cache {cached:6.1f} GB   peak {peak:5.1f} GB",
            flush=True,
        )

    same = [batches[0][:1] * 128] * 20
    run("one shape, 128 x 128, repeated", same)
    run("fresh (no warm-up)")
    if args.quick:
        return
    started = time.perf_counter()
    warmed = engine.warmup(max_batch=args.max_batch, max_tokens=args.max_tokens, max_length=512)
    print(f"warm-up: {warmed} shapes in {time.perf_counter() - started:.1f} s", flush=True)
    run("after the warm-up")
    mx.clear_cache()
    run("warm-up, then clear_cache")
    mx.set_cache_limit(int(args.cache_gb * 1e9))
    engine.warmup(max_batch=args.max_batch, max_tokens=args.max_tokens, max_length=512)
    run(f"warm-up under a {args.cache_gb:g} GB cache limit")


if __name__ == "__main__":
    main()
