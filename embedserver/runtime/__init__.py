"""The model runtime: loads models and runs their forward passes with MLX, and owns the device policy.

Importing this package readies the process for MLX, which must happen before MLX itself is imported (every
module here and in `architectures` imports it, and Python imports this file first):
- on Linux CPU an optimized BLAS is loaded with global symbols, which MLX then uses instead of the reference
  BLAS of the `mlx-cpu` wheel (embedserver/tuning/blas.py);
- on CUDA, MLX_MAX_OPS_PER_BUFFER defaults to 8. MLX frees a forward pass's intermediates only as each command
  buffer finishes and runs up to ten buffers ahead of the GPU, so the operations per buffer set how much memory
  a pass holds in flight: at MLX's own default the 4B model's warm-up at 65,536 tokens per batch ran out of
  memory on an 80 GB card; at 8, MLX's cache keeps the buffers of every shape the server runs, so it stops
  freeing cached buffers in the middle of a pass, where each free waited for the whole device.
  Metal picks its own per device.
Front-end processes never import this package.
"""

from __future__ import annotations

import os as _os

from embedserver.tuning import blas as _blas


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


_blas.preload()
if _cuda_wheel():
    _os.environ.setdefault("MLX_MAX_OPS_PER_BUFFER", "8")
