"""Causal attention for the Qwen3 layer on CUDA, with the per-head RMSNorm and RoPE of q and k inside.

`grouped_attention` reads the fused q|k|v projection as the layer's matrix product wrote it and writes the
heads' outputs in the layout the output projection reads, on the tensor cores (m16n8k16 products, bf16 or fp16
in, float32 out), so no separate `qk_norm_rope` pass writes q and k to memory and reads them back, and the host
encodes one kernel a layer where `qk_norm_rope` and cuDNN's fused attention take two and a cuDNN graph. One
block a (sequence, KV head) normalizes and rotates the head's keys once into shared memory for all the query
heads that read them. GROUPED_ATTENTION_USED and the constants after it say where the Qwen3 block uses it
instead of cuDNN's attention, and why.

Numerics follow `qk_norm_rope` (cuda_kernels.py) step for step for q and k; the attention weights are
rounded to the dtype before they multiply v, as cuDNN's fused attention rounds them. Results equal a float64
attention to the dtype's rounding (tests/test_cuda_kernels.py, run on a CUDA machine). The kernel's device
code: cuda/grouped_attention.cuh, with the tensor-core helpers of cuda/tensor_cores.cuh.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import mlx.core as mx

from embedserver.runtime.architectures.cuda_sources import include

# The kernel's body: its device function (cuda/grouped_attention.cuh) with MLX's parameters.
_GROUPED_ATTENTION = (
    "embedserver_grouped_attention<T, BF16, H, KV, D, L>("
    "qkv, q_weight, k_weight, table, params, scale_param, out);"
)

# The longest sequence the kernel takes.
GROUPED_ATTENTION_MAX = 128
# Where the Qwen3 block uses it: every padded length up to GROUPED_ATTENTION_USED, and the longer ones up to
# GROUPED_ATTENTION_MAX in batches of up to GROUPED_ATTENTION_TOKENS padded tokens; cuDNN's fused attention
# (after `qk_norm_rope`) takes the rest. Small batches are bound by the host, which encodes one kernel fewer a
# layer and no cuDNN graph with this kernel. Large ones are bound by the device. On an H200 (0.6B shape), in
# whole passes (`pass_phases`, device time): 256 x 64 29.7-29.9 ms against 30.8-30.9 with the fragment-layout
# kernel this replaced (which had matched cuDNN's there), 256 x 32 14.3-14.4 against 14.8-15.2; but with this
# kernel 64 x 128 took 15.0-15.2 against 14.6 with cuDNN's, and 128 x 128 31.0-31.2 against 29.9-30.1, so
# batches of 65-128 tokens past 2,048 padded tokens keep cuDNN's (docs/perf/log.md).
GROUPED_ATTENTION_USED = 64
GROUPED_ATTENTION_TOKENS = 2048

# The tensor cores' input types the kernel is written for (their products take bf16 or fp16).
_DTYPES = (mx.bfloat16, mx.float16)
_INPUTS = ["qkv", "q_weight", "k_weight", "table", "params", "scale_param"]


@cache
def _grouped_kernel(shared_bytes: int) -> Any:
    """One kernel object per shared-memory size (MLX sets a kernel's dynamic shared memory where it is made)."""
    return mx.fast.cuda_kernel(
        name="embedserver_grouped_attention",
        input_names=_INPUTS,
        output_names=["out"],
        source=_GROUPED_ATTENTION,
        header=include("grouped_attention.cuh"),
        shared_memory=shared_bytes,
    )


def attention_takes(dtype: mx.Dtype, head_dim: int) -> bool:
    """Whether the attention kernel runs here for this dtype and head size: bfloat16 or float16 (the tensor
    cores' inputs; float32 models keep cuDNN's attention), heads a multiple of 32, and a GPU with those products
    (compute capability 8.0 and later)."""
    return dtype in _DTYPES and head_dim % 32 == 0 and _compute_capability() >= 80


@cache
def _compute_capability() -> int:
    """The CUDA device's compute capability as major * 10 + minor (90 for an H100), 0 where there is none."""
    info = mx.device_info()
    return int(info.get("compute_capability_major", 0)) * 10 + int(info.get("compute_capability_minor", 0))


def _check(qkv: mx.array, length: int, heads: int, kv_heads: int, head_dim: int) -> None:
    if qkv.ndim != 2 or qkv.shape[0] % length:
        raise ValueError(
            f"grouped_attention with length={length} takes qkv [B * {length}, ...], got {qkv.shape}"
        )
    if length > GROUPED_ATTENTION_MAX or heads % kv_heads or head_dim % 32 or qkv.dtype not in _DTYPES:
        raise ValueError(
            f"grouped_attention takes up to {GROUPED_ATTENTION_MAX} tokens of bfloat16 or float16, heads a "
            f"multiple of 32 wide, got qkv {qkv.shape} {qkv.dtype} with {heads} + {kv_heads} heads of {head_dim}"
        )


def template(dtype: mx.Dtype, length: int, heads: int, kv_heads: int, head_dim: int) -> list[tuple[str, Any]]:
    """The kernel's template arguments (compile-time constants) for qkv of `dtype` and `length` tokens."""
    return [
        ("T", dtype),
        ("BF16", dtype == mx.bfloat16),
        ("H", heads),
        ("KV", kv_heads),
        ("D", head_dim),
        ("L", length),
    ]


def grouped_warps(length: int, heads: int, kv_heads: int) -> int:
    """`grouped_attention`'s warps a block (the kernel's NW): one a work unit, at most 8."""
    tiles = -(-length // 16)
    return min(heads // kv_heads * ((tiles + 1) // 2), 8)


def grouped_attention(
    qkv: mx.array,
    q_weight: mx.array,
    k_weight: mx.array,
    table: mx.array,
    params: mx.array,
    scale: mx.array,
    *,
    length: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
) -> mx.array:
    """Causal attention for sequences of at most GROUPED_ATTENTION_MAX tokens, bfloat16 or float16, with q and k
    RMS-normalized and rotated as `qk_norm_rope` does: qkv [B * L, (heads + 2 kv_heads) * head_dim] (the
    fused projection's rows, B sequences of `length` L tokens: the layer's flat stream, cuda_block.py),
    `table` and `params` as for `qk_norm_rope`, `scale` float32 [1]. Returns the heads' outputs
    [B * L, heads * head_dim], what the output projection reads."""
    _check(qkv, length, heads, kv_heads, head_dim)
    batch = qkv.shape[0] // length
    padded = -(-length // 16) * 16
    warps = grouped_warps(length, heads, kv_heads)
    shared = (2 * padded + warps * 16) * (head_dim + 8) * qkv.dtype.size
    (out,) = _grouped_kernel(shared)(
        inputs=[qkv, q_weight, k_weight, table, params, scale],
        template=template(qkv.dtype, length, heads, kv_heads, head_dim),
        grid=(batch * kv_heads * warps * 32, 1, 1),
        threadgroup=(warps * 32, 1, 1),
        output_shapes=[(qkv.shape[0], heads * head_dim)],
        output_dtypes=[qkv.dtype],
    )
    return out
