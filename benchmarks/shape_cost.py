"""What a new input shape costs MLX: the first forward pass at each (batch, length) against the second.
A large first-time cost means the server, whose batch sizes vary, should bucket shapes and warm them."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import embedserver  # noqa: F401  (BLAS preload before MLX)
from embedserver.catalog import ModelSpec
from embedserver.runtime.loader import load_engine

model = sys.argv[1] if len(sys.argv) > 1 else "/tmp/embedserver-bench/qwen3-0.6b"
engine = load_engine(ModelSpec(name="bench", source=model))
engine.warmup()
rng = np.random.default_rng(0)
firsts, seconds = [], []
for batch in [3, 5, 7, 9, 13, 17, 23, 29, 37, 45, 57, 71]:
    seqs = [rng.integers(300, 30000, size=128).tolist() for _ in range(batch)]
    t = time.perf_counter()
    engine.embed(seqs)
    first = (time.perf_counter() - t) * 1000
    t = time.perf_counter()
    engine.embed(seqs)
    second = (time.perf_counter() - t) * 1000
    firsts.append(first)
    seconds.append(second)
    print(f"batch {batch:3d} x 128: first {first:8.1f} ms, again {second:7.1f} ms", flush=True)
print(f"median first {np.median(firsts):.1f} ms, median again {np.median(seconds):.1f} ms")
