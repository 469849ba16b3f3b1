"""How the batch worker's scheduling shapes throughput, without a GPU: the real `BatchWorker` (asyncio,
executor thread, cuts and buckets) in front of a simulated device that holds the MLX thread for as long as
the H100 takes for a batch of that many (padded) rows, driven by closed-loop clients that spend a fixed time
outside the queue per request (HTTP, the link, tokenization).

The device's cost model, from the 0.6B shape at 128 tokens on the H100 (docs/PERFORMANCE.md): a forward pass
takes max(FLOOR, FIXED + PER_ROW * rows): about 6 ms up to ~17 rows (launch-bound), 21 ms at 68 rows, 78 ms at
256. No vectors are computed: the worker gets zero rows back, and only its timing is measured.

  python benchmarks/batching_sim.py [--clients 256] [--outside-ms 45] [--seconds 6] [--no-bucket]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from embedserver.batching.worker import BatchLimits, BatchWorker
from embedserver.metrics import Metrics
from embedserver.runtime.padding import bucket_batch

FLOOR_S, FIXED_S, PER_ROW_S = 0.006, 0.001, 0.0003
TOKENS = 128


class SimulatedDevice:
    def __init__(self, bucketed: bool) -> None:
        self.bucketed = bucketed
        self.rows = 0
        self.texts = 0
        self.batches = 0
        self.busy_s = 0.0

    def cost(self, rows: int) -> float:
        return max(FLOOR_S, FIXED_S + PER_ROW_S * rows)

    def __call__(self, batch: list[list[int]]) -> np.ndarray:
        rows = bucket_batch(len(batch)) if self.bucketed else len(batch)
        seconds = self.cost(rows)
        time.sleep(seconds)
        self.rows += rows
        self.texts += len(batch)
        self.batches += 1
        self.busy_s += seconds
        return np.zeros((len(batch), 4), dtype=np.float32)


async def run(
    clients: int, outside_s: float, seconds: float, bucketed: bool, spread: bool
) -> dict[str, float]:
    device = SimulatedDevice(bucketed)
    limits = BatchLimits(max_size=256, max_tokens=65536, wait_s=0.005, max_queue=100_000)
    worker = BatchWorker(
        "sim",
        device,
        limits=limits,
        metrics=Metrics(),
        executor=ThreadPoolExecutor(1),
        bucketed_rows=bucketed,
    )
    worker.start()
    done = 0
    deadline = time.perf_counter() + seconds
    rng = np.random.default_rng(0)

    async def client(jitter: float) -> None:
        nonlocal done
        await asyncio.sleep(jitter)
        while time.perf_counter() < deadline:
            await asyncio.sleep(rng.exponential(outside_s / 2) if spread else outside_s / 2)
            (future,) = worker.submit([[1] * TOKENS])
            await future
            await asyncio.sleep(rng.exponential(outside_s / 2) if spread else outside_s / 2)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(float(j)) for j in rng.uniform(0, outside_s, clients)))
    elapsed = time.perf_counter() - started
    await worker.stop()
    full = 256 / device.cost(256)  # the engine's texts/s at 256 rows
    return {
        "requests_per_s": done / elapsed,
        "share_of_engine": done / elapsed / full,
        "texts_per_batch": device.texts / max(device.batches, 1),
        "filler_share": 1 - device.texts / max(device.rows, 1),
        "device_busy": device.busy_s / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--outside-ms", type=float, default=45.0)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--spread", action="store_true", help="outside times drawn from an exponential")
    parser.add_argument("--no-bucket", action="store_true", help="the engine runs exact batch sizes (CPU)")
    args = parser.parse_args()
    result = asyncio.run(
        run(args.clients, args.outside_ms / 1000, args.seconds, not args.no_bucket, args.spread)
    )
    print("  ".join(f"{k} {v:,.3f}" if v < 10 else f"{k} {v:,.0f}" for k, v in result.items()))


if __name__ == "__main__":
    main()
