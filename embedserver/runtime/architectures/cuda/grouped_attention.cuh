// Causal attention for sequences of up to 128 tokens (cuda_attention.py says where it runs), with the per-head
// RMSNorm and RoPE of q and k inside.
//
// Rows of q, k and v move as `qk_norm_rope` moves them: a lane holds 8 consecutive elements of a row (one
// 16-byte vector, `EmbedserverPack`), D / 8 lanes a row, so a warp's loads and stores cover whole rows and the
// RoPE partner of an element (D / 2 away) sits D / 16 lanes away, one shuffle. `embedserver_angles` reads a
// lane's cosines and sines at position `pos`; `embedserver_norm_rope` normalizes a row with weights `w` and
// rotates it with `qk_norm_rope`'s own arithmetic (norm_rope.cuh; every lane of the warp calls it together).
#pragma once
#include "norm_rope.cuh"
#include "tensor_cores.cuh"

struct EmbedserverAngles { float4 c[2]; float4 s[2]; };

template <int D>
__device__ inline EmbedserverAngles embedserver_angles(const float* table, int pos, int sub) {
    const float* at = table + long(pos) * D + (sub % (D / 16)) * 8;
    EmbedserverAngles a;
    a.c[0] = *reinterpret_cast<const float4*>(at);
    a.c[1] = *reinterpret_cast<const float4*>(at + 4);
    a.s[0] = *reinterpret_cast<const float4*>(at + D / 2);
    a.s[1] = *reinterpret_cast<const float4*>(at + D / 2 + 4);
    return a;
}

template <typename T, int D>
__device__ inline EmbedserverPack<T> embedserver_norm_rope(
        const EmbedserverPack<T>& in, const EmbedserverPack<T>& w, const EmbedserverAngles& a, float eps, int sub) {
    const float c[8] = {a.c[0].x, a.c[0].y, a.c[0].z, a.c[0].w, a.c[1].x, a.c[1].y, a.c[1].z, a.c[1].w};
    const float s[8] = {a.s[0].x, a.s[0].y, a.s[0].z, a.s[0].w, a.s[1].x, a.s[1].y, a.s[1].z, a.s[1].w};
    EmbedserverPack<T> out;
    embedserver_norm_rope_lane<T, D, 8>(in.v, w.v, c, s, eps, sub < D / 16, out.v);
    return out;
}

// R rows of one head, row0, row0 + step, ... (this lane's group's; zeros past L), normalized and rotated into
// shared rows dst, dst + dst_step, ... (none at or past `rows`). All R rows' loads are issued before any is
// used: the kernel is bound by memory, which needs many bytes in flight.
template <typename T, int D, int R>
__device__ inline void embedserver_norm_rope_rows(
        const T* head, long stride, int row0, int step, int L, int rows, const EmbedserverPack<T>& w,
        const float* table, float eps, int sub, T* dst, int dst_step) {
    EmbedserverPack<T> in[R];
    EmbedserverAngles an[R];
    #pragma unroll
    for (int r = 0; r < R; ++r) {
        const int p = row0 + r * step;
        if (p < L) {
            in[r] = *reinterpret_cast<const EmbedserverPack<T>*>(head + long(p) * stride + sub * 8);
        } else {
            #pragma unroll
            for (int e = 0; e < 8; ++e) in[r].v[e] = static_cast<T>(0.0f);
        }
        an[r] = embedserver_angles<D>(table, p < L ? p : 0, sub);
    }
    #pragma unroll
    for (int r = 0; r < R; ++r) {
        const EmbedserverPack<T> out = embedserver_norm_rope<T, D>(in[r], w, an[r], eps, sub);
        if (row0 + r * step < rows) *reinterpret_cast<EmbedserverPack<T>*>(dst + r * dst_step + sub * 8) = out;
    }
}


// One block a (sequence b, KV head): the head's keys are normalized and rotated once into shared memory and its
// values copied there (by `cp.async`, while the keys are computed), for all G query heads that read them. A
// work unit is (query head, the pair of query tiles p and MT - 1 - p, so the causal mask leaves every unit about
// the same work); NW = min(units, 8) warps take the units in turn. A tile's q, normalized and rotated, waits in
// the warp's own rows of shared memory; the tile then walks its key tiles up to its own with a running maximum
// and sum per row (the softmax rescaled as each key tile arrives, as flash attention does), so only one key
// tile's scores are in registers; the finished tile goes back through the same rows, so each lane stores whole
// 16-byte vectors of the output. Only key tiles the causal mask reaches are multiplied and exponentiated; rows
// and keys past L are zeros, masked, never stored.
// Every global access is a 16-byte vector of a row, as in `qk_norm_rope`. Alone on an H200 at 256 x 64 (0.6B
// shape) this takes 166 µs a call where the fragment layout's 4-byte accesses (eight rows an instruction, for
// q, k, v, the cosines and the output alike) took 314. What limits it now is latency: with 128 registers a lane
// an SM holds 16 warps (0.6B shape: two blocks of eight at 128 tokens, 104 KB of shared memory each; four of
// four at 64), and a block's phases (staging, q, the key tiles, the output) add up rather than overlap
// (docs/perf/log.md).
// Shared memory: keys, values and q [rows][D + 8]; a row stride of 8 elements more than a multiple of 64 bytes
// puts any 8 rows an `ldmatrix` phase reads on different banks.
template <typename T, bool BF16, int H, int KV, int D, int L>
__device__ __forceinline__ void embedserver_grouped_attention(
        const T* qkv, const T* q_weight, const T* k_weight, const float* table, const float* params,
        const float* scale_param, T* out) {
    constexpr int G = H / KV;
    constexpr int S = H + 2 * KV;
    constexpr int LP = (L + 15) / 16 * 16;
    constexpr int MT = LP / 16;
    constexpr int DK = D / 16;
    constexpr int PW = (MT + 1) / 2;
    constexpr int UNITS = G * PW;
    constexpr int NW = UNITS < 8 ? UNITS : 8;
    constexpr int KS = D + 8;
    // Rows a warp instruction covers (D / 8 lanes a row), and the rounds of them a warp takes of the keys.
    constexpr int RPI = 256 / D;
    constexpr int KR = (LP / RPI + NW - 1) / NW;
    constexpr int QR = 16 / RPI;
    // Rounds whose loads are in flight together (a lane's share: 16 bytes of the row, 64 of cosines and sines).
    constexpr int KC = KR < 4 ? KR : 4;
    constexpr int QC = QR < 4 ? QR : 4;
    using u32 = unsigned int;
    using Pack = EmbedserverPack<T>;
    extern __shared__ __align__(16) unsigned char embedserver_grouped[];
    const int lane = threadIdx.x & 31;
    const int w = threadIdx.x >> 5;
    const int gr = lane >> 2;
    const int tg = lane & 3;
    const int sub = lane % (D / 8);
    const int rr = lane / (D / 8);
    T* ks = reinterpret_cast<T*>(embedserver_grouped);
    T* vs = ks + LP * KS;
    T* qs = vs + LP * KS + w * 16 * KS;
    // The same as shared-memory addresses (bytes), what ldmatrix takes.
    const u32 at_ks = static_cast<u32>(__cvta_generic_to_shared(ks));
    const u32 at_vs = at_ks + LP * KS * 2;
    const u32 at_qs = at_vs + (LP + w * 16) * KS * 2;
    const int kvh = blockIdx.x % KV;
    const long b = blockIdx.x / KV;
    const float eps = params[0];
    const float scale = scale_param[0];
    const T* seq = qkv + b * L * S * D;
    // Staging: the values' copies first (rows past L zeroed), then the keys computed while they land.
    for (int i = threadIdx.x; i < LP * (D / 8); i += NW * 32) {
        const int j = i / (D / 8);
        const int c = i % (D / 8);
        if (j < L) {
            embedserver_copy16(vs + j * KS + 8 * c, seq + (long(j) * S + H + KV + kvh) * D + 8 * c);
        } else {
            Pack zero;
            #pragma unroll
            for (int e = 0; e < 8; ++e) zero.v[e] = static_cast<T>(0.0f);
            *reinterpret_cast<Pack*>(vs + j * KS + 8 * c) = zero;
        }
    }
    {
        const Pack kw = *reinterpret_cast<const Pack*>(k_weight + sub * 8);
        const T* khead = seq + (H + kvh) * D;
        #pragma unroll
        for (int r0 = 0; r0 < KR; r0 += KC) {
            const int row0 = (w + r0 * NW) * RPI + rr;
            embedserver_norm_rope_rows<T, D, KC>(
                khead, long(S) * D, row0, NW * RPI, L, LP, kw, table, eps, sub, ks + row0 * KS, NW * RPI * KS);
        }
    }
    embedserver_copies_done();
    __syncthreads();
    // This lane's row address for each ldmatrix: matrix lane / 8 of a 16 x 16 tile, row lane % 8 of it.
    const int mrow = lane & 7;
    const int mat = lane >> 3;
    #pragma unroll 1
    for (int unit = w; unit < UNITS; unit += NW) {
        const int h = kvh * G + unit / PW;
        const int pair = unit % PW;
        #pragma unroll 1
        for (int pass = 0; pass < 2; ++pass) {
            const int mt = pass == 0 ? pair : MT - 1 - pair;
            if (pass == 1 && mt == pair) break;
            const int p0 = mt * 16 + gr;
            const int p1 = p0 + 8;
            __syncwarp();  // the previous tile's reads of qs are done
            const Pack qw = *reinterpret_cast<const Pack*>(q_weight + sub * 8);
            #pragma unroll 1
            for (int r0 = 0; r0 < QR; r0 += QC) {
                const int row = r0 * RPI + rr;
                embedserver_norm_rope_rows<T, D, QC>(
                    seq + h * D, long(S) * D, mt * 16 + row, RPI, L, LP, qw, table, eps, sub, qs + row * KS, RPI * KS);
            }
            __syncwarp();
            float acc[D / 8][4];
            #pragma unroll
            for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
            // Running row maxima (of scaled scores) and this lane's share of the rows' sums.
            float top0 = -3.0e38f, top1 = -3.0e38f, sum0 = 0.0f, sum1 = 0.0f;
            // q's A fragments: matrices (rows 0-7, cols 0-7), (rows 8-15, cols 0-7), (0-7, 8-15), (8-15, 8-15).
            const u32 qrow = at_qs + ((mrow + 8 * (mat & 1)) * KS + 8 * (mat >> 1)) * 2;
            #pragma unroll 1
            for (int kt = 0; kt <= mt; ++kt) {
                // The keys' B fragments: matrices (keys 0-7, dims lo), (keys 0-7, dims hi), (8-15, lo), (8-15, hi).
                const u32 krow = at_ks + ((kt * 16 + mrow + 8 * (mat >> 1)) * KS + 8 * (mat & 1)) * 2;
                float s[2][4];
                #pragma unroll
                for (int n = 0; n < 2; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
                #pragma unroll
                for (int kk = 0; kk < DK; ++kk) {
                    u32 a[4], kb[4];
                    embedserver_ldmatrix(a, qrow + 32 * kk);
                    embedserver_ldmatrix(kb, krow + 32 * kk);
                    const u32 b0[2] = {kb[0], kb[1]};
                    const u32 b1[2] = {kb[2], kb[3]};
                    embedserver_mma<BF16>(s[0], a, b0);
                    embedserver_mma<BF16>(s[1], a, b1);
                }
                // Only the diagonal tile and one holding L need the mask (the same for the whole warp). Key
                // kt * 16 is every row's here (kt <= mt, and it is below L), so each row's tile maximum is a
                // real score and the running maximum is finite from the first key tile on.
                const bool edge = kt == mt || kt * 16 + 16 > L;
                float c0 = -3.0e38f, c1 = -3.0e38f;
                #pragma unroll
                for (int n = 0; n < 2; ++n) {
                    #pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        const int j = kt * 16 + n * 8 + 2 * tg + e;
                        s[n][e] = !edge || (j <= p0 && j < L) ? s[n][e] * scale : -3.0e38f;
                        s[n][2 + e] = !edge || (j <= p1 && j < L) ? s[n][2 + e] * scale : -3.0e38f;
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
                // A masked score (-3e38) less a finite maximum is e^-3e38: 0.
                #pragma unroll
                for (int n = 0; n < 2; ++n) {
                    #pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        s[n][e] = expf(s[n][e] - top0);
                        s[n][2 + e] = expf(s[n][2 + e] - top1);
                        sum0 += s[n][e];
                        sum1 += s[n][2 + e];
                    }
                }
                // The attention weights as the next product's A fragments: the layouts coincide, so the
                // scores' registers are rounded to T and packed where they stand.
                u32 a[4];
                a[0] = embedserver_bits<T>(s[0][0]) | embedserver_bits<T>(s[0][1]) << 16;
                a[1] = embedserver_bits<T>(s[0][2]) | embedserver_bits<T>(s[0][3]) << 16;
                a[2] = embedserver_bits<T>(s[1][0]) | embedserver_bits<T>(s[1][1]) << 16;
                a[3] = embedserver_bits<T>(s[1][2]) | embedserver_bits<T>(s[1][3]) << 16;
                // The values' B fragments from vs [key][dim], transposed: matrices (keys lo, dims 8 n..),
                // (keys hi, 8 n..), (lo, 8 n + 8..), (hi, 8 n + 8..), two dimension tiles an ldmatrix.
                const u32 vrow = at_vs + ((kt * 16 + mrow + 8 * (mat & 1)) * KS + 8 * (mat >> 1)) * 2;
                #pragma unroll
                for (int n = 0; n < D / 8; n += 2) {
                    u32 vb[4];
                    embedserver_ldmatrix_trans(vb, vrow + 16 * n);
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
            // The tile, scaled by its rows' 1 / sum, into the warp's rows of shared memory, then out a row at a time.
            const float inv0 = 1.0f / sum0, inv1 = 1.0f / sum1;
            __syncwarp();  // every lane's q fragments are read
            #pragma unroll
            for (int n = 0; n < D / 8; ++n) {
                const int d = 8 * n + 2 * tg;
                *reinterpret_cast<u32*>(qs + gr * KS + d) = embedserver_bits<T>(acc[n][0] * inv0) | embedserver_bits<T>(acc[n][1] * inv0) << 16;
                *reinterpret_cast<u32*>(qs + (gr + 8) * KS + d) = embedserver_bits<T>(acc[n][2] * inv1) | embedserver_bits<T>(acc[n][3] * inv1) << 16;
            }
            __syncwarp();
            #pragma unroll
            for (int r = 0; r < QR; ++r) {
                const int row = r * RPI + rr;
                const int p = mt * 16 + row;
                if (p < L) {
                    *reinterpret_cast<Pack*>(out + ((b * L + p) * H + h) * D + sub * 8) = *reinterpret_cast<const Pack*>(qs + row * KS + sub * 8);
                }
            }
        }
    }
}
