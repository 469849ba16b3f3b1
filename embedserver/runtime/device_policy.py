"""How a loaded model is readied for the device it runs on, and how its memory is given back.

The runtime owns this, not the registry: which shapes to warm, whether batch sizes are padded to buckets, how
much GPU memory MLX may hold beyond the weights, and when MLX's buffer cache is emptied all follow from the
device, and the registry only loads, counts and evicts.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Literal

import mlx.core as mx

from embedserver.runtime import device
from embedserver.runtime.architectures.qwen3 import QUEUE_EARLY_TOKENS
from embedserver.runtime.load_steps import LoadSteps, run_steps
from embedserver.runtime.padding import batch_buckets
from embedserver.runtime.runner import ModelRunner, WarmupFailed
from embedserver.tuning.gc_freeze import collect_everything

log = logging.getLogger(__name__)

# Warm every bucketed shape up to this many tokens per text at load (longer texts pay their first-use cost).
_WARM_LENGTH = 512

# Padded tokens worth one more forward pass (plan_batches splits a batch past them): a pass's fixed time over
# its time per padded token. GPUs measure it for each model after the warm-up (split_tokens_measured): 1,924-2,012
# for the 0.6B model on an H200 (about 3.3 ms over 1.7 µs); a larger model costs more a token, so it splits
# sooner. The fallback where the measurement makes no sense, and the bounds a measurement is held within:
_SPLIT_TOKENS_GPU = 2048
_SPLIT_TOKENS_BOUNDS = (128, 16384)
# CPU: a pass costs little beyond its tokens (not measured: the time would be the warm-up's, on small machines).
_SPLIT_TOKENS_CPU = 64
# The shapes timed: one short text (the fixed cost) and the most rows of 128-token texts within this many tokens
# and the batch limits (the cost per padded token); each the fastest of a few runs.
_SPLIT_LONG_TOKENS = 16384
_SPLIT_RUNS = 3

# COMPILE=auto on CUDA: passes of fewer padded tokens run as one compiled graph per shape. A lone pass builds
# its graph in Python (~300 operation calls) before the device gets any of it; compiled, that is one call. On
# an H200 (0.6B, bf16; docs/perf/log.md, 2026-12-04), medians of 160 lone passes, eager against compiled: 1 x
# 128 4.04 against 3.32 ms, 4 x 128 3.94 against 3.23, 1 x 512 5.15 against 4.03, the vectors the same. From
# this many tokens (1,024) an eager pass queues its first layers while it builds the rest (qwen3.py),
# which a traced graph cannot; and under load the next pass is built while the device runs the current one,
# compiled or not (`COMPILE=true` measured within the rounds' spread there). Metal keeps eager passes under
# `auto`: nothing there has been measured or run compiled by this project.
_COMPILED_BELOW_TOKENS = QUEUE_EARLY_TOKENS


def compiled_below(compile_forward: bool | Literal["auto"], backend: str) -> int:
    """The padded tokens under which a pass runs compiled on a GPU `backend`, for the COMPILE setting."""
    if compile_forward == "auto":
        return _COMPILED_BELOW_TOKENS if backend == "cuda" else 0
    return sys.maxsize if compile_forward else 0


@dataclass(frozen=True)
class DevicePlan:
    """The serving limits a model is readied for (from the settings)."""

    max_batch: int
    max_tokens: int
    compile_forward: bool | Literal["auto"] = "auto"
    gpu_workspace_bytes: int = 4 << 30


def ready_for_device(runner: ModelRunner, plan: DevicePlan) -> ModelRunner:
    """Runs on the MLX thread after the weights are loaded; returns the same runner, ready to serve."""
    return run_steps(ready_for_device_steps(runner, plan))


def ready_for_device_steps(runner: ModelRunner, plan: DevicePlan) -> LoadSteps[ModelRunner]:
    """`ready_for_device` as steps (load_steps.py): one warm-up shape each."""
    if device.backend() == "cpu":
        # A new shape costs nothing extra on CPU (the 0.6B model on the 2-core VM: a shape's first pass as fast
        # as its second, 1 x 16 to 2 x 64): one short pass proves the model runs, and batches keep their exact
        # sizes (no filler rows). Every bucketed shape up to 2 x 64 took 4.2 s of that model's start there.
        runner.split_tokens = _SPLIT_TOKENS_CPU
        yield from runner.warmup_steps(max_batch=1, max_tokens=16, max_length=16)
        return runner
    # A new shape costs tens of milliseconds of kernel set-up on GPUs: batch sizes are padded to a few
    # buckets, and every bucketed shape within the limits runs once now rather than on a request.
    runner.bucket_rows = True
    # Measured on CUDA, where a short pass is mostly the host queueing its kernels (docs/PERFORMANCE.md).
    runner.overlap_passes = device.backend() == "cuda"
    runner.compiled_below = compiled_below(plan.compile_forward, device.backend())
    device.bound_gpu_memory(plan.gpu_workspace_bytes)
    started = time.perf_counter()
    try:
        shapes = yield from runner.warmup_steps(
            max_batch=plan.max_batch, max_tokens=plan.max_tokens, max_length=_WARM_LENGTH
        )
    except Exception as exc:  # not GeneratorExit: a load dropped part-way touches MLX no more
        free_memory()  # a failed warm-up's leftovers (its traceback holds arrays) are not kept for the retry
        if not isinstance(exc, WarmupFailed):
            raise
        raise RuntimeError(
            f"{exc}; if the device ran out of memory, lower MAX_BATCH_TOKENS (now {plan.max_tokens}) "
            f"or MAX_BATCH_SIZE (now {plan.max_batch})"
        ) from exc
    # The time includes other models' passes run between the shapes.
    log.info("%s: warmed %d shapes in %.1fs", runner.name, shapes, time.perf_counter() - started)
    runner.split_tokens = split_tokens_measured(runner, max_batch=plan.max_batch, max_tokens=plan.max_tokens)
    # The warm-up leaves buffers in MLX's cache sized for shapes traffic rarely repeats; kept, they push the
    # allocator into freeing (and synchronizing the device) on later misses. The warm-up's arrays are freed
    # already (no cycles), so no full collection here: the one that freezes the loaded model runs next, and
    # each full collection holds the interpreter lock long enough to stall every other model's traffic.
    mx.clear_cache()
    return runner


def split_tokens_measured(runner: ModelRunner, *, max_batch: int, max_tokens: int) -> int:
    """Padded tokens worth one more pass of this model on this device, from two warmed shapes timed now."""
    budget = max(128, min(max_tokens, _SPLIT_LONG_TOKENS))
    short, long = (1, 16), (max(rows for rows in batch_buckets(max_batch) if rows * 128 <= budget), 128)
    try:
        timed = {shape: _fastest_pass(runner, *shape) for shape in (short, long)}
    except Exception:  # both shapes ran in the warm-up; a pass failing now must not fail the load
        log.warning(
            "%s: timing two passes failed; batches split past %d padded tokens",
            runner.name,
            _SPLIT_TOKENS_GPU,
            exc_info=True,
        )
        return _SPLIT_TOKENS_GPU
    split = split_tokens_from(short[0] * short[1], timed[short], long[0] * long[1], timed[long])
    log.info(
        "%s: a pass of %d x %d took %.2f ms, %d x %d %.2f ms: batches split past %d padded tokens",
        runner.name,
        *short,
        1e3 * timed[short],
        *long,
        1e3 * timed[long],
        split,
    )
    return split


def split_tokens_from(short_tokens: int, short_s: float, long_tokens: int, long_s: float) -> int:
    """A pass's fixed time over its time per padded token, from the times of a short and a long pass; within
    _SPLIT_TOKENS_BOUNDS, and _SPLIT_TOKENS_GPU where the long pass was not the slower one per added token."""
    per_token = (long_s - short_s) / (long_tokens - short_tokens) if long_tokens > short_tokens else 0.0
    if per_token <= 0:
        return _SPLIT_TOKENS_GPU
    fixed = max(0.0, short_s - per_token * short_tokens)
    low, high = _SPLIT_TOKENS_BOUNDS
    return min(high, max(low, round(fixed / per_token)))


def _fastest_pass(runner: ModelRunner, rows: int, length: int) -> float:
    batch = [[runner.tokenizer.pad_id] * length] * rows
    times = []
    for _ in range(_SPLIT_RUNS):
        started = time.perf_counter()
        runner.embed(batch)
        times.append(time.perf_counter() - started)
    return min(times)


def free_memory() -> None:
    """Give an unloaded model's memory back: its arrays (frozen objects included) and MLX's cached buffers."""
    collect_everything()
    mx.clear_cache()
