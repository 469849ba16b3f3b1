"""embedserver: a micro-batching embedding server for Qwen3-Embedding models on MLX."""

from __future__ import annotations

import os as _os

from embedserver.tuning import blas as _blas

# Before anything imports MLX: see embedserver/tuning/blas.py.
_blas.preload()
# MLX's CUDA graphs (MLX_USE_CUDA_GRAPHS) stay at MLX's default, on: with the allocator no longer freeing
# mid-pass (below), graphs won both pairs of an A/B on an H100 (256 clients +3%, one client p50 -0.8 to
# -1.7 ms); session 4 had turned them off when those frees dominated (docs/PERFORMANCE.md).


def _cuda_wheel() -> bool:
    """Whether MLX's CUDA backend is installed (read from package metadata: MLX itself must not load yet)."""
    from importlib.metadata import PackageNotFoundError, version

    for name in ("mlx-cuda-13", "mlx-cuda-12", "mlx-cuda"):
        try:
            version(name)
            return True
        except PackageNotFoundError:
            continue
    return False


# MLX frees a forward pass's intermediates only as each command buffer finishes and runs up to ten buffers
# ahead of the GPU, so the operations per buffer set how much memory a pass holds in flight. MLX's default
# (100 on an H100) ran the 4B model's load-time warm-up at 65,536 tokens per batch out of memory on 80 GB.
# At 8, each batch shape's buffers are small enough that MLX's cache keeps those of every shape the server
# runs: it stops allocating, and so stops freeing cached buffers in the middle of a pass, where each free of
# a host-visible buffer waited for the whole device (CUPTI trace, H100: 144 such waits, 21% of the time).
# docs/PERFORMANCE.md has the figures. CUDA only: Metal picks its own per device.
if _cuda_wheel():
    _os.environ.setdefault("MLX_MAX_OPS_PER_BUFFER", "8")

__version__ = "0.1.0"
