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
attention to the dtype's rounding (tests/test_cuda_kernels.py, run on a CUDA machine).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import mlx.core as mx

# Device helpers. Fragment layouts (PTX ISA, mma.m16n8k16): lane = 4 gr + tg; A's registers hold rows gr and
# gr + 8 at columns 2 tg, 2 tg + 1 and those + 8; B's hold rows 2 tg, 2 tg + 1 (and + 8) of column gr; the
# float32 result holds rows gr and gr + 8 at columns 2 tg, 2 tg + 1. The low half of a register is the lower
# index.
#
# `embedserver_load_row` loads one row's columns of this lane (16 kk + 2 tg + {0, 1, 8, 9} of every k-step kk;
# zeros where `live` is false); `embedserver_norm_rope` normalizes them with weights `w` and rotates them to
# position `pos`, rounded to T and packed as fragments: frag[kk][0] holds columns 2 tg, 2 tg + 1 of k-step kk,
# frag[kk][1] those + 8. A row's four lanes together hold the whole head (its RMSNorm sum: two shuffles), and a
# column's RoPE partner, D / 2 away, sits D / 32 k-steps away in the same lane. Every lane of the warp calls
# them together.
#
# `embedserver_ldmatrix` (PTX ISA, m8n8 .x4, 16-bit): lanes 8 i to 8 i + 7 give the row addresses of matrix i
# (16 bytes each), and every lane gets, in register i, matrix i's row lane / 4 at columns 2 (lane % 4) and the
# next: the m16n8k16 fragment layout. One instruction loads what four 32-bit reads of shared memory do.
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

__device__ inline void embedserver_ldmatrix(unsigned (&r)[4], const void* row) {
    const unsigned at = static_cast<unsigned>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(at));
}
"""

# One block a (sequence b, KV head): the head's keys are normalized and rotated once into shared memory and its
# values staged there transposed, for all G query heads that read them. A work unit is (query head, the pair of
# query tiles p and MT - 1 - p, so the causal mask leaves every unit about the same work); NW = min(units, 8)
# warps take the units in turn. A tile's q, normalized and rotated, waits in the warp's own rows of shared
# memory; the tile then walks its key tiles up to its own with a running maximum and sum per row (the softmax
# rescaled as each key tile arrives, as flash attention does), so only one key tile's scores are in registers:
# 128 a lane at 64-128 tokens (NVRTC 12.9, sm_90a), two blocks of eight warps an SM. Only key tiles the causal
# mask reaches are multiplied and exponentiated; rows and keys past L are zeros, masked, never stored.
# Shared memory: keys [LP][D + 8], values transposed [D][LP + 8], q [NW][16][D + 8]; a row stride of 8
# elements more than a multiple of 64 bytes puts any 8 rows an `ldmatrix` phase reads on different banks.
_GROUPED_ATTENTION = """
    constexpr int G = H / KV;
    constexpr int S = H + 2 * KV;
    constexpr int LP = (L + 15) / 16 * 16;
    constexpr int MT = LP / 16;
    constexpr int NT = LP / 8;
    constexpr int DK = D / 16;
    constexpr int PW = (MT + 1) / 2;
    constexpr int UNITS = G * PW;
    constexpr int NW = UNITS < 8 ? UNITS : 8;
    constexpr int KS = D + 8;
    constexpr int VS = LP + 8;
    using u32 = unsigned int;
    struct alignas(16) Pack { T v[8]; };
    extern __shared__ __align__(16) unsigned char embedserver_grouped[];
    const int lane = threadIdx.x & 31;
    const int w = threadIdx.x >> 5;
    const int gr = lane >> 2;
    const int tg = lane & 3;
    T* ks = reinterpret_cast<T*>(embedserver_grouped);
    T* vt = ks + LP * KS;
    T* qs = vt + D * VS + w * 16 * KS;
    const int kvh = blockIdx.x % KV;
    const long b = blockIdx.x / KV;
    const float eps = params[0];
    const float scale = scale_param[0];
    const T* seq = qkv + b * L * S * D;
    // Staging: the keys (loads first, then normalized and rotated into ks), then the values (into vt).
    constexpr int KR = (NT + NW - 1) / NW;
    constexpr int VR = (LP * (D / 8) + NW * 32 - 1) / (NW * 32);
    {
        u32 kraw[KR][DK][2];
        #pragma unroll
        for (int r = 0; r < KR; ++r) {
            const int j = (w + r * NW) * 8 + gr;
            embedserver_load_row<T, D>(seq + (long(j < L ? j : 0) * S + H + kvh) * D, j < L, tg, kraw[r]);
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
    }
    {
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
        for (int r = 0; r < VR; ++r) {
            const int i = threadIdx.x + r * NW * 32;
            if (i >= LP * (D / 8)) break;
            #pragma unroll
            for (int e = 0; e < 8; ++e) vt[(8 * (i / LP) + e) * VS + i % LP] = vraw[r].v[e];
        }
    }
    __syncthreads();
    // This lane's row address for each ldmatrix: matrix lane / 8 of a 16 x 16 tile, row lane % 8 of it.
    const int mrow = lane & 7;
    const int mat = lane >> 3;
    for (int unit = w; unit < UNITS; unit += NW) {
        const int h = kvh * G + unit / PW;
        const int pair = unit % PW;
        for (int pass = 0; pass < 2; ++pass) {
            const int mt = pass == 0 ? pair : MT - 1 - pair;
            if (pass == 1 && mt == pair) break;
            const int p0 = mt * 16 + gr;
            const int p1 = p0 + 8;
            {
                u32 raw0[DK][2], raw1[DK][2], q0[DK][2], q1[DK][2];
                embedserver_load_row<T, D>(seq + (long(p0 < L ? p0 : 0) * S + h) * D, p0 < L, tg, raw0);
                embedserver_load_row<T, D>(seq + (long(p1 < L ? p1 : 0) * S + h) * D, p1 < L, tg, raw1);
                embedserver_norm_rope<T, D>(raw0, q_weight, table, p0 < L ? p0 : 0, eps, tg, q0);
                embedserver_norm_rope<T, D>(raw1, q_weight, table, p1 < L ? p1 : 0, eps, tg, q1);
                __syncwarp();  // the previous tile's reads of qs are done
                #pragma unroll
                for (int kk = 0; kk < DK; ++kk) {
                    #pragma unroll
                    for (int half = 0; half < 2; ++half) {
                        *reinterpret_cast<u32*>(qs + gr * KS + 16 * kk + 2 * tg + 8 * half) = q0[kk][half];
                        *reinterpret_cast<u32*>(qs + (gr + 8) * KS + 16 * kk + 2 * tg + 8 * half) = q1[kk][half];
                    }
                }
                __syncwarp();
            }
            float acc[D / 8][4];
            #pragma unroll
            for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
            // Running row maxima (of scaled scores) and this lane's share of the rows' sums.
            float top0 = -3.0e38f, top1 = -3.0e38f, sum0 = 0.0f, sum1 = 0.0f;
            // q's A fragments: matrices (rows 0-7, cols 0-7), (rows 8-15, cols 0-7), (0-7, 8-15), (8-15, 8-15).
            const T* qrow = qs + (mrow + 8 * (mat & 1)) * KS + 8 * (mat >> 1);
            #pragma unroll 1
            for (int kt = 0; kt <= mt; ++kt) {
                // The keys' B fragments: matrices (keys 0-7, dims lo), (keys 0-7, dims hi), (8-15, lo), (8-15, hi).
                const T* krow = ks + (kt * 16 + mrow + 8 * (mat >> 1)) * KS + 8 * (mat & 1);
                float s[2][4];
                #pragma unroll
                for (int n = 0; n < 2; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
                #pragma unroll
                for (int kk = 0; kk < DK; ++kk) {
                    u32 a[4], kb[4];
                    embedserver_ldmatrix(a, qrow + 16 * kk);
                    embedserver_ldmatrix(kb, krow + 16 * kk);
                    const u32 b0[2] = {kb[0], kb[1]};
                    const u32 b1[2] = {kb[2], kb[3]};
                    embedserver_mma<BF16>(s[0], a, b0);
                    embedserver_mma<BF16>(s[1], a, b1);
                }
                // Key kt * 16 is every row's here (kt <= mt, and it is below L), so each row's tile maximum
                // is a real score and the running maximum is finite from the first key tile on.
                float c0 = -3.0e38f, c1 = -3.0e38f;
                #pragma unroll
                for (int n = 0; n < 2; ++n) {
                    #pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        const int j = kt * 16 + n * 8 + 2 * tg + e;
                        s[n][e] = j <= p0 && j < L ? s[n][e] * scale : -3.0e38f;
                        s[n][2 + e] = j <= p1 && j < L ? s[n][2 + e] * scale : -3.0e38f;
                        c0 = fmaxf(c0, s[n][e]);
                        c1 = fmaxf(c1, s[n][2 + e]);
                    }
                }
                #pragma unroll
                for (int o = 1; o < 4; o <<= 1) {
                    c0 = fmaxf(c0, __shfl_xor_sync(0xffffffff, c0, o));
                    c1 = fmaxf(c1, __shfl_xor_sync(0xffffffff, c1, o));
                }
                const float next0 = fmaxf(top0, c0), next1 = fmaxf(top1, c1);
                const float keep0 = expf(top0 - next0), keep1 = expf(top1 - next1);
                top0 = next0;
                top1 = next1;
                sum0 *= keep0;
                sum1 *= keep1;
                #pragma unroll
                for (int n = 0; n < D / 8; ++n) {
                    acc[n][0] *= keep0;
                    acc[n][1] *= keep0;
                    acc[n][2] *= keep1;
                    acc[n][3] *= keep1;
                }
                #pragma unroll
                for (int n = 0; n < 2; ++n) {
                    #pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        const int j = kt * 16 + n * 8 + 2 * tg + e;
                        s[n][e] = j <= p0 && j < L ? expf(s[n][e] - top0) : 0.0f;
                        s[n][2 + e] = j <= p1 && j < L ? expf(s[n][2 + e] - top1) : 0.0f;
                        sum0 += s[n][e];
                        sum1 += s[n][2 + e];
                    }
                }
                u32 a[4];
                embedserver_weights<T, 2>(s, 0, a);
                // The values' B fragments from vt [dim][key]: matrices (dims 8 n.., keys lo), (8 n.., hi),
                // (8 n + 8.., lo), (8 n + 8.., hi), two dimension tiles an ldmatrix.
                const T* vrow = vt + (mrow + 8 * (mat >> 1)) * VS + kt * 16 + 8 * (mat & 1);
                #pragma unroll
                for (int n = 0; n < D / 8; n += 2) {
                    u32 vb[4];
                    embedserver_ldmatrix(vb, vrow + 8 * n * VS);
                    const u32 b0[2] = {vb[0], vb[1]};
                    const u32 b1[2] = {vb[2], vb[3]};
                    embedserver_mma<BF16>(acc[n], a, b0);
                    embedserver_mma<BF16>(acc[n + 1], a, b1);
                }
            }
            #pragma unroll
            for (int o = 1; o < 4; o <<= 1) {
                sum0 += __shfl_xor_sync(0xffffffff, sum0, o);
                sum1 += __shfl_xor_sync(0xffffffff, sum1, o);
            }
            embedserver_store<T, D>(acc, out, ((b * L + p0) * H + h) * D, ((b * L + p1) * H + h) * D, p0 < L, p1 < L, tg, 1.0f / sum0, 1.0f / sum1);
        }
    }
"""

# The longest sequence the kernel takes.
GROUPED_ATTENTION_MAX = 128
# Where the Qwen3 block uses it: every padded length up to GROUPED_ATTENTION_USED, and the longer ones up to
# GROUPED_ATTENTION_MAX in batches of up to GROUPED_ATTENTION_TOKENS padded tokens; cuDNN's fused attention
# (after `qk_norm_rope`) takes the rest. Small batches are bound by the host, which encodes one kernel fewer a
# layer and no cuDNN graph with this kernel. Large ones are bound by the device, where the kernel matches
# cuDNN's up to 64 tokens but ranged from 4% faster to 8% slower at 100-128 tokens, by the machine. On an H200
# (0.6B shape, medians of whole passes, on one or two machines): 8 x 128 4.0-5.0 ms against 4.4-5.7 with the staged
# kernel it replaced (one block a query head); 256 x 16 8.9-9.7 against 10.0-10.1 with the short-sequence
# kernel it replaced (one warp a query tile); 256 x 48 24.3-24.8 against 25.1-26.0 with cuDNN's; 256 x 128
# 62.3-65.0 against 61.3-62.6 (docs/perf/log.md).
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
        header=_HEADER,
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


def _check(qkv: mx.array, heads: int, kv_heads: int, head_dim: int) -> None:
    if qkv.shape[1] > GROUPED_ATTENTION_MAX or heads % kv_heads or head_dim % 32 or qkv.dtype not in _DTYPES:
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
    heads: int,
    kv_heads: int,
    head_dim: int,
) -> mx.array:
    """Causal attention for sequences of at most GROUPED_ATTENTION_MAX tokens, bfloat16 or float16, with q and k
    RMS-normalized and rotated as `qk_norm_rope` does: qkv [B, L, (heads + 2 kv_heads) * head_dim] (the
    fused projection), `table` and `params` as for `qk_norm_rope`, `scale` float32 [1]. Returns the
    heads' outputs [B, L, heads * head_dim], what the output projection reads."""
    _check(qkv, heads, kv_heads, head_dim)
    batch, length, _ = qkv.shape
    padded = -(-length // 16) * 16
    warps = grouped_warps(length, heads, kv_heads)
    shared = (
        padded * (head_dim + 8) + head_dim * (padded + 8) + warps * 16 * (head_dim + 8)
    ) * qkv.dtype.size
    (out,) = _grouped_kernel(shared)(
        inputs=[qkv, q_weight, k_weight, table, params, scale],
        template=template(qkv.dtype, length, heads, kv_heads, head_dim),
        grid=(batch * kv_heads * warps * 32, 1, 1),
        threadgroup=(warps * 32, 1, 1),
        output_shapes=[(batch, length, heads * head_dim)],
        output_dtypes=[qkv.dtype],
    )
    return out
