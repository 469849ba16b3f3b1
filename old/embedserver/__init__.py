"""embedserver: a micro-batching embedding server for Qwen3-Embedding models on MLX."""

from __future__ import annotations

from embedserver import blas as _blas

# Before anything imports MLX: see embedserver/blas.py.
_blas.preload()

__version__ = "0.1.0"
