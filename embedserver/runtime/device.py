"""Which MLX backend runs here, and the thread that owns it.

All MLX work (loading, forward passes, freeing memory) runs on one thread, as in mlx-lm's server: MLX streams
are per thread, and the event loop must never block on a forward pass.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from importlib.metadata import version
from typing import Any, Literal

import mlx.core as mx

from embedserver.tuning import blas
from embedserver.tuning.threads import named_executor

log = logging.getLogger(__name__)

Backend = Literal["metal", "cuda", "cpu"]


@cache
def mlx_executor() -> ThreadPoolExecutor:
    """The one thread that owns MLX, made on first use."""
    return named_executor("mlx", 1)


@cache
def backend() -> Backend:
    if mx.metal.is_available():
        return "metal"
    if mx.cuda.is_available():
        return "cuda"
    return "cpu"


def default_dtype(kind: Backend) -> mx.Dtype | None:
    """Weights dtype per backend; None keeps the checkpoint's own (and its quantization).

    CPU: float32, because MLX's bf16/fp16/quantized CPU matmuls have no BLAS path (~30x slower).
    CUDA: bfloat16, dequantized (MLX's 4-bit kernels are slower than bf16 at serving batch sizes there).
    Metal: the checkpoint as shipped (quantization pays off where memory bandwidth is the limit).
    """
    return {"cpu": mx.float32, "cuda": mx.bfloat16, "metal": None}[kind]


def check_blas() -> blas.BlasInfo:
    """Log the BLAS under MLX; warn loudly when CPU inference would run on the reference BLAS."""
    info = blas.inspect()
    if backend() != "cpu" or sys.platform == "darwin":
        log.info("MLX backend %s; BLAS %s", backend(), info.library or "n/a")
    elif info.optimized:
        log.info("MLX on CPU with optimized BLAS %s", info.library)
    else:
        log.warning(
            "!!! MLX on CPU is using the REFERENCE BLAS (%s): embeddings will be ~40x slower. Install OpenBLAS "
            "(Debian: apt-get install libopenblas0-pthread) or set EMBEDSERVER_BLAS=/path/to/libopenblas.so !!!",
            info.library or "unknown",
        )
    return info


def info() -> dict[str, Any]:
    blas_info = blas.inspect()
    return {
        "backend": backend(),
        "device": str(mx.default_device()),
        "mlx_version": version("mlx"),
        "blas": blas_info.library,
        "blas_optimized": blas_info.optimized,
    }


@cache
def _card_memory_limit() -> int:
    """MLX's memory limit as it starts (a share of the card): the most `bound_gpu_memory` lets it use."""
    return int(mx.get_memory_limit())


def bound_gpu_memory(workspace: int) -> None:
    """Let MLX run ahead of the GPU by at most `workspace` bytes beyond what is loaded now (the weights), and
    cache at most that much, within the limit MLX starts with (most of the card, whoever else uses it). The
    limit is soft: past it MLX waits for queued work to finish before queuing more, and a single operation
    larger than it still runs."""
    card, loaded = _card_memory_limit(), int(mx.get_active_memory())
    mx.set_memory_limit(min(loaded + workspace, card))
    mx.set_cache_limit(min(workspace, max(card - loaded, 0)))


def memory() -> dict[str, int]:
    return {
        "rss_bytes": _rss_bytes(),
        "mlx_active_bytes": int(mx.get_active_memory()),
        "mlx_cache_bytes": int(mx.get_cache_memory()),
        "mlx_peak_bytes": int(mx.get_peak_memory()),
    }


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        # ru_maxrss is the peak, in bytes on macOS: the best available without /proc.
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def hard_exit(code: int) -> None:
    """End the process without running C++ static destructors.

    MLX used from a thread other than the main one can abort at interpreter exit ("terminate called without
    an active exception", seen with mlx 0.32.4 on Linux CPU in about a third of runs; upstream
    ml-explore/mlx#3126). Everything of ours is already shut down and flushed when this is called, so skipping
    the destructors loses nothing and keeps the exit status truthful.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
