// One lane's E consecutive elements of a head's row: RMS-normalized over the row's D elements (the D / E lanes
// of the row's group reduce the sum of squares together), multiplied by the norm's weights and rotated by RoPE
// with each element's cosine and sine; an element's RoPE partner (D / 2 away) sits D / E / 2 lanes away, one
// shuffle. Every lane of the warp calls it together. `qk_norm_rope` and `grouped_attention` both normalize and
// rotate q and k through it, so they round alike, as MLX's RMSNorm and RoPE do (cuda_kernels.py's doc).
#pragma once

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
