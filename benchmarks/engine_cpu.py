"""The engine alone (no HTTP) on a batch of 32 texts of 128 tokens: median time of 15 forward passes after 3
warm-up ones, and tokens/s. For the CPU path (embedserver/models/cpu_math.py); run it from two trees to
compare them. `python benchmarks/engine_cpu.py MODEL_DIR`"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import embedserver  # first: its BLAS preload must precede MLX
from embedserver.catalog import ModelSpec
from embedserver.loader import load_engine

engine = load_engine(ModelSpec(name="bench", source=sys.argv[1]))
rng = np.random.default_rng(0)
batch = [rng.integers(300, 30000, size=128).tolist() for _ in range(32)]
for _ in range(3):
    engine.embed(batch)
times = []
for _ in range(15):
    started = time.perf_counter()
    engine.embed(batch)
    times.append(time.perf_counter() - started)
median = float(np.median(times))
print(
    f"{embedserver.__file__}: 32 x 128 in {median * 1000:.1f} ms (median), {32 * 128 / median:,.0f} tokens/s"
)
