"""Causal attention kernels for the Qwen3 layer on CUDA, with the per-head RMSNorm and RoPE of q and k inside.

Both read the fused q|k|v projection as the layer's matrix product wrote it and write the heads' outputs in
the layout the output projection reads, on the tensor cores (m16n8k16 products, bf16 or fp16 in, float32
out), so no separate `qk_norm_rope` pass writes q and k to memory and reads them back:
- `short_attention`, sequences of up to SHORT_ATTENTION_MAX tokens: one warp a (sequence, query head, tile of
  16 query positions), registers only; every warp normalizes and rotates the keys it reads itself.
- `staged_attention`, up to STAGED_ATTENTION_MAX tokens: one block a (sequence, query head); the block
  normalizes and rotates each key once into shared memory and stages the values there transposed, then each
  warp takes two tiles of 16 query positions, one from each end, so the causal mask leaves every warp about
  the same work. It replaces `qk_norm_rope` and cuDNN's fused attention for small batches, where a pass is
  bound by the host; on large ones the device takes longer over it than over those two (SHORT_ATTENTION_USED
  and the constants after it say where each kernel is used, and why).

Numerics follow `qk_norm_rope` (cuda_kernels.py) step for step for q and k; the attention weights are
rounded to the dtype before they multiply v, as cuDNN's fused attention rounds them. Results equal a float64
attention to the dtype's rounding (tests/test_cuda_kernels.py, run on a CUDA machine).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import mlx.core as mx

# Device helpers both kernels share. Fragment layouts (PTX ISA, mma.m16n8k16): lane = 4 gr + tg; A's registers
# hold rows gr and gr + 8 at columns 2 tg, 2 tg + 1 and those + 8; B's hold rows 2 tg, 2 tg + 1 (and + 8) of
# column gr; the float32 result holds rows gr and gr + 8 at columns 2 tg, 2 tg + 1. The low half of a register
# is the lower index.
#
# `embedserver_rotate` loads one row's columns of this lane (16 kk + 2 tg + {0, 1, 8, 9} of every k-step kk;
# zeros where `live` is false), normalizes them with weights `w` and rotates them to position `pos`, rounded to
# T and packed as fragments: frag[kk][0] holds columns 2 tg, 2 tg + 1 of k-step kk, frag[kk][1] those + 8. A
# row's four lanes together hold the whole head (its RMSNorm sum: two shuffles), and a column's RoPE partner,
# D / 2 away, sits D / 32 k-steps away in the same lane. Every lane of the warp calls it together.
_HEADER = """
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

template <typename T>
__device__ inline unsigned embedserver_bits(float x) {
    const T y = static_cast<T>(x);
    return unsigned(*reinterpret_cast<const unsigned short*>(&y));
}

template <typename T, int D>
__device__ inline void embedserver_load_row(const T* row, bool live, int tg, unsigned (&raw)[D / 16][2]) {
    #pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        #pragma unroll
        for (int half = 0; half < 2; ++half) {
            raw[kk][half] = live ? *reinterpret_cast<const unsigned*>(row + 16 * kk + 2 * tg + 8 * half) : 0u;
        }
    }
}

template <typename T, int D>
__device__ inline void embedserver_norm_rope(
        const unsigned (&raw)[D / 16][2], const T* w, const float* table, int pos, float eps, int tg, unsigned (&frag)[D / 16][2]) {
    constexpr int DK = D / 16;
    constexpr int HALF = DK / 2;
    struct alignas(4) Two { T v[2]; };
    float x[DK][4];
    float ss = 0.0f;
    #pragma unroll
    for (int kk = 0; kk < DK; ++kk) {
        #pragma unroll
        for (int half = 0; half < 2; ++half) {
            const Two t = *reinterpret_cast<const Two*>(&raw[kk][half]);
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
            frag[kk][half] = embedserver_bits<T>(lo0 * c.x - hi0 * s.x) | embedserver_bits<T>(lo1 * c.y - hi1 * s.y) << 16;
            frag[kk + HALF][half] = embedserver_bits<T>(lo0 * s.x + hi0 * c.x) | embedserver_bits<T>(lo1 * s.y + hi1 * c.y) << 16;
        }
    }
}

template <typename T, int D>
__device__ inline void embedserver_rotate(
        const T* row, bool live, const T* w, const float* table, int pos, float eps, int tg, unsigned (&frag)[D / 16][2]) {
    unsigned raw[D / 16][2];
    embedserver_load_row<T, D>(row, live, tg, raw);
    embedserver_norm_rope<T, D>(raw, w, table, pos, eps, tg, frag);
}

// The causal softmax of a tile's scores s [16, 8 NT] (query rows p0 = gr-th and p1 = p0 + 8; keys past the
// row or past L get weight 0), in place, unnormalized; the rows' 1 / sum in inv0 and inv1. A row sits in four
// adjacent lanes: two shuffles. Key 0 is every row's (causal, and L >= 1), so each row's maximum is a real score.
template <int NT>
__device__ inline void embedserver_softmax(
        float (&s)[NT][4], int p0, int p1, int L, int tg, float scale, float& inv0, float& inv1) {
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
    inv0 = 1.0f / sum0;
    inv1 = 1.0f / sum1;
}

// The attention weights of key step ks (keys 16 ks .. 16 ks + 15) as the next product's A fragments: the
// layouts coincide, so the scores' registers are rounded to T and packed where they stand.
template <typename T, int NT>
__device__ inline void embedserver_weights(const float (&s)[NT][4], int ks, unsigned (&a)[4]) {
    a[0] = embedserver_bits<T>(s[2 * ks][0]) | embedserver_bits<T>(s[2 * ks][1]) << 16;
    a[1] = embedserver_bits<T>(s[2 * ks][2]) | embedserver_bits<T>(s[2 * ks][3]) << 16;
    a[2] = embedserver_bits<T>(s[2 * ks + 1][0]) | embedserver_bits<T>(s[2 * ks + 1][1]) << 16;
    a[3] = embedserver_bits<T>(s[2 * ks + 1][2]) | embedserver_bits<T>(s[2 * ks + 1][3]) << 16;
}

// Rows p0 and p1 of a tile's output [16, D], scaled by their 1 / sum, into out [B, L, H, D] (rows past L not stored).
template <typename T, int D>
__device__ inline void embedserver_store(
        const float (&acc)[D / 8][4], T* out, long row0, long row1, bool live0, bool live1, int tg, float inv0, float inv1) {
    #pragma unroll
    for (int n = 0; n < D / 8; ++n) {
        const int d = 8 * n + 2 * tg;
        if (live0) *reinterpret_cast<unsigned*>(out + row0 + d) = embedserver_bits<T>(acc[n][0] * inv0) | embedserver_bits<T>(acc[n][1] * inv0) << 16;
        if (live1) *reinterpret_cast<unsigned*>(out + row1 + d) = embedserver_bits<T>(acc[n][2] * inv1) | embedserver_bits<T>(acc[n][3] * inv1) << 16;
    }
}
"""

# The scores [16, LP] (LP = L rounded up to 16) are Q [16, D] K^T [D, LP]; the softmax runs on the score
# fragments in registers, and its weights are the next product's A fragments, times V [LP, D] read from qkv:
# the heads' outputs leave registers only to be stored. Keys past the tile's last position are neither loaded
# nor multiplied (causal); rows and keys past L are zeros, masked, never stored. Every warp that reads a key
# normalizes and rotates it again (a few hundred operations a key). On an H200 (0.6B shape): the separate
# `qk_norm_rope` and the same attention without it took 27 µs a layer at 128 x 16 where this takes 41, but each
# custom kernel costs the host ~20 µs a layer to encode, and a 128 x 16 pass is host-bound: with this kernel it
# took 6.1-6.2 ms against 7.4 with the previous attention kernel and `qk_norm_rope`, one text of 16 tokens
# 3.4-3.5 ms against 5.1-5.5, 64 x 32 6.6 against 7.4 (cuDNN's). At 64 tokens it lost to cuDNN's (11.2-11.5
# against 10.4-10.5 ms at 64 x 64): each key is loaded and normalized once per tile that reads it, and the
# values are read two bytes at a time. docs/perf/log.md has the figures.
_SHORT_ATTENTION = """
    constexpr int G = H / KV;
    constexpr int S = H + 2 * KV;
    constexpr int LP = (L + 15) / 16 * 16;
    constexpr int MT = LP / 16;
    constexpr int NT = LP / 8;
    constexpr int DK = D / 16;
    using u32 = unsigned int;
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
    auto bits_at = [](const T* at) { return u32(*reinterpret_cast<const unsigned short*>(at)); };
    u32 q0[DK][2], q1[DK][2];
    const T* qrow = qkv + (b * L + p0) * S * D + h * D;
    embedserver_rotate<T, D>(qrow, p0 < L, q_weight, table, p0 < L ? p0 : 0, eps, tg, q0);
    embedserver_rotate<T, D>(qrow + 8 * S * D, p1 < L, q_weight, table, p1 < L ? p1 : 0, eps, tg, q1);
    float s[NT][4];
    #pragma unroll
    for (int n = 0; n < NT; ++n) {
        s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
        if (n * 8 > last) continue;
        const int j = n * 8 + gr;
        u32 kf[DK][2];
        embedserver_rotate<T, D>(qkv + (b * L + j) * S * D + (H + kvh) * D, j <= last, k_weight, table, j <= last ? j : 0, eps, tg, kf);
        #pragma unroll
        for (int kk = 0; kk < DK; ++kk) {
            const u32 a[4] = {q0[kk][0], q1[kk][0], q0[kk][1], q1[kk][1]};
            const u32 bb[2] = {kf[kk][0], kf[kk][1]};
            embedserver_mma<BF16>(s[n], a, bb);
        }
    }
    float inv0, inv1;
    embedserver_softmax<NT>(s, p0, p1, L, tg, scale_param[0], inv0, inv1);
    float acc[D / 8][4];
    #pragma unroll
    for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    #pragma unroll
    for (int ks = 0; ks < MT; ++ks) {
        if (ks * 16 > last) continue;
        u32 a[4];
        embedserver_weights<T, NT>(s, ks, a);
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
    embedserver_store<T, D>(acc, out, ((b * L + p0) * H + h) * D, ((b * L + p1) * H + h) * D, p0 < L, p1 < L, tg, inv0, inv1);
"""

# One block a (sequence b, query head h), NW = ceil(MT / 2) warps. Staging: the block's warps normalize and
# rotate keys eight at a time (`embedserver_rotate`, whose fragments are also the staged row's layout) into
# ks [LP][D + 8], and copy the values transposed into vt [D][LP + 8], zeros past L; the rows' padding puts a
# warp's reads of either (one 32-bit word a lane: a B fragment) on 32 different banks. Then warp w takes query
# tiles w and MT - 1 - w (the middle one once when MT is odd): tile mt reads mt + 1 key tiles, so each warp
# reads MT + 1 of them. The block's G - 1 siblings of the same KV head stage the same keys again (from L2).
_STAGED_ATTENTION = """
    constexpr int G = H / KV;
    constexpr int S = H + 2 * KV;
    constexpr int LP = (L + 15) / 16 * 16;
    constexpr int MT = LP / 16;
    constexpr int NT = LP / 8;
    constexpr int DK = D / 16;
    constexpr int NW = (MT + 1) / 2;
    constexpr int KS = D + 8;
    constexpr int VS = LP + 8;
    using u32 = unsigned int;
    struct alignas(16) Pack { T v[8]; };
    extern __shared__ __align__(16) unsigned char embedserver_staged[];
    T* ks = reinterpret_cast<T*>(embedserver_staged);
    T* vt = ks + LP * KS;
    const int lane = threadIdx.x & 31;
    const int w = threadIdx.x >> 5;
    const int gr = lane >> 2;
    const int tg = lane & 3;
    const int h = blockIdx.x % H;
    const long b = blockIdx.x / H;
    const int kvh = h / G;
    const float eps = params[0];
    const T* seq = qkv + b * L * S * D;
    // Every staged load is issued before any is used: a block's few warps need many bytes in flight each.
    constexpr int KR = (NT + NW - 1) / NW;
    constexpr int VR = (LP * (D / 8) + NW * 32 - 1) / (NW * 32);
    u32 kraw[KR][DK][2];
    #pragma unroll
    for (int r = 0; r < KR; ++r) {
        const int j = (w + r * NW) * 8 + gr;
        embedserver_load_row<T, D>(seq + (long(j < L ? j : 0) * S + H + kvh) * D, j < L, tg, kraw[r]);
    }
    Pack vraw[VR];
    #pragma unroll
    for (int r = 0; r < VR; ++r) {
        const int i = threadIdx.x + r * NW * 32;
        const int j = i % LP;
        if (j < L && i < LP * (D / 8)) {
            vraw[r] = *reinterpret_cast<const Pack*>(seq + (long(j) * S + H + KV + kvh) * D + 8 * (i / LP));
        } else {
            #pragma unroll
            for (int e = 0; e < 8; ++e) vraw[r].v[e] = static_cast<T>(0.0f);
        }
    }
    #pragma unroll
    for (int r = 0; r < KR; ++r) {
        const int j = (w + r * NW) * 8 + gr;
        if (j - gr >= LP) break;
        u32 kf[DK][2];
        embedserver_norm_rope<T, D>(kraw[r], k_weight, table, j < L ? j : 0, eps, tg, kf);
        #pragma unroll
        for (int kk = 0; kk < DK; ++kk) {
            #pragma unroll
            for (int half = 0; half < 2; ++half) {
                *reinterpret_cast<u32*>(ks + j * KS + 16 * kk + 2 * tg + 8 * half) = kf[kk][half];
            }
        }
    }
    #pragma unroll
    for (int r = 0; r < VR; ++r) {
        const int i = threadIdx.x + r * NW * 32;
        if (i >= LP * (D / 8)) break;
        #pragma unroll
        for (int e = 0; e < 8; ++e) vt[(8 * (i / LP) + e) * VS + i % LP] = vraw[r].v[e];
    }
    __syncthreads();
    for (int pass = 0; pass < 2; ++pass) {
        const int mt = pass == 0 ? w : MT - 1 - w;
        if (pass == 1 && mt == w) break;
        const int p0 = mt * 16 + gr;
        const int p1 = p0 + 8;
        const int last = min(mt * 16 + 15, L - 1);
        u32 raw0[DK][2], raw1[DK][2], q0[DK][2], q1[DK][2];
        embedserver_load_row<T, D>(seq + (long(p0 < L ? p0 : 0) * S + h) * D, p0 < L, tg, raw0);
        embedserver_load_row<T, D>(seq + (long(p1 < L ? p1 : 0) * S + h) * D, p1 < L, tg, raw1);
        embedserver_norm_rope<T, D>(raw0, q_weight, table, p0 < L ? p0 : 0, eps, tg, q0);
        embedserver_norm_rope<T, D>(raw1, q_weight, table, p1 < L ? p1 : 0, eps, tg, q1);
        float s[NT][4];
        #pragma unroll
        for (int n = 0; n < NT; ++n) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
            if (n * 8 > last) continue;
            const T* krow = ks + (n * 8 + gr) * KS + 2 * tg;
            #pragma unroll
            for (int kk = 0; kk < DK; ++kk) {
                const u32 a[4] = {q0[kk][0], q1[kk][0], q0[kk][1], q1[kk][1]};
                const u32 bb[2] = {*reinterpret_cast<const u32*>(krow + 16 * kk), *reinterpret_cast<const u32*>(krow + 16 * kk + 8)};
                embedserver_mma<BF16>(s[n], a, bb);
            }
        }
        float inv0, inv1;
        embedserver_softmax<NT>(s, p0, p1, L, tg, scale_param[0], inv0, inv1);
        float acc[D / 8][4];
        #pragma unroll
        for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
        #pragma unroll
        for (int kt = 0; kt < MT; ++kt) {
            if (kt * 16 > last) continue;
            u32 a[4];
            embedserver_weights<T, NT>(s, kt, a);
            const T* vcol = vt + gr * VS + kt * 16 + 2 * tg;
            #pragma unroll
            for (int n = 0; n < D / 8; ++n) {
                const T* v = vcol + 8 * n * VS;
                const u32 bb[2] = {*reinterpret_cast<const u32*>(v), *reinterpret_cast<const u32*>(v + 8)};
                embedserver_mma<BF16>(acc[n], a, bb);
            }
        }
        embedserver_store<T, D>(acc, out, ((b * L + p0) * H + h) * D, ((b * L + p1) * H + h) * D, p0 < L, p1 < L, tg, inv0, inv1);
    }
"""

# The longest sequence each kernel takes.
SHORT_ATTENTION_MAX = 64
STAGED_ATTENTION_MAX = 128
# The longest padded length the Qwen3 block sends to `short_attention`; `staged_attention` takes the lengths
# above it up to STAGED_ATTENTION_MAX in batches of up to STAGED_ATTENTION_TOKENS padded tokens, cuDNN's fused
# attention the rest. Small batches are bound by the host, which encodes one kernel fewer a layer and no
# cuDNN graph with the staged kernel: on an H200 (0.6B shape) one text of 128 tokens took 3.5-5.3 ms against
# 5.8-6.1, 8 x 128 5.3-5.5 against 6.0-6.8, even at 16 x 128 and 32 x 64; larger batches are bound by the
# device, where the staged kernel is the slower (256 x 128 68.8-69.3 ms against 60.2-61.3; 32 x 128 11.2-11.6
# against 9.8-9.9; docs/perf/log.md).
SHORT_ATTENTION_USED = 32
STAGED_ATTENTION_TOKENS = 2048

# The tensor cores' input types the kernels are written for (their products take bf16 or fp16).
_DTYPES = (mx.bfloat16, mx.float16)
_INPUTS = ["qkv", "q_weight", "k_weight", "table", "params", "scale_param"]


@cache
def _short_kernel() -> Any:
    return mx.fast.cuda_kernel(
        name="embedserver_short_attention",
        input_names=_INPUTS,
        output_names=["out"],
        source=_SHORT_ATTENTION,
        header=_HEADER,
    )


@cache
def _staged_kernel(shared_bytes: int) -> Any:
    """One kernel object per shared-memory size (MLX sets a kernel's dynamic shared memory where it is made)."""
    return mx.fast.cuda_kernel(
        name="embedserver_staged_attention",
        input_names=_INPUTS,
        output_names=["out"],
        source=_STAGED_ATTENTION,
        header=_HEADER,
        shared_memory=shared_bytes,
    )


def attention_takes(dtype: mx.Dtype, head_dim: int) -> bool:
    """Whether the attention kernels run here for this dtype and head size: bfloat16 or float16 (the tensor
    cores' inputs; float32 models keep cuDNN's attention), heads a multiple of 32, and a GPU with those products
    (compute capability 8.0 and later)."""
    return dtype in _DTYPES and head_dim % 32 == 0 and _compute_capability() >= 80


@cache
def _compute_capability() -> int:
    """The CUDA device's compute capability as major * 10 + minor (90 for an H100), 0 where there is none."""
    info = mx.device_info()
    return int(info.get("compute_capability_major", 0)) * 10 + int(info.get("compute_capability_minor", 0))


def _check(name: str, longest: int, qkv: mx.array, heads: int, kv_heads: int, head_dim: int) -> None:
    if qkv.shape[1] > longest or heads % kv_heads or head_dim % 32 or qkv.dtype not in _DTYPES:
        raise ValueError(
            f"{name} takes up to {longest} tokens of bfloat16 or float16, heads a multiple of 32 wide, got qkv "
            f"{qkv.shape} {qkv.dtype} with {heads} + {kv_heads} heads of {head_dim}"
        )


def template(dtype: mx.Dtype, length: int, heads: int, kv_heads: int, head_dim: int) -> list[tuple[str, Any]]:
    """Both kernels' template arguments (compile-time constants) for qkv of `dtype` and `length` tokens."""
    return [
        ("T", dtype),
        ("BF16", dtype == mx.bfloat16),
        ("H", heads),
        ("KV", kv_heads),
        ("D", head_dim),
        ("L", length),
    ]


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
    _check("short_attention", SHORT_ATTENTION_MAX, qkv, heads, kv_heads, head_dim)
    batch, length, _ = qkv.shape
    tiles = -(-length // 16)
    (out,) = _short_kernel()(
        inputs=[qkv, q_weight, k_weight, table, params, scale],
        template=template(qkv.dtype, length, heads, kv_heads, head_dim),
        grid=(batch * heads * tiles * 32, 1, 1),
        threadgroup=(128, 1, 1),
        output_shapes=[(batch, length, heads * head_dim)],
        output_dtypes=[qkv.dtype],
    )
    return out


def staged_attention(
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
    """`short_attention`'s computation for sequences of up to STAGED_ATTENTION_MAX tokens, each key normalized
    once per block in shared memory; same arguments and result."""
    _check("staged_attention", STAGED_ATTENTION_MAX, qkv, heads, kv_heads, head_dim)
    batch, length, _ = qkv.shape
    tiles = -(-length // 16)
    warps = -(-tiles // 2)
    padded = tiles * 16
    shared = (padded * (head_dim + 8) + head_dim * (padded + 8)) * qkv.dtype.size
    (out,) = _staged_kernel(shared)(
        inputs=[qkv, q_weight, k_weight, table, params, scale],
        template=template(qkv.dtype, length, heads, kv_heads, head_dim),
        grid=(batch * heads * warps * 32, 1, 1),
        threadgroup=(warps * 32, 1, 1),
        output_shapes=[(batch, length, heads * head_dim)],
        output_dtypes=[qkv.dtype],
    )
    return out
