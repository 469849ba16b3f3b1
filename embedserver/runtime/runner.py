"""One loaded model, ready to run: token ids in, pooled (not yet normalized) float32 vectors out.

Knows nothing of HTTP, queues or caches. `embed` runs on the MLX thread (embedserver/runtime/device.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import mlx.core as mx
import numpy as np

from embedserver.catalog import Task
from embedserver.runtime.load_steps import MLX_THREAD, LoadSteps, run_steps
from embedserver.runtime.padding import batch_buckets, length_buckets, pad_right
from embedserver.runtime.pooling import Pooling, pool
from embedserver.tokenization.token_ids import TokenIds
from embedserver.tokenization.tokenizer import TextTokenizer
from embedserver.tuning.blas_threads import BlasThreadPolicy


class Encoder(Protocol):
    causal: bool
    hidden_size: int

    def __call__(self, ids: mx.array, lengths: mx.array) -> mx.array: ...

    def sanitize(self, weights: dict[str, mx.array]) -> dict[str, mx.array]: ...

    def use_cuda_kernels(self) -> bool: ...

    def load_weights(self, weights: list[tuple[str, mx.array]], strict: bool = True) -> object: ...

    def parameters(self) -> object: ...


@dataclass
class ModelRunner:
    name: str
    source: str
    revision: str
    encoder: Encoder
    tokenizer: TextTokenizer
    pooling: Pooling
    max_length: int
    query_task: str | None

    @property
    def dimension(self) -> int:
        return 1 if self.score_head is not None else self.encoder.hidden_size

    # Pad batch sizes to a few buckets (see padding.py); on for GPUs, where a new shape is expensive.
    bucket_rows: bool = False
    # Overlap passes (CUDA): the batch worker launches the next pass before collecting the running one, so
    # the device computes while the host queues the next pass's kernels (`launch`).
    overlap_passes: bool = False
    # Padded tokens worth one more pass: a batch is split where padding its shorter texts to a longer one would
    # cost more (batching.planning.plan_batches; set by device_policy.py).
    split_tokens: int = 0
    # Passes of fewer padded tokens than this run as one mx.compile'd graph per shape (COMPILE; set by
    # device_policy.py): the Python side of a pass shrinks from hundreds of operation calls, each taking the
    # GIL, to one call. Compiles on first use of a shape, so it is meant with bucketed shapes warmed at load.
    compiled_below: int = 0
    # On CPU with OpenBLAS: its threads per pass (embedserver/tuning/blas_threads.py).
    blas_threads: BlasThreadPolicy | None = None
    # A reranker (task "rerank"): its pooled state times logit(yes) - logit(no)'s row gives one value per
    # sequence (embedserver/service/reranking.py).
    task: Task = "embed"
    score_head: mx.array | None = None

    def __post_init__(self) -> None:
        # A traced pass cannot queue part of itself early (qwen3.py's QUEUED_FIRST).
        self._compiled_forward = mx.compile(partial(self._forward, queue_early=False))

    def _forward(self, ids: mx.array, lengths: mx.array, *, queue_early: bool = True) -> mx.array:
        last_token_states = getattr(self.encoder, "last_token_states", None)
        if self.pooling == "last" and last_token_states is not None:
            # Only the pooled states: the encoder may skip work no other position needs (Qwen3 on CPU), and
            # may queue its first layers while it builds the rest.
            pooled = last_token_states(ids, lengths, queue_early=queue_early).astype(mx.float32)
        else:
            pooled = pool(self.encoder(ids, lengths), lengths, self.pooling).astype(mx.float32)
        if self.score_head is not None:
            return (pooled @ self.score_head)[:, None]  # type: ignore[no-any-return]
        return pooled  # type: ignore[no-any-return]

    def embed(self, batch: Sequence[TokenIds]) -> np.ndarray:
        """Pooled float32 vectors [len(batch), dimension] for token-id sequences of any lengths. Runs on the
        MLX thread."""
        policy = self.blas_threads
        lengths = [len(ids) for ids in batch]
        if policy is not None:
            policy.before(lengths)
        started = time.perf_counter()
        vectors = _vectors(self._pooled(batch), len(batch))
        if policy is not None:
            policy.after(lengths, time.perf_counter() - started)
        return vectors

    def _pooled(self, batch: Sequence[TokenIds]) -> mx.array:
        """The pass's graph, not yet evaluated."""
        ids, padded_lengths = pad_right(batch, self.tokenizer.pad_id, bucket_rows=self.bucket_rows)
        forward = self._compiled_forward if ids.size < self.compiled_below else self._forward
        return forward(mx.array(ids), mx.array(padded_lengths))

    def launch(self, batch: Sequence[TokenIds]) -> Callable[[], np.ndarray]:
        """Queue the forward pass of `batch` and return without waiting for it: the returned function waits
        and gives the vectors (`embed` is the two in one). Queueing is the host's share of a pass: building
        its graph, then MLX encoding each kernel (~230 for the 0.6B model; on CUDA ~20 µs each, most of a
        short pass's time), and MLX lets the host run at most a few command buffers ahead of the device. It
        runs on the MLX thread; the returned function may run on any thread (it only waits on the queued
        array's event and reads it)."""
        pooled = self._pooled(batch)
        mx.async_eval(pooled)  # type: ignore[no-untyped-call]  # the GIL is released while MLX queues kernels
        return partial(_vectors, pooled, len(batch))

    def warmup(self, *, max_batch: int = 2, max_tokens: int = 128, max_length: int = 64) -> int:
        """Run every bucketed shape up to the limits once, so kernel set-up (tens of ms a shape on CUDA) does
        not land on requests. Returns how many shapes ran."""
        return run_steps(self.warmup_steps(max_batch=max_batch, max_tokens=max_tokens, max_length=max_length))

    def warmup_steps(
        self, *, max_batch: int = 2, max_tokens: int = 128, max_length: int = 64
    ) -> LoadSteps[int]:
        """`warmup` as steps (load_steps.py), one shape each."""
        shapes = [
            (rows, length)
            for length in length_buckets(max_length)
            for rows in batch_buckets(max_batch)
            if rows * length <= max(max_tokens, length)
        ]
        for rows, length in shapes:
            try:
                self.embed([[self.tokenizer.pad_id] * length] * rows)
            except Exception as exc:
                raise WarmupFailed(rows, length, exc) from exc
            yield MLX_THREAD
        return len(shapes)


def _vectors(pooled: mx.array, rows: int) -> np.ndarray:
    """The first `rows` pooled vectors as numpy, once computed: `mx.eval` runs a pass not yet queued, and only
    waits for one queued already (`launch`), with the GIL released either way (MLX's binding releases it)."""
    mx.eval(pooled)
    return np.array(pooled, copy=False)[:rows]


class WarmupFailed(RuntimeError):
    """A shape of the load-time warm-up could not run; on GPUs, usually out of memory (the 4B model at
    65,536 tokens per batch on an 80 GB card). Names the shape, which the error from MLX does not."""

    def __init__(self, rows: int, length: int, cause: Exception) -> None:
        super().__init__(f"warm-up failed at a batch of {rows} x {length} tokens: {cause}")
        self.rows, self.length = rows, length
