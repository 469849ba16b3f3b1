"""CUDA kernels for the Qwen3 layer, where mlx-lm's composition of MLX operations moves data many times.

As mlx-lm composes them, the per-head RMSNorm of queries and keys, RoPE and the transposes into attention's
layout each make another pass over memory (RoPE on a transposed view first copies it). `qk_norm_rope` does
it in one pass: it reads the q and k heads of the fused q|k|v projection once and writes them normalized and
rotated, in the projection's own [batch, length, heads, head_dim] order. Attention takes them (and v, a view
of the projection, never copied) as transposed views, and MLX's attention writes its output in its query's
layout, so the transpose back before the output projection is free too. RoPE's cos and sin come from a table
(`rope_table`, made once per model for its whole context and read by every layer of every pass) instead of
precise float32 `cos`/`sin` for every element of every head of every layer. `swiglu` reads the fused gate|up
projection and writes silu(gate) * up; `embed_rows` is the embedding lookup; `short_attention` is causal
attention for sequences of up to 32 tokens (queries), RMSNorm and RoPE included, on the tensor cores: there
cuDNN's kernel and its set-up, and one more kernel a layer, cost most.
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
        float x[E];
        float ss = 0.0f;
        #pragma unroll
        for (int e = 0; e < E; ++e) {
            x[e] = static_cast<float>(in[r].v[e]);
            ss += x[e] * x[e];
        }
        #pragma unroll
        for (int o = N / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffff, ss, o);
        const float normalizer = rsqrt(ss / D + params[0]);
        const bool is_q = slot < H;
        const Pack& w = is_q ? qw : kw;
        Pack out;
        #pragma unroll
        for (int e = 0; e < E; ++e) {
            const T normed = static_cast<T>(x[e] * normalizer);
            const float y = static_cast<float>(static_cast<T>(static_cast<float>(w.v[e]) * static_cast<float>(normed)));
            const float partner = __shfl_xor_sync(0xffffffff, y, N / 2);
            out.v[e] = static_cast<T>(first_half ? y * c.v[e] - partner * s.v[e] : partner * s.v[e] + y * c.v[e]);
        }
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

# Causal attention over short sequences (L <= SHORT_ATTENTION_MAX) on the tensor cores, RMSNorm and RoPE of
# q and k included: one warp a (sequence, query head, tile of 16 query positions), no shared memory. The
# lanes load their matrix fragments straight from the q|k|v projection (two adjacent elements a 32-bit load)
# and normalize and rotate them where they stand: a lane holds, of each row it loads (a query position or a
# key), columns 16 kk + 2 tg + {0, 1, 8, 9} of every k-step kk, so a row's four lanes together hold the whole
# head (its RMSNorm sum: two shuffles) and a column's RoPE partner, D / 2 away, sits D / 32 k-steps away in
# the same lane (rounding as in `qk_norm_rope`, step for step). The scores [16, LP] (LP = L rounded up to 16)
# are Q [16, D] K^T [D, LP] in m16n8k16 products (bf16 or fp16 in, float32 out); the softmax runs on the score
# fragments in registers (a row sits in four adjacent lanes: two shuffles), and its weights, rounded to T as
# cuDNN's fused attention rounds them, are the next product's A fragments as they stand (the layouts
# coincide), times V [LP, D] read from qkv: the heads' outputs leave registers only to be stored. Keys past
# the tile's last position are neither loaded nor multiplied (causal); rows and keys past L are zeros, masked,
# never stored. Every warp that reads a key normalizes and rotates it again (a few hundred operations a key).
# On an H200 (0.6B shape): the separate `qk_norm_rope` and the same attention without it took 27 µs a layer
# at 128 x 16 where this takes 41, but each custom kernel costs the host ~20 µs a layer to encode, and a
# 128 x 16 pass is host-bound: with this kernel it took 6.1-6.2 ms against 7.4 with the previous attention
# kernel and `qk_norm_rope`, one text of 16 tokens 3.4-3.5 ms against 5.1-5.5, 64 x 32 6.6 against 7.4
# (cuDNN's). At 64 tokens it lost to cuDNN's (11.2-11.5 against 10.4-10.5 ms at 64 x 64): hence
# SHORT_ATTENTION_USED. The first attention kernel, CUDA-core arithmetic from shared memory, was bound by
# its shared-memory reads (every key read once per query row). docs/perf/log.md has the figures.
_MMA = """
template <bool BF16>
__device__ inline void embedserver_mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    if constexpr (BF16) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
}
"""

# Fragment layouts (PTX ISA, mma.m16n8k16): lane = 4 * gr + tg; A's registers hold rows gr and gr + 8 at
# columns 2 tg, 2 tg + 1 and those + 8; B's hold rows 2 tg, 2 tg + 1 (and + 8) of column gr; the float32
# result holds rows gr and gr + 8 at columns 2 tg, 2 tg + 1. The low half of a register is the lower index.
_SHORT_ATTENTION = """
    constexpr int G = H / KV;
    constexpr int S = H + 2 * KV;
    constexpr int LP = (L + 15) / 16 * 16;
    constexpr int MT = LP / 16;
    constexpr int NT = LP / 8;
    constexpr int DK = D / 16;
    constexpr int HALF = DK / 2;
    using u32 = unsigned int;
    struct alignas(4) Two { T v[2]; };
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (warp >= qkv_shape[0] * H * MT) return;
    const int lane = threadIdx.x & 31;
    const int gr = lane >> 2;
    const int tg = lane & 3;
    const int mt = warp % MT;
    const int h = (warp / MT) % H;
    const long b = warp / (MT * H);
    const int kvh = h / G;
    const int p0 = mt * 16 + gr;
    const int p1 = p0 + 8;
    const int last = min(mt * 16 + 15, L - 1);
    const float eps = params[0];
    auto bits = [](float x) {
        const T y = static_cast<T>(x);
        return u32(*reinterpret_cast<const unsigned short*>(&y));
    };
    auto bits_at = [](const T* at) { return u32(*reinterpret_cast<const unsigned short*>(at)); };
    // One row's columns of this lane (zeros where `live` is false), normalized with weights `w` and rotated
    // to position `pos`, rounded to T and packed as fragments: frag[kk][0] holds columns 2 tg, 2 tg + 1 of
    // k-step kk, frag[kk][1] those + 8. Every lane of the warp calls it together (the shuffles).
    auto rotate = [&](const T* row, bool live, const T* w, int pos, u32 (&frag)[DK][2]) {
        float x[DK][4];
        float ss = 0.0f;
        #pragma unroll
        for (int kk = 0; kk < DK; ++kk) {
            #pragma unroll
            for (int half = 0; half < 2; ++half) {
                Two t;
                if (live) {
                    t = *reinterpret_cast<const Two*>(row + 16 * kk + 2 * tg + 8 * half);
                } else {
                    t.v[0] = t.v[1] = static_cast<T>(0.0f);
                }
                x[kk][2 * half] = static_cast<float>(t.v[0]);
                x[kk][2 * half + 1] = static_cast<float>(t.v[1]);
            }
            #pragma unroll
            for (int e = 0; e < 4; ++e) ss += x[kk][e] * x[kk][e];
        }
        ss += __shfl_xor_sync(0xffffffff, ss, 1);
        ss += __shfl_xor_sync(0xffffffff, ss, 2);
        const float normalizer = rsqrt(ss / D + eps);
        #pragma unroll
        for (int kk = 0; kk < DK; ++kk) {
            #pragma unroll
            for (int half = 0; half < 2; ++half) {
                const Two wt = *reinterpret_cast<const Two*>(w + 16 * kk + 2 * tg + 8 * half);
                #pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const T normed = static_cast<T>(x[kk][2 * half + e] * normalizer);
                    x[kk][2 * half + e] = static_cast<float>(static_cast<T>(static_cast<float>(wt.v[e]) * static_cast<float>(normed)));
                }
            }
        }
        const float* angles = table + long(pos) * D;
        #pragma unroll
        for (int kk = 0; kk < HALF; ++kk) {
            #pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int col = 16 * kk + 2 * tg + 8 * half;
                const float2 c = *reinterpret_cast<const float2*>(angles + col);
                const float2 s = *reinterpret_cast<const float2*>(angles + D / 2 + col);
                const float lo0 = x[kk][2 * half], lo1 = x[kk][2 * half + 1];
                const float hi0 = x[kk + HALF][2 * half], hi1 = x[kk + HALF][2 * half + 1];
                frag[kk][half] = bits(lo0 * c.x - hi0 * s.x) | bits(lo1 * c.y - hi1 * s.y) << 16;
                frag[kk + HALF][half] = bits(lo0 * s.x + hi0 * c.x) | bits(lo1 * s.y + hi1 * c.y) << 16;
            }
        }
    };
    u32 q0[DK][2], q1[DK][2];
    const T* qrow = qkv + (b * L + p0) * S * D + h * D;
    rotate(qrow, p0 < L, q_weight, p0 < L ? p0 : 0, q0);
    rotate(qrow + 8 * S * D, p1 < L, q_weight, p1 < L ? p1 : 0, q1);
    float s[NT][4];
    #pragma unroll
    for (int n = 0; n < NT; ++n) {
        s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
        if (n * 8 > last) continue;
        const int j = n * 8 + gr;
        u32 kf[DK][2];
        rotate(qkv + (b * L + j) * S * D + (H + kvh) * D, j <= last, k_weight, j <= last ? j : 0, kf);
        #pragma unroll
        for (int kk = 0; kk < DK; ++kk) {
            const u32 a[4] = {q0[kk][0], q1[kk][0], q0[kk][1], q1[kk][1]};
            const u32 bb[2] = {kf[kk][0], kf[kk][1]};
            embedserver_mma<BF16>(s[n], a, bb);
        }
    }
    const float scale = scale_param[0];
    float top0 = -3.0e38f, top1 = -3.0e38f;
    #pragma unroll
    for (int n = 0; n < NT; ++n) {
        #pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int j = n * 8 + 2 * tg + e;
            s[n][e] = j <= p0 && j < L ? s[n][e] * scale : -3.0e38f;
            s[n][2 + e] = j <= p1 && j < L ? s[n][2 + e] * scale : -3.0e38f;
            top0 = fmaxf(top0, s[n][e]);
            top1 = fmaxf(top1, s[n][2 + e]);
        }
    }
    #pragma unroll
    for (int o = 1; o < 4; o <<= 1) {
        top0 = fmaxf(top0, __shfl_xor_sync(0xffffffff, top0, o));
        top1 = fmaxf(top1, __shfl_xor_sync(0xffffffff, top1, o));
    }
    // Key 0 is every row's (causal, and L >= 1), so each row's maximum is a real score.
    float sum0 = 0.0f, sum1 = 0.0f;
    #pragma unroll
    for (int n = 0; n < NT; ++n) {
        #pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int j = n * 8 + 2 * tg + e;
            s[n][e] = j <= p0 && j < L ? expf(s[n][e] - top0) : 0.0f;
            s[n][2 + e] = j <= p1 && j < L ? expf(s[n][2 + e] - top1) : 0.0f;
            sum0 += s[n][e];
            sum1 += s[n][2 + e];
        }
    }
    #pragma unroll
    for (int o = 1; o < 4; o <<= 1) {
        sum0 += __shfl_xor_sync(0xffffffff, sum0, o);
        sum1 += __shfl_xor_sync(0xffffffff, sum1, o);
    }
    float acc[D / 8][4];
    #pragma unroll
    for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    #pragma unroll
    for (int ks = 0; ks < MT; ++ks) {
        if (ks * 16 > last) continue;
        const u32 a[4] = {bits(s[2 * ks][0]) | bits(s[2 * ks][1]) << 16, bits(s[2 * ks][2]) | bits(s[2 * ks][3]) << 16,
                          bits(s[2 * ks + 1][0]) | bits(s[2 * ks + 1][1]) << 16,
                          bits(s[2 * ks + 1][2]) | bits(s[2 * ks + 1][3]) << 16};
        const int j = ks * 16 + 2 * tg;
        const T* v0 = qkv + ((b * L + j) * S + H + KV + kvh) * D + gr;
        #pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            const T* v = v0 + 8 * n;
            const u32 bb[2] = {(j <= last ? bits_at(v) : 0u) | (j + 1 <= last ? bits_at(v + S * D) : 0u) << 16,
                               (j + 8 <= last ? bits_at(v + 8 * S * D) : 0u) | (j + 9 <= last ? bits_at(v + 9 * S * D) : 0u) << 16};
            embedserver_mma<BF16>(acc[n], a, bb);
        }
    }
    const float inv0 = 1.0f / sum0, inv1 = 1.0f / sum1;
    #pragma unroll
    for (int n = 0; n < D / 8; ++n) {
        const int d = 8 * n + 2 * tg;
        if (p0 < L) *reinterpret_cast<u32*>(out + ((b * L + p0) * H + h) * D + d) = bits(acc[n][0] * inv0) | bits(acc[n][1] * inv0) << 16;
        if (p1 < L) *reinterpret_cast<u32*>(out + ((b * L + p1) * H + h) * D + d) = bits(acc[n][2] * inv1) | bits(acc[n][3] * inv1) << 16;
    }
"""

# The longest sequence `short_attention` takes.
SHORT_ATTENTION_MAX = 64
# The longest padded length the Qwen3 block sends to it (cuDNN's fused attention above; see the kernel).
SHORT_ATTENTION_USED = 32

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
        ),
        "swiglu": mx.fast.cuda_kernel(
            name="embedserver_swiglu", input_names=["gate_up"], output_names=["out"], source=_SWIGLU
        ),
        "short_attention": mx.fast.cuda_kernel(
            name="embedserver_short_attention",
            input_names=["qkv", "q_weight", "k_weight", "table", "params", "scale_param"],
            output_names=["out"],
            source=_SHORT_ATTENTION,
            header=_MMA,
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
    per_round = 32 // (head_dim // (16 // qkv.dtype.size))  # heads a warp takes at once
    # Up to four rounds a warp, fewer where a warp would take more heads than a token has.
    rounds = next(r for r in (4, 2, 1) if r == 1 or per_round * r <= heads + kv_heads)
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


# The tensor cores' input types the kernel is written for (its products take bf16 or fp16).
_SHORT_ATTENTION_DTYPES = (mx.bfloat16, mx.float16)


def short_attention_takes(dtype: mx.Dtype, head_dim: int) -> bool:
    """Whether `short_attention` runs here for this dtype and head size: bfloat16 or float16 (the tensor cores'
    inputs; float32 models keep cuDNN's attention), heads a multiple of 32, and a GPU with those products
    (compute capability 8.0 and later)."""
    return dtype in _SHORT_ATTENTION_DTYPES and head_dim % 32 == 0 and _compute_capability() >= 80


@cache
def _compute_capability() -> int:
    """The CUDA device's compute capability as major * 10 + minor (90 for an H100), 0 where there is none."""
    info = mx.device_info()
    return int(info.get("compute_capability_major", 0)) * 10 + int(info.get("compute_capability_minor", 0))


def short_attention(
    qkv: mx.array,
    q_weight: mx.array,
    k_weight: mx.array,
    table: mx.array,
    params: mx.array,
    scale: mx.array,
    *,
    heads: int,
    kv_heads: int,
    head_dim: int,
) -> mx.array:
    """Causal attention for sequences of at most SHORT_ATTENTION_MAX tokens, bfloat16 or float16, with q and k
    RMS-normalized and rotated as `qk_norm_rope` does: qkv [B, L, (heads + 2 kv_heads) * head_dim] (the
    fused projection), `table` and `params` as for `qk_norm_rope`, `scale` float32 [1]. Returns the
    heads' outputs [B, L, heads * head_dim], what the output projection reads."""
    batch, length, _ = qkv.shape
    if (
        length > SHORT_ATTENTION_MAX
        or heads % kv_heads
        or head_dim % 32
        or qkv.dtype not in _SHORT_ATTENTION_DTYPES
    ):
        raise ValueError(
            f"short_attention takes up to {SHORT_ATTENTION_MAX} tokens of bfloat16 or float16, heads a multiple "
            f"of 32 wide, got qkv {qkv.shape} {qkv.dtype} with {heads} + {kv_heads} heads of {head_dim}"
        )
    tiles = -(-length // 16)
    (out,) = _kernels()["short_attention"](
        inputs=[qkv, q_weight, k_weight, table, params, scale],
        template=[
            ("T", qkv.dtype),
            ("BF16", qkv.dtype == mx.bfloat16),
            ("H", heads),
            ("KV", kv_heads),
            ("D", head_dim),
            ("L", length),
        ],
        grid=(batch * heads * tiles * 32, 1, 1),
        threadgroup=(128, 1, 1),
        output_shapes=[(batch, length, heads * head_dim)],
        output_dtypes=[qkv.dtype],
    )
    return out


def swiglu(gate_up: mx.array) -> mx.array:
    """gate_up [N, 2I] (gate then up) -> silu(gate) * up [N, I]."""
    rows, width = gate_up.shape
    half = width // 2
    per_thread = next(p for p in (16 // gate_up.dtype.size, 4, 2, 1) if half % p == 0)
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
