"""CUDA kernels for the Qwen3 layer, where mlx-lm's composition of MLX operations moves data many times.

As mlx-lm composes them, the per-head RMSNorm of queries and keys, RoPE and the transposes into attention's
layout each make another pass over memory (RoPE on a transposed view first copies it). `qk_norm_rope` does
it in one pass: it reads the q and k heads of the fused q|k|v projection once and writes them normalized and
rotated, in the projection's own [batch, length, heads, head_dim] order. Attention takes them (and v, a view
of the projection, never copied) as transposed views, and MLX's attention writes its output in its query's
layout, so the transpose back before the output projection is free too. RoPE's cos and sin come from a table
(`rope_table`, made once per model for its whole context and read by every layer of every pass) instead of
precise float32 `cos`/`sin` for every element of every head of every layer. `swiglu` reads the fused gate|up
projection and writes silu(gate) * up; `embed_rows` is the embedding lookup. For bfloat16 and float16
sequences of up to 128 tokens, the attention kernels of cuda_attention.py normalize and rotate q and k
themselves, and `qk_norm_rope` is not run.
On an H200 at 256 x 128 tokens, the kernel that computed its angles and copied v took 439 µs a layer, about
3.4 times its memory traffic; with the table, v left in place and its loads in flight together, 135 µs
(docs/perf/log.md).

Numerics follow MLX's own kernels step for step (mlx/backend/cuda/rms_norm.cu and rope.cu): float32
arithmetic, the normalized value rounded to the weights' dtype before the weight multiply, RoPE's angle as
position * 2^(-i / (D/2) * log2(base)) with `cos`/`sin` in float32. Results equal mlx-lm's layer to the dtype's
rounding (tests/test_cuda_kernels.py, run on a CUDA machine).

Each kernel's device code is a file of cuda/ (rope_table.cuh, qk_norm_rope.cuh with norm_rope.cuh, swiglu.cuh,
embed_rows.cuh); this module launches them (cuda_sources.py says how MLX gets the code).
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import mlx.core as mx

from embedserver.runtime.architectures.cuda_sources import include

# Each kernel's body calls its device function (cuda/*.cuh) with MLX's parameters: the inputs and outputs by
# name, and their `_shape` where a kernel needs a size it is not compiled for.
_ROPE_TABLE = "embedserver_rope_table<D>(positions, params, table, positions_shape[0]);"
_QK_NORM_ROPE = (
    "embedserver_qk_norm_rope<T, H, KV, D, R>("
    "qkv, q_weight, k_weight, table, params, q, k, qkv_shape[0], qkv_shape[1]);"
)
_SWIGLU = "embedserver_swiglu<T, I, P>(gate_up, out, gate_up_shape[0]);"
_EMBED_ROWS = (
    "embedserver_embed_rows<T, W, P>(weight, ids, out, weight_shape[0], ids_shape[0], ids_shape[1]);"
)

_THREADS = 256


@cache
def _kernels() -> dict[str, Any]:
    return {
        "rope_table": mx.fast.cuda_kernel(
            name="embedserver_rope_table",
            input_names=["positions", "params"],
            output_names=["table"],
            source=_ROPE_TABLE,
            header=include("rope_table.cuh"),
        ),
        "qk_norm_rope": mx.fast.cuda_kernel(
            name="embedserver_qk_norm_rope",
            input_names=["qkv", "q_weight", "k_weight", "table", "params"],
            output_names=["q", "k"],
            source=_QK_NORM_ROPE,
            header=include("qk_norm_rope.cuh"),
        ),
        "swiglu": mx.fast.cuda_kernel(
            name="embedserver_swiglu",
            input_names=["gate_up"],
            output_names=["out"],
            source=_SWIGLU,
            header=include("swiglu.cuh"),
        ),
        "embed_rows": mx.fast.cuda_kernel(
            name="embedserver_embed_rows",
            input_names=["weight", "ids"],
            output_names=["out"],
            source=_EMBED_ROWS,
            header=include("embed_rows.cuh"),
        ),
    }


def rope_params(eps: float, base: float) -> mx.array:
    """The float32 constants the kernels read: the RMSNorm epsilon and log2 of the RoPE base."""
    return mx.array([eps, math.log2(base)], dtype=mx.float32)


def rope_table(length: int, head_dim: int, params: mx.array) -> mx.array:
    """RoPE's cos and sin at positions 0..length-1, float32 [length, head_dim]: what `qk_norm_rope` reads."""
    half = head_dim // 2
    (table,) = _kernels()["rope_table"](
        inputs=[mx.arange(length, dtype=mx.float32), params],
        template=[("D", head_dim)],
        grid=(length * half, 1, 1),
        threadgroup=(_THREADS, 1, 1),
        output_shapes=[(length, head_dim)],
        output_dtypes=[mx.float32],
    )
    return table


def qk_norm_rope_rounds(heads: int, kv_heads: int, head_dim: int, itemsize: int) -> tuple[int, int]:
    """How `qk_norm_rope` spreads a token's heads over warps: the heads a warp takes at once (one 16-byte vector
    a lane) and its rounds of them (R): up to four, fewer where a warp would take more heads than a token has."""
    per_round = 32 // (head_dim // (16 // itemsize))
    rounds = next(r for r in (4, 2, 1) if r == 1 or per_round * r <= heads + kv_heads)
    return per_round, rounds


def qk_norm_rope(
    qkv: mx.array,
    q_weight: mx.array,
    k_weight: mx.array,
    table: mx.array,
    params: mx.array,
    *,
    heads: int,
    kv_heads: int,
    head_dim: int,
) -> tuple[mx.array, mx.array, mx.array]:
    """qkv [B, L, (heads + 2 kv_heads) * head_dim] -> q [B, heads, L, D], k and v [B, kv_heads, L, D]; q and k
    RMS-normalized per head (with their weights) and rotated by RoPE at positions 0..L-1 (`table`:
    `rope_table(L, ...)`). All three are transposed views of [B, L, heads, D] memory; v is qkv's own."""
    if head_dim not in (64, 128):
        raise ValueError(f"qk_norm_rope takes heads of 64 or 128 elements, got {head_dim}")
    batch, length, _ = qkv.shape
    per_round, rounds = qk_norm_rope_rounds(heads, kv_heads, head_dim, qkv.dtype.size)
    warps = -(-(heads + kv_heads) // (per_round * rounds))
    q, k = _kernels()["qk_norm_rope"](
        inputs=[qkv, q_weight, k_weight, table, params],
        template=[("T", qkv.dtype), ("H", heads), ("KV", kv_heads), ("D", head_dim), ("R", rounds)],
        grid=(batch * length * warps * 32, 1, 1),
        threadgroup=(_THREADS, 1, 1),
        output_shapes=[(batch, length, heads, head_dim), (batch, length, kv_heads, head_dim)],
        output_dtypes=[qkv.dtype] * 2,
    )
    v = qkv.reshape(batch, length, heads + 2 * kv_heads, head_dim)[:, :, heads + kv_heads :]
    return q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)


def swiglu_per_thread(width: int, itemsize: int) -> int:
    """The outputs a `swiglu` thread writes (P): one 16-byte vector where the width divides into them."""
    return next(p for p in (16 // itemsize, 4, 2, 1) if width % p == 0)


def swiglu(gate_up: mx.array) -> mx.array:
    """gate_up [N, 2I] (gate then up) -> silu(gate) * up [N, I]."""
    rows, width = gate_up.shape
    half = width // 2
    per_thread = swiglu_per_thread(half, gate_up.dtype.size)
    (out,) = _kernels()["swiglu"](
        inputs=[gate_up],
        template=[("T", gate_up.dtype), ("I", half), ("P", per_thread)],
        grid=(rows * half // per_thread, 1, 1),
        threadgroup=(_THREADS, 1, 1),
        output_shapes=[(rows, half)],
        output_dtypes=[gate_up.dtype],
    )
    return out


def embed_rows_fits(weight: mx.array) -> bool:
    """Whether `embed_rows` takes this table: 2-D, rows a whole number of 16-byte vectors."""
    return weight.ndim == 2 and (weight.shape[1] * weight.dtype.size) % 16 == 0


def embed_rows(weight: mx.array, ids: mx.array) -> mx.array:
    """weight [V, W] and int32 ids [B, L] -> the rows weight[ids], [B, L, W] (an embedding lookup)."""
    if ids.ndim != 2:
        raise ValueError(f"embed_rows takes ids [batch, length], got shape {ids.shape}")
    width = weight.shape[1]
    per_thread = 16 // weight.dtype.size
    (out,) = _kernels()["embed_rows"](
        inputs=[weight, ids.astype(mx.int32)],
        template=[("T", weight.dtype), ("W", width), ("P", per_thread)],
        grid=(ids.size * width // per_thread, 1, 1),
        threadgroup=(_THREADS, 1, 1),
        output_shapes=[(*ids.shape, width)],
        output_dtypes=[weight.dtype],
    )
    return out
