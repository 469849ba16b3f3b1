"""The device's side of each forward pass: when its kernels ran on the GPU, from CUPTI (through torch's
profiler, which records every kernel of the process, MLX's included). Tells a pass slowed on the device
(kernels that take longer) from one the device waited for (gaps between kernels: the CPU side was late).

  python -m benchmarks.kernel_timeline serve OUT.json        # the server (`python -m embedserver`, same env)
  python -m benchmarks.kernel_timeline runner OUT.json MODEL_DIR  # the model alone, the server's batch sizes
  python -m benchmarks.kernel_timeline runner-beside-python OUT.json MODEL_DIR  # ... beside a busy thread
  python -m benchmarks.kernel_timeline summary OUT.json [...]

KERNEL_FROM (pass number, default 600 for `serve`: after the load-time warm-up) and KERNEL_PASSES (default
60) choose the profiled passes; KERNEL_ROWS (`runner` only: batch sizes drawn in turn, default 48,64,64,64,96,
the server's at 256 clients; 256 gives the model-alone benchmark's 256 x 128) and KERNEL_LENGTH (default 128)
the shapes. The summary also counts the CUDA runtime and driver calls each pass makes on the host (launches,
graph updates, allocation): what of a short pass's host time is CUDA's own. Needs torch with CUDA (the lent GPU machine has it).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections import defaultdict
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

PASS_PREFIX = "pass "


def install(path: Path, first: int, passes: int) -> None:
    """Wrap `ModelRunner.embed`: passes number `first` to `first + passes - 1` run under torch's profiler, each
    marked as a range named "pass ROWSxLENGTH"; the trace goes to `path` after the last of them."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from embedserver.runtime.padding import padded_shape
    from embedserver.runtime.runner import ModelRunner
    from embedserver.tokenization.token_ids import TokenIds

    real_embed = ModelRunner.embed
    state: dict[str, Any] = {"n": 0, "profiler": None}

    def embed(self: ModelRunner, batch: Sequence[TokenIds]) -> np.ndarray:
        state["n"] += 1
        n = state["n"]
        if n == first:
            torch.cuda.init()
            state["profiler"] = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            state["profiler"].start()
        if not first <= n < first + passes:
            return real_embed(self, batch)
        rows, length = padded_shape(batch, bucket_rows=self.bucket_rows)
        with record_function(f"{PASS_PREFIX}{rows}x{length}"):
            vectors = real_embed(self, batch)
        if n == first + passes - 1:
            state["profiler"].stop()
            state["profiler"].export_chrome_trace(str(path))
            print(f"kernel timeline: {passes} passes written to {path}", flush=True)
        return vectors

    ModelRunner.embed = embed  # type: ignore[method-assign]


def _intervals(events: list[dict[str, Any]]) -> list[tuple[float, float]]:
    return sorted((float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in events)


def _pass_marks(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The passes' marks on the host (the profiler mirrors each onto the GPU's timeline too, as
    "gpu_user_annotation")."""
    return [e for e in events if e.get("cat") == "user_annotation" and str(e["name"]).startswith(PASS_PREFIX)]


def pass_stats(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """Per marked pass (in µs): its span on the CPU side, the kernels that started within it, their busy
    time, the delay to the first kernel, the idle time between kernels, and the tail after the last one."""
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    kernels = _intervals([e for e in events if e.get("cat") == "kernel"])
    starts = np.array([k[0] for k in kernels])
    out = []
    for mark in _pass_marks(events):
        begin, end = float(mark["ts"]), float(mark["ts"]) + float(mark["dur"])
        inside = kernels[np.searchsorted(starts, begin) : np.searchsorted(starts, end)]
        if not inside:
            continue
        busy = sum(b - a for a, b in inside)
        out.append(
            {
                "shape": mark["name"][len(PASS_PREFIX) :],
                "span": end - begin,
                "kernels": len(inside),
                "busy": busy,
                "delay": inside[0][0] - begin,
                "idle": inside[-1][1] - inside[0][0] - busy,
                "tail": end - inside[-1][1],
                "gaps_over_50us": sum(1 for (_, b), (a, _) in pairwise(inside) if a - b > 50),
            }
        )
    return out


# What MLX puts before a custom kernel's name: `mlx::core::cu::custom_kernel_<name>_<template arguments>(...)`.
_CUSTOM = "mlx::core::cu::custom_kernel_"


def kernel_label(name: str) -> str:
    """A kernel's name as the summary groups it: a custom kernel's name and template arguments (one row per
    instantiation, e.g. `embedserver_norm_matmul_bfloat16_t_t_1024_4096_f_64`), without MLX's prefix and the
    parameter list; any other kernel's first 60 characters."""
    if name.startswith(_CUSTOM):
        return name[len(_CUSTOM) :].split("(", 1)[0]
    return name[:60]


def kernel_means(trace: dict[str, Any], top: int = 14) -> list[tuple[str, int, float, float]]:
    """The kernels with the most total time: (label, count, mean µs, share of all kernel time)."""
    totals: dict[str, list[float]] = defaultdict(list)
    for e in trace["traceEvents"]:
        if e.get("ph") == "X" and e.get("cat") == "kernel":
            totals[kernel_label(str(e["name"]))].append(float(e["dur"]))
    ranked = sorted(totals.items(), key=lambda kv: -sum(kv[1]))[:top]
    everything = sum(sum(d) for d in totals.values()) or 1.0
    return [(name, len(d), float(np.mean(d)), sum(d) / everything) for name, d in ranked]


def host_calls(trace: dict[str, Any], top: int = 12) -> tuple[int, list[tuple[str, float, float]]]:
    """The CUDA runtime and driver calls made inside marked passes (CUPTI records them with the kernels): the
    number of passes, and per call name its count a pass and its µs a pass, most time first. What a pass's
    host side spends in CUDA itself, against the rest of MLX's encoding."""
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    marks = sorted((float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in _pass_marks(events))
    if not marks:
        return 0, []
    begins = np.array([b for b, _ in marks])
    counts: dict[str, int] = defaultdict(int)
    totals: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") not in ("cuda_runtime", "cuda_driver"):
            continue
        ts = float(e["ts"])
        i = int(np.searchsorted(begins, ts, side="right")) - 1
        if i < 0 or ts > marks[i][1]:
            continue
        counts[str(e["name"])] += 1
        totals[str(e["name"])] += float(e["dur"])
    n = len(marks)
    ranked = sorted(totals, key=lambda name: -totals[name])[:top]
    return n, [(name, counts[name] / n, totals[name] / n) for name in ranked]


def summary(path: Path) -> str:
    trace = json.loads(path.read_text())
    stats = pass_stats(trace)
    if not stats:
        return f"{path}: no marked passes with kernels"
    fields = ("span", "busy", "delay", "idle", "tail")
    lines = [f"{path} ({len(stats)} passes; ms, means)"]
    lines.append(
        f"{'shape':>10} {'passes':>6} {'kernels':>7} " + " ".join(f"{f:>7}" for f in fields) + "  gaps>50us"
    )
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in stats:
        groups[s["shape"]].append(s)
    groups["all"] = stats
    for shape, group in sorted(groups.items(), key=lambda kv: (kv[0] == "all", -len(kv[1]))):
        means = [np.mean([s[f] for s in group]) / 1000 for f in fields]
        lines.append(
            f"{shape:>10} {len(group):>6} {np.mean([s['kernels'] for s in group]):>7.0f} "
            + " ".join(f"{m:>7.2f}" for m in means)
            + f"  {np.mean([s['gaps_over_50us'] for s in group]):.1f}"
        )
    passes, calls = host_calls(trace)
    if calls:
        lines.append(f"CUDA API calls inside passes (per pass: count, µs; {passes} passes):")
        lines += [f"  {count:>8.1f} {micros:>9.1f}  {name}" for name, count, micros in calls]
    lines.append("top kernels (count, mean µs, share of kernel time):")
    lines += [
        f"  {count:>6} {mean:>9.1f} {share:>6.1%}  {name}" for name, count, mean, share in kernel_means(trace)
    ]
    return "\n".join(lines)


def busy_python(stop: threading.Event) -> None:
    """Python bytecode without pause: a saturated event loop holding the GIL."""
    x = 0
    while not stop.is_set():
        x += 1


def runner_alone(out: Path, model: str, passes: int, beside_python: bool) -> None:
    """The batch sizes a server runs at 256 clients (48-96 x 128 tokens, or KERNEL_ROWS x KERNEL_LENGTH), one
    after another; with `beside_python`, next to a thread running Python without pause (a saturated event
    loop)."""
    import embedserver.runtime  # noqa: F401  (readies the process for MLX: BLAS preload, MLX settings)
    from embedserver.catalog import ModelSpec
    from embedserver.runtime.device import bound_gpu_memory
    from embedserver.runtime.loader import load_runner
    from embedserver.settings import DEFAULT_GPU_WORKSPACE_BYTES

    runner = load_runner(ModelSpec(name="bench", source=model))
    runner.bucket_rows = True
    bound_gpu_memory(DEFAULT_GPU_WORKSPACE_BYTES)
    rng = np.random.default_rng(0)
    sizes = [int(n) for n in os.environ.get("KERNEL_ROWS", "48,64,64,64,96").split(",")]
    length = int(os.environ.get("KERNEL_LENGTH", "128"))
    rows = rng.choice(sizes, size=passes + 20).tolist()
    batches = [[rng.integers(300, 30000, size=length).tolist() for _ in range(n)] for n in rows]
    for batch in {len(b): b for b in batches}.values():
        runner.embed(batch)
    stop = threading.Event()
    if beside_python:
        threading.Thread(target=busy_python, args=(stop,), daemon=True).start()
    install(out, first=21, passes=passes)
    for batch in batches:
        runner.embed(batch)
    stop.set()


def main() -> None:
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "summary":
        print("\n\n".join(summary(Path(p)) for p in rest))
        return
    passes = int(os.environ.get("KERNEL_PASSES", "60"))
    if command in ("runner", "runner-beside-python"):
        runner_alone(Path(rest[0]), rest[1], passes, beside_python=command == "runner-beside-python")
        return
    import embedserver.runtime  # noqa: F401  (readies the process for MLX: BLAS preload, MLX settings)

    install(Path(rest[0]), int(os.environ.get("KERNEL_FROM", "600")), passes)
    from embedserver.cli import main as serve

    serve(["serve"])


if __name__ == "__main__":
    main()
