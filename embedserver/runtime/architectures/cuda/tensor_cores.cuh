// Device helpers of the tensor-core kernels: the m16n8k16 product, `ldmatrix`, asynchronous copies into shared
// memory and 16-byte row vectors.
//
// Fragment layouts (PTX ISA, mma.m16n8k16): lane = 4 gr + tg; A's registers hold rows gr and gr + 8 at columns
// 2 tg, 2 tg + 1 and those + 8; B's hold rows 2 tg, 2 tg + 1 (and + 8) of column gr; the float32 result holds
// rows gr and gr + 8 at columns 2 tg, 2 tg + 1. The low half of a register is the lower index.
//
// `embedserver_ldmatrix` (PTX ISA, m8n8 .x4, 16-bit): lanes 8 i to 8 i + 7 give the row addresses of matrix i
// (16 bytes each), and every lane gets, in register i, matrix i's row lane / 4 at columns 2 (lane % 4) and the
// next: the m16n8k16 A and B fragment layout. With `.trans` it gets the transposed matrix's: rows 2 (lane % 4)
// and the next at column lane / 4, which is B's layout for a matrix stored row-major by k (v, keys by rows).
#pragma once

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

template <typename T>
struct alignas(16) EmbedserverPack { T v[8]; };

__device__ inline void embedserver_ldmatrix(unsigned (&r)[4], unsigned row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(row));
}

__device__ inline void embedserver_ldmatrix_trans(unsigned (&r)[4], unsigned row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(row));
}

// 16 bytes from global to shared memory without passing through registers (PTX cp.async, compute capability
// 8.0+); `embedserver_copies_done` waits for this thread's.
__device__ inline void embedserver_copy16(void* to, const void* from) {
    const unsigned at = static_cast<unsigned>(__cvta_generic_to_shared(to));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(at), "l"(from));
}

__device__ inline void embedserver_copies_done() {
    asm volatile("cp.async.wait_all;" ::: "memory");
}
