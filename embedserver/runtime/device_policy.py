"""How a loaded model is readied for the device it runs on, and how its memory is given back.

The runtime owns this, not the registry: which shapes to warm, whether batch sizes are padded to buckets, how
much GPU memory MLX may hold beyond the weights, and when MLX's buffer cache is emptied all follow from the
device, and the registry only loads, counts and evicts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import mlx.core as mx

from embedserver.runtime import device
from embedserver.runtime.runner import ModelRunner, WarmupFailed
from embedserver.tuning.gc_freeze import collect_everything

log = logging.getLogger(__name__)

# Warm every bucketed shape up to this many tokens per text at load (longer texts pay their first-use cost).
_WARM_LENGTH = 512

# Padded tokens worth one more forward pass (plan_batches splits a batch past them). GPUs: about a pass's fixed
# time over its time per padded token, 3.3 ms over 1.8 µs for the 0.6B model on an H200 (docs/PERFORMANCE.md);
# larger models cost more a token, so for them fewer splits happen than would pay, never more. CPU: a pass
# costs little beyond its tokens.
_SPLIT_TOKENS_GPU = 2048
_SPLIT_TOKENS_CPU = 64


@dataclass(frozen=True)
class DevicePlan:
    """The serving limits a model is readied for (from the settings)."""

    max_batch: int
    max_tokens: int
    compile_forward: bool = False
    gpu_workspace_bytes: int = 4 << 30


def ready_for_device(runner: ModelRunner, plan: DevicePlan) -> ModelRunner:
    """Runs on the MLX thread after the weights are loaded; returns the same runner, ready to serve."""
    if device.backend() == "cpu":
        # A new shape costs nothing extra on CPU: a token warm-up, and exact batch sizes (no filler rows).
        runner.split_tokens = _SPLIT_TOKENS_CPU
        runner.warmup()
        return runner
    runner.split_tokens = _SPLIT_TOKENS_GPU
    # A new shape costs tens of milliseconds of kernel set-up on GPUs: batch sizes are padded to a few
    # buckets, and every bucketed shape within the limits runs once now rather than on a request.
    runner.bucket_rows = True
    # Measured on CUDA, where a short pass is mostly the host queueing its kernels (docs/PERFORMANCE.md).
    runner.overlap_passes = device.backend() == "cuda"
    runner.compiled = plan.compile_forward
    device.bound_gpu_memory(plan.gpu_workspace_bytes)
    started = time.perf_counter()
    try:
        shapes = runner.warmup(max_batch=plan.max_batch, max_tokens=plan.max_tokens, max_length=_WARM_LENGTH)
    except BaseException as exc:
        free_memory()  # a failed warm-up's leftovers (its traceback holds arrays) are not kept for the retry
        if not isinstance(exc, WarmupFailed):
            raise
        raise RuntimeError(
            f"{exc}; if the device ran out of memory, lower MAX_BATCH_TOKENS (now {plan.max_tokens}) "
            f"or MAX_BATCH_SIZE (now {plan.max_batch})"
        ) from exc
    # The warm-up leaves buffers in MLX's cache sized for shapes traffic rarely repeats; kept, they push the
    # allocator into freeing (and synchronizing the device) on later misses. The warm-up's arrays are freed
    # already (no cycles), so no full collection here: the one that freezes the loaded model runs next, and
    # each full collection holds the interpreter lock long enough to stall every other model's traffic.
    mx.clear_cache()
    log.info("%s: warmed %d shapes in %.1fs", runner.name, shapes, time.perf_counter() - started)
    return runner


def free_memory() -> None:
    """Give an unloaded model's memory back: its arrays (frozen objects included) and MLX's cached buffers."""
    collect_everything()
    mx.clear_cache()
