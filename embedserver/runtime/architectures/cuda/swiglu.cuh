// silu(gate) * up from the fused gate|up projection's rows [rows, 2 I] (gate, then up) into [rows, I].
// P consecutive outputs per thread (one 16-byte vector of bf16 where the width allows).
#pragma once

template <typename T, int I, int P>
__device__ __forceinline__ void embedserver_swiglu(const T* gate_up, T* out, int rows) {
    struct alignas(sizeof(T) * P) Pack { T v[P]; };
    const long i = (long(blockIdx.x) * blockDim.x + threadIdx.x) * P;
    if (i >= long(rows) * I) return;
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
}
