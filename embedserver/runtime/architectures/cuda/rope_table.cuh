// cos and sin of every (position, frequency) pair, table [length, D]: row l holds cos(l * f_i) for i < D/2,
// then sin(l * f_i); f_i = 2^(-i / (D/2) * log2(base)) (params[1] = log2(base)), as MLX's RoPE computes it.
#pragma once

template <int D>
__device__ __forceinline__ void embedserver_rope_table(
        const float* positions, const float* params, float* table, int length) {
    constexpr int HALF = D / 2;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= length * HALF) return;
    const int l = i / HALF;
    const int j = i - l * HALF;
    const float d = static_cast<float>(j) / static_cast<float>(HALF);
    const float theta = positions[l] * exp2(-d * params[1]);
    table[l * D + j] = cos(theta);
    table[l * D + HALF + j] = sin(theta);
}
