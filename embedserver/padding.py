"""The one place sequences are padded: right padding to a bucketed length."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bucket_length(length: int) -> int:
    """Round a batch's longest sequence up so few distinct shapes reach MLX (kernels and compiled graphs are
    cached per shape); the waste is at most 15 tokens up to 256 and 63 beyond."""
    step = 16 if length <= 256 else 64
    return -(-length // step) * step


def pad_right(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids [B, L] (right-padded with `pad_id`) and the real lengths [B]."""
    if not batch or any(len(ids) == 0 for ids in batch):
        raise ValueError("every sequence needs at least one token")
    lengths = np.fromiter((len(ids) for ids in batch), dtype=np.int32, count=len(batch))
    ids = np.full((len(batch), bucket_length(int(lengths.max()))), pad_id, dtype=np.int32)
    for row, seq in enumerate(batch):
        ids[row, : len(seq)] = seq
    return ids, lengths
