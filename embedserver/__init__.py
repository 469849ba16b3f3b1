"""embedserver: a micro-batching embedding server for Qwen3-Embedding models on MLX."""

from __future__ import annotations

import os as _os

from embedserver import blas as _blas

# Before anything imports MLX: see embedserver/blas.py.
_blas.preload()
# MLX's CUDA backend records kernels into CUDA graphs and updates them for every batch; with this server's
# large kernels and varying batch shapes, plain launches were faster (H100, 0.6B shape: 371k -> 404k
# tokens/s at 256 x 128, and +6% requests/s end to end; docs/PERFORMANCE.md). Set it to 1 to keep graphs.
_os.environ.setdefault("MLX_USE_CUDA_GRAPHS", "0")

__version__ = "0.1.0"
