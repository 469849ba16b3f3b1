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
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import mlx.core as mx

# cos and sin of every (position, frequency) pair, [length, D]: row l holds cos(l * f_i) for i < D/2, then
# sin(l * f_i); f_i = 2^(-i / (D/2) * log2(base)), as MLX's RoPE computes it.
_ROPE_TABLE = """
    constexpr int HALF = D / 2;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= positions_shape[0] * HALF) return;
    const int l = i / HALF;
    const int j = i - l * HALF;
    const float d = static_cast<float>(j) / static_cast<float>(HALF);
    const float theta = positions[l] * exp2(-d * params[1]);
    table[l * D + j] = cos(theta);
    table[l * D + HALF + j] = sin(theta);
"""

# One lane's E consecutive elements of a head's row: RMS-normalized over the row's D elements (the D / E lanes
# of the row's group reduce the sum of squares together), multiplied by the norm's weights and rotated by RoPE
# with each element's cosine and sine; an element's RoPE partner (D / 2 away) sits D / E / 2 lanes away, one
# shuffle. Every lane of the warp calls it together. `qk_norm_rope` and the attention kernels of
# cuda_attention.py both normalize and rotate q and k through it, so they round alike, as MLX's RMSNorm and
# RoPE do (the module's doc).
NORM_ROPE_LANE = """
template <typename T, int D, int E>
__device__ inline void embedserver_norm_rope_lane(
        const T (&in)[E], const T (&w)[E], const float (&c)[E], const float (&s)[E], float eps, bool first_half,
        T (&out)[E]) {
    constexpr int N = D / E;
    float x[E];
    float ss = 0.0f;
    #pragma unroll
    for (int e = 0; e < E; ++e) {
        x[e] = static_cast<float>(in[e]);
        ss += x[e] * x[e];
    }
    #pragma unroll
    for (int o = N / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffff, ss, o);
    const float normalizer = rsqrt(ss / D + eps);
    #pragma unroll
    for (int e = 0; e < E; ++e) {
        const T normed = static_cast<T>(x[e] * normalizer);
        const float y = static_cast<float>(static_cast<T>(static_cast<float>(w[e]) * static_cast<float>(normed)));
        const float partner = __shfl_xor_sync(0xffffffff, y, N / 2);
        out[e] = static_cast<T>(first_half ? y * c[e] - partner * s[e] : partner * s[e] + y * c[e]);
    }
}
"""

# A warp takes R rounds of 32 / N of a token's q and k heads at once, N = D / E lanes a head and E = 16 /
# sizeof(T) elements a lane (one 16-byte vector: 8 bf16, 16 lanes for D = 128): lane i of a head's group holds
# elements [i*E, (i+1)*E), so the RoPE partner of an element (D/2 away) sits N/2 lanes away and one shuffle
# fetches it; the RMSNorm sum is a shuffle reduction within the group. A token's heads share its position: a
# lane reads its cosines and sines and its slices of the norm weights once for all its heads. Every round's
# loads are issued before any is used: a memory-bound kernel needs many bytes in flight, and loading one head,
# reducing it (the shuffles), storing it and only then loading the next (a store may alias the input, so the
# compiler cannot move the next load above it) kept one head in flight per warp: 192 µs a layer at 256 x 128
# on an H200 (~2.1 TB/s), 135 µs with the loads first (~3 TB/s). A group whose head is past the token's last
# (head counts that do not divide evenly) computes on zeros and stores nothing.
_QK_NORM_ROPE = """
    constexpr int S = H + 2 * KV;
    constexpr int E = 16 / sizeof(T);
    constexpr int N = D / E;
    constexpr int PER_ROUND = 32 / N;
    constexpr int PER_WARP = PER_ROUND * R;
    constexpr int WARPS = (H + KV + PER_WARP - 1) / PER_WARP;
    struct alignas(16) Pack { T v[E]; };
    struct alignas(16) Angles { float v[E]; };
    const int lane = threadIdx.x & 31;
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int L = qkv_shape[1];
    if (warp >= qkv_shape[0] * L * WARPS) return;
    const int token = warp / WARPS;
    const int group = lane / N;
    const int sub = lane - group * N;
    const int first = (warp - token * WARPS) * PER_WARP + group;
    const int l = token % L;
    const int j = (sub % (N / 2)) * E;
    const T* src = qkv + long(token) * S * D + sub * E;
    Pack in[R];
    #pragma unroll
    for (int r = 0; r < R; ++r) {
        const int slot = first + r * PER_ROUND;
        if (slot < H + KV) {
            in[r] = *reinterpret_cast<const Pack*>(src + slot * D);
        } else {
            #pragma unroll
            for (int e = 0; e < E; ++e) in[r].v[e] = static_cast<T>(0.0f);
        }
    }
    const Angles c = *reinterpret_cast<const Angles*>(table + long(l) * D + j);
    const Angles s = *reinterpret_cast<const Angles*>(table + long(l) * D + D / 2 + j);
    const Pack qw = *reinterpret_cast<const Pack*>(q_weight + sub * E);
    const Pack kw = *reinterpret_cast<const Pack*>(k_weight + sub * E);
    const bool first_half = sub < N / 2;
    #pragma unroll
    for (int r = 0; r < R; ++r) {
        const int slot = first + r * PER_ROUND;
        const bool is_q = slot < H;
        Pack out;
        embedserver_norm_rope_lane<T, D, E>(in[r].v, (is_q ? qw : kw).v, c.v, s.v, params[0], first_half, out.v);
        if (slot < H + KV) {
            T* dst = is_q ? q + (long(token) * H + slot) * D : k + (long(token) * KV + (slot - H)) * D;
            *reinterpret_cast<Pack*>(dst + sub * E) = out;
        }
    }
"""

# P consecutive outputs per thread (one 16-byte vector of bf16 where the width allows).
_SWIGLU = """
    struct alignas(sizeof(T) * P) Pack { T v[P]; };
    const long i = (long(blockIdx.x) * blockDim.x + threadIdx.x) * P;
    if (i >= long(gate_up_shape[0]) * I) return;
    const long n = i / I;
    const long j = i - n * I;
    const Pack g = *reinterpret_cast<const Pack*>(gate_up + n * 2 * I + j);
    const Pack u = *reinterpret_cast<const Pack*>(gate_up + n * 2 * I + I + j);
    Pack o;
    #pragma unroll
    for (int e = 0; e < P; ++e) {
        const float x = static_cast<float>(g.v[e]);
        o.v[e] = static_cast<T>(static_cast<float>(static_cast<T>(x / (1.0f + exp(-x)))) * static_cast<float>(u.v[e]));
    }
    *reinterpret_cast<Pack*>(out + i) = o;
"""

# P consecutive elements (one 16-byte vector) of one token's row of the embedding table per thread. MLX's
# general gather took 595 µs for 256 x 128 tokens of the 0.6B model's 1,024-wide rows on an H200 (~0.2 TB/s);
# a copy of 16-byte vectors runs at the card's bandwidth. Ids outside the table read row 0 rather than
# memory past it (the server never sends such ids: requests are checked against the vocabulary).
_EMBED_ROWS = """
    struct alignas(sizeof(T) * P) Pack { T v[P]; };
    constexpr int PACKS = W / P;
    const long i = long(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= long(ids_shape[0]) * ids_shape[1] * PACKS) return;
    const long token = i / PACKS;
    const int pack = int(i - token * PACKS);
    int row = ids[token];
    if (row < 0 || row >= weight_shape[0]) row = 0;
    reinterpret_cast<Pack*>(out)[i] = reinterpret_cast<const Pack*>(weight)[long(row) * PACKS + pack];
"""

_THREADS = 256


@cache
def _kernels() -> dict[str, Any]:
    return {
        "rope_table": mx.fast.cuda_kernel(
            name="embedserver_rope_table",
            input_names=["positions", "params"],
            output_names=["table"],
            source=_ROPE_TABLE,
        ),
        "qk_norm_rope": mx.fast.cuda_kernel(
            name="embedserver_qk_norm_rope",
            input_names=["qkv", "q_weight", "k_weight", "table", "params"],
            output_names=["q", "k"],
            source=_QK_NORM_ROPE,
            header=NORM_ROPE_LANE,
        ),
        "swiglu": mx.fast.cuda_kernel(
            name="embedserver_swiglu", input_names=["gate_up"], output_names=["out"], source=_SWIGLU
        ),
        "embed_rows": mx.fast.cuda_kernel(
            name="embedserver_embed_rows",
            input_names=["weight", "ids"],
            output_names=["out"],
            source=_EMBED_ROWS,
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
