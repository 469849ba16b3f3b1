"""Where each forward pass's time goes on the MLX thread: building the graph (Python), queueing it on the
device (`mx.async_eval`: encoding kernels, cuBLAS/cuDNN set-up, allocation, with the GIL released) and
waiting for the device, per batch, with the idle time before it and MLX's memory after it. For telling a
forward pass slowed on the CPU side (contention, allocator) from one slowed on the device (filler rows).

  python benchmarks/forward_trace.py serve TRACE.csv        # the server (`python -m embedserver`, same env)
  python benchmarks/forward_trace.py summary TRACE.csv [...]  # means by padded rows
`install(path)` traces any process that runs `Engine.launch` (benchmarks/pipeline_check.py --trace PREFIX).
"""

from __future__ import annotations

import csv
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FIELDS = (
    "start",
    "texts",
    "rows",
    "length",
    "idle_ms",
    "build_ms",
    "queue_ms",
    "wait_ms",
    "active_mb",
    "cache_mb",
)


def install(path: Path) -> Callable[[Path], None]:
    """Wrap `Engine.launch` and `mx.async_eval` so every forward pass appends a row to `path` (flushed per
    row: the server leaves through os._exit, so nothing may wait for interpreter exit). Returns a function
    that sends the following rows to another file."""
    import mlx.core as mx

    from embedserver.runtime.padding import padded_shape
    from embedserver.runtime.runner import Engine

    sink: list[Any] = []

    def to(target: Path) -> None:
        sink[:] = [csv.writer(target.open("w", newline="", buffering=1))]
        sink[0].writerow(FIELDS)

    to(path)
    real_launch, real_async_eval = Engine.launch, mx.async_eval
    queued = threading.local()
    last_end = [0.0]

    def async_eval(*arrays: object) -> None:
        started = time.perf_counter()
        real_async_eval(*arrays)
        queued.seconds = time.perf_counter() - started

    def launch(self: Engine, batch: Sequence[Sequence[int]]) -> Callable[[], np.ndarray]:
        started = time.perf_counter()
        collect = real_launch(self, batch)
        launched = time.perf_counter()
        queue_s = getattr(queued, "seconds", 0.0)

        def timed_collect() -> np.ndarray:
            waiting = time.perf_counter()
            vectors = collect()
            ended = time.perf_counter()
            rows, length = padded_shape(batch, bucket_rows=self.bucket_rows)
            idle = (started - last_end[0]) * 1000 if last_end[0] else 0.0
            last_end[0] = ended
            sink[0].writerow(
                (
                    f"{started:.4f}",
                    len(batch),
                    rows,
                    length,
                    f"{idle:.2f}",
                    f"{(launched - started - queue_s) * 1000:.2f}",
                    f"{queue_s * 1000:.2f}",
                    f"{(ended - waiting) * 1000:.2f}",
                    mx.get_active_memory() >> 20,
                    mx.get_cache_memory() >> 20,
                )
            )
            return vectors

        return timed_collect

    mx.async_eval = async_eval
    Engine.launch = launch  # type: ignore[method-assign]
    return to


def summary(path: Path) -> str:
    """Per shape (padded rows x length): batches, texts, and the mean of each stage in ms; then all batches.
    A server's load-time warm-up is left out: passes up to the last one that followed over a second of idle
    time (the first of the load, whose idle time is the wait for it) do not count. A negative idle time is a
    batch launched before the previous one was collected."""
    with path.open() as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    gaps = [i for i, r in enumerate(rows) if r["idle_ms"] > 1000]
    rows = rows[gaps[-1] + 1 :] if gaps else rows
    if not rows:
        return f"{path}: no forward passes"
    groups: dict[str, list[dict[str, float]]] = defaultdict(list)
    for r in rows:
        groups[f"{int(r['rows'])} x {int(r['length'])}"].append(r)
    groups["all"] = rows
    stages = ("idle_ms", "build_ms", "queue_ms", "wait_ms")
    lines = [f"{path} ({len(rows)} forward passes, {rows[-1]['start'] - rows[0]['start']:.1f} s)"]
    lines.append(
        f"{'shape':>12} {'batches':>8} {'texts':>7} " + " ".join(f"{s:>9}" for s in stages) + "  ms/row"
    )
    for shape, group in sorted(groups.items(), key=lambda kv: (kv[0] == "all", -len(kv[1]))):
        means = [float(np.mean([r[s] for r in group])) for s in stages]
        busy = sum(r["build_ms"] + r["queue_ms"] + r["wait_ms"] for r in group)
        texts = sum(r["texts"] for r in group)
        per_row = busy / sum(r["rows"] for r in group)
        lines.append(
            f"{shape:>12} {len(group):>8} {texts / len(group):>7.1f} "
            + " ".join(f"{m:>9.2f}" for m in means)
            + f"  {per_row:.3f}"
        )
    filler = 1 - sum(r["texts"] for r in rows) / sum(r["rows"] for r in rows)
    lines.append(f"filler rows: {filler:.1%}; cache {rows[-1]['cache_mb']:.0f} MB at the end")
    return "\n".join(lines)


def main() -> None:
    command, paths = sys.argv[1], [Path(p) for p in sys.argv[2:]]
    if command == "summary":
        print("\n\n".join(summary(p) for p in paths))
        return
    import embedserver  # noqa: F401  (BLAS preload, MLX settings, before MLX loads)

    install(paths[0])
    from embedserver.__main__ import main as serve

    sys.argv = [sys.argv[0]]
    serve()


if __name__ == "__main__":
    main()
