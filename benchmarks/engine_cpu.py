"""The engine alone (no HTTP) on a batch of texts of 128 tokens (32 unless given): median time of RUNS forward
passes (15) after 2 warm-up ones, and tokens/s. For the CPU path (embedserver/runtime/architectures/cpu_math.py); run it from
two trees to compare them. `python benchmarks/engine_cpu.py MODEL_DIR [BATCH] [RUNS]`"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import embedserver  # first: its BLAS preload must precede MLX
from embedserver.catalog import ModelSpec
from embedserver.runtime.loader import load_engine

size = int(sys.argv[2]) if len(sys.argv) > 2 else 32
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 15
engine = load_engine(ModelSpec(name="bench", source=sys.argv[1]))
rng = np.random.default_rng(0)
batch = [rng.integers(300, 30000, size=128).tolist() for _ in range(size)]
for _ in range(2):
    engine.embed(batch)
times = []
for _ in range(runs):
    started = time.perf_counter()
    engine.embed(batch)
    times.append(time.perf_counter() - started)
median = float(np.median(times))
print(
    f"{embedserver.__file__}: {size} x 128 in {median * 1000:.1f} ms (median), {size * 128 / median:,.0f} tokens/s"
)
