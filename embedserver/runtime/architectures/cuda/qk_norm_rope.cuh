// The per-head RMSNorm and RoPE of q and k: read from the fused q|k|v rows, written as q [B, L, H, D] and
// k [B, L, KV, D] (cuda_kernels.qk_norm_rope launches it).
//
// A warp takes R rounds of 32 / N of a token's q and k heads at once, N = D / E lanes a head and E = 16 /
// sizeof(T) elements a lane (one 16-byte vector: 8 bf16, 16 lanes for D = 128): lane i of a head's group holds
// elements [i*E, (i+1)*E), so the RoPE partner of an element (D/2 away) sits N/2 lanes away and one shuffle
// fetches it; the RMSNorm sum is a shuffle reduction within the group. A token's heads share its position: a
// lane reads its cosines and sines and its slices of the norm weights once for all its heads. Every round's
// loads are issued before any is used: a memory-bound kernel needs many bytes in flight, and loading one head,
// reducing it (the shuffles), storing it and only then loading the next (a store may alias the input, so the
// compiler cannot move the next load above it) kept one head in flight per warp: 192 µs a layer at 256 x 128
// on an H200 (~2.1 TB/s), 135 µs with the loads first (~3 TB/s). A group whose head is past the token's last
// (head counts that do not divide evenly) computes on zeros and stores nothing.
#pragma once
#include "norm_rope.cuh"

template <typename T, int H, int KV, int D, int R>
__device__ __forceinline__ void embedserver_qk_norm_rope(
        const T* qkv, const T* q_weight, const T* k_weight, const float* table, const float* params, T* q, T* k,
        int batch, int L) {
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
    if (warp >= batch * L * WARPS) return;
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
}
