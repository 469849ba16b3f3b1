"""Does a busy Python thread (like the server's event loop under load) slow MLX forward passes on another
thread? Engine throughput alone, then beside a thread that keeps running Python bytecode."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import embedserver  # noqa: F401
from embedserver.catalog import ModelSpec
from embedserver.runtime.loader import load_engine

model = sys.argv[1] if len(sys.argv) > 1 else "/tmp/embedserver-bench/qwen3-0.6b"
engine = load_engine(ModelSpec(name="bench", source=model))
rng = np.random.default_rng(0)
stop = threading.Event()


def busy_python() -> None:
    x = 0
    while not stop.is_set():
        for i in range(1000):
            x += i * i


def run(batch: int, length: int, rounds: int = 20) -> float:
    seqs = [rng.integers(300, 30000, size=length).tolist() for _ in range(batch)]
    engine.embed(seqs)
    start = time.perf_counter()
    for _ in range(rounds):
        engine.embed(seqs)
    return batch * length * rounds / (time.perf_counter() - start)


for batch, length in [(8, 128), (64, 128), (256, 128)]:
    alone = run(batch, length)
    stop.clear()
    threads = [threading.Thread(target=busy_python) for _ in range(1)]
    for t in threads:
        t.start()
    beside = run(batch, length)
    stop.set()
    for t in threads:
        t.join()
    print(
        f"{batch}x{length}: alone {alone:,.0f} tok/s, beside a busy Python thread {beside:,.0f} tok/s "
        f"({beside / alone:.2f}x)",
        flush=True,
    )
