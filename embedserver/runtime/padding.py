"""The one place sequences are padded: right padding to a bucketed length."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from embedserver.tokenization.token_ids import TokenIds


def bucket_length(length: int) -> int:
    """Round a batch's longest sequence up so few distinct shapes reach MLX (kernels and compiled graphs are
    cached per shape); the waste is at most 15 tokens up to 256 and 63 beyond."""
    step = 16 if length <= 256 else 64
    return -(-length // step) * step


# Batch sizes that reach the model: powers of two and the halfway points between them, so at most a third of
# the rows are filler. On CUDA the first forward pass at a new shape costs tens of milliseconds of kernel set-up
# more than the next ones, so the server must see few shapes, warmed at load.
_BATCH_BUCKETS = (
    1,
    2,
    4,
    8,
    12,
    16,
    24,
    32,
    48,
    64,
    96,
    128,
    192,
    256,
    384,
    512,
    768,
    1024,
    1536,
    2048,
    3072,
    4096,
)


def bucket_batch(size: int) -> int:
    """The smallest batch bucket that holds `size` rows."""
    for bucket in _BATCH_BUCKETS:
        if bucket >= size:
            return bucket
    return size


# Filler rows a batch may carry (share of its bucket) before a busy worker cuts it down to the bucket below;
# batches under _MIN_CUT texts are never cut: up to there a forward pass costs about the same at any size.
_MAX_FILLER = 0.1
_MIN_CUT = 16


def rows_to_run(queued: int) -> int:
    """How many of `queued` texts a worker whose GPU is busy should put in the next (bucketed) batch: all of
    them when they are few or padding to their bucket adds at most 10% filler rows, else the bucket below;
    the rest wait for the batch after, which is filling anyway. 99 texts run as 96 rather than as 128 rows
    with 29 of filler: under heavy load batches of about 100 texts are common, and padding each up would
    spend about a quarter of the GPU's work on filler."""
    up = bucket_batch(queued)
    if queued < _MIN_CUT or up - queued <= _MAX_FILLER * up:
        return queued
    return max(bucket for bucket in _BATCH_BUCKETS if bucket <= queued)


def batch_buckets(limit: int) -> list[int]:
    """Every bucket a batch of at most `limit` rows can be padded to."""
    return sorted({bucket_batch(size) for size in range(1, limit + 1)})


def length_buckets(limit: int) -> list[int]:
    """Every bucketed length up to `limit` tokens."""
    return sorted({bucket_length(length) for length in range(1, limit + 1)})


def padded_shape(batch: Sequence[TokenIds], *, bucket_rows: bool) -> tuple[int, int]:
    """The (rows, length) `pad_right` gives `batch`: what the device computes, filler rows included."""
    rows = bucket_batch(len(batch)) if bucket_rows else len(batch)
    return rows, bucket_length(max(len(ids) for ids in batch))


def pad_right(
    batch: Sequence[TokenIds], pad_id: int, *, bucket_rows: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids [B', L] (right-padded with `pad_id`) and the lengths [B'].

    With `bucket_rows`, B' is the batch bucket and the extra rows are one pad token each (results for them
    are discarded); otherwise B' = len(batch).
    """
    if not batch or any(len(ids) == 0 for ids in batch):
        raise ValueError("every sequence needs at least one token")
    rows, length = padded_shape(batch, bucket_rows=bucket_rows)
    lengths = np.ones(rows, dtype=np.int32)
    lengths[: len(batch)] = [len(ids) for ids in batch]
    ids = np.full((rows, length), pad_id, dtype=np.int32)
    for row, seq in enumerate(batch):
        ids[row, : len(seq)] = seq
    return ids, lengths
