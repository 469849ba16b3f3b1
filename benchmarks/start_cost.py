"""Where a model's start goes: reading it, then its warm-up, shape by shape. Each warmed shape's first pass is
timed against a second pass of the same shape run afterwards, so the difference is that shape's one-time
set-up (on CUDA: compiling the custom kernels a new length needs, cuBLAS and cuDNN plans, a traced graph
under `COMPILE`), and the shapes are summed by length, the lengths being what picks new kernels.

  python -m benchmarks.start_cost MODEL_DIR [--json FILE]

The model is loaded and readied as the engine does it, with the server's settings from the environment
(`COMPILE=false python -m benchmarks.start_cost DIR` times a start without traced graphs). Run it in a
fresh process each time: kernels compiled once stay compiled for the rest of a process. MLX keeps its own
compiled kernels on disk (`MLX_PTX_CACHE_DIR`, by default a directory under the system's temporary one), so
a first start on a machine and a later one differ; point `MLX_PTX_CACHE_DIR` at an empty directory to time a
first start.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def measure(model: str) -> dict[str, Any]:
    started = time.perf_counter()
    import embedserver.runtime  # noqa: F401  (readies the process for MLX, as the engine's import does)
    from embedserver.catalog import ModelSpec
    from embedserver.runtime.device_policy import ready_for_device
    from embedserver.runtime.loader import load_runner
    from embedserver.server.engine_app import device_plan
    from embedserver.settings import Settings
    from embedserver.tokenization.token_ids import TokenIds

    imported = time.perf_counter()
    settings = Settings()
    runner = load_runner(
        ModelSpec(name="start_cost", source=model),
        dtype=settings.dtype,
        cuda_kernels=settings.cuda_kernels,
        fast_tokenizer=settings.fast_tokenizer,
    )
    loaded = time.perf_counter()
    # Each (rows, length) shape's first pass, in seconds; readying also times a few warmed shapes again.
    first: dict[tuple[int, int], float] = {}
    embed = runner.embed

    def timed(batch: Sequence[TokenIds]) -> np.ndarray:
        began = time.perf_counter()
        vectors = embed(batch)
        first.setdefault((len(batch), max(len(ids) for ids in batch)), time.perf_counter() - began)
        return vectors

    runner.embed = timed  # type: ignore[method-assign]
    try:
        ready_for_device(runner, device_plan(settings))
    finally:
        runner.embed = embed  # type: ignore[method-assign]
    ready = time.perf_counter()
    again: dict[tuple[int, int], float] = {}
    for rows, length in first:
        began = time.perf_counter()
        embed([[runner.tokenizer.pad_id] * length] * rows)
        again[(rows, length)] = time.perf_counter() - began
    by_length: dict[int, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for (rows, length), seconds in first.items():
        entry = by_length[length]
        entry[0] += 1
        entry[1] += seconds
        entry[2] += again[(rows, length)]
    slowest = sorted(first.items(), key=lambda shape: -shape[1])[:10]
    return {
        "model": model,
        "compile": settings.compile,
        "ptx_cache": os.environ.get("MLX_PTX_CACHE_DIR"),
        "import_s": round(imported - started, 3),
        "load_s": round(loaded - imported, 3),
        "ready_s": round(ready - loaded, 3),
        "shapes": len(first),
        "first_passes_s": round(sum(first.values()), 3),
        "second_passes_s": round(sum(again.values()), 3),
        "by_length": {
            str(length): {"shapes": int(n), "first_s": round(one, 3), "second_s": round(two, 3)}
            for length, (n, one, two) in sorted(by_length.items())
        },
        "slowest": [{"rows": r, "length": n, "first_ms": round(s * 1000, 1)} for (r, n), s in slowest],
    }


def report(result: dict[str, Any]) -> str:
    lines = [
        f"import {result['import_s']:.2f} s, load {result['load_s']:.2f} s, ready (warm-up and timing) "
        f"{result['ready_s']:.2f} s; {result['shapes']} shapes: first passes {result['first_passes_s']:.2f} s, "
        f"the same shapes again {result['second_passes_s']:.2f} s",
        f"{'length':>7} {'shapes':>6} {'first, s':>9} {'again, s':>9}",
    ]
    for length, row in result["by_length"].items():
        lines.append(f"{length:>7} {row['shapes']:>6} {row['first_s']:>9.2f} {row['second_s']:>9.3f}")
    slowest = ", ".join(f"{s['rows']}x{s['length']} {s['first_ms']:.0f} ms" for s in result["slowest"])
    lines.append(f"slowest first passes: {slowest}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = measure(args.model)
    print(report(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
