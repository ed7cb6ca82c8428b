// Shared helpers for pinpoint's kernels. Header-free on purpose: NVRTC compiles these
// without any CUDA include path (CUDA 13's cuda_bf16.h has broken under NVRTC), so bf16 is
// `unsigned short` (the top 16 bits of an IEEE f32) and conversions are bit operations.
//
// Conventions for every kernel file:
//   - storage is bf16 (`bf16_t`), arithmetic and accumulation are f32;
//   - 2-D tensors are row-major `[rows, cols]`; per-head tensors are `[rows, H * D]`;
//   - sizes and indices are `int` (tensors stay under 2^31 elements; the host checks).
#pragma once

typedef unsigned short bf16_t;

// No <math.h> under NVRTC without headers.
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
typedef unsigned int u32;

// bf16 -> f32: the bf16 bits are the high half of the f32.
__device__ __forceinline__ float bf16_to_f32(bf16_t h) {
    return __uint_as_float(((u32)h) << 16);
}

// f32 -> bf16, round to nearest even; NaN stays NaN (quiet), as torch does.
__device__ __forceinline__ bf16_t f32_to_bf16(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (bf16_t)((u >> 16) | 0x0040u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

// Two bf16 packed in one 32-bit word (low half = lower address = first element).
__device__ __forceinline__ float bf16lo(u32 w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16hi(u32 w) { return __uint_as_float(w & 0xffff0000u); }
__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
    return (u32)f32_to_bf16(lo) | ((u32)f32_to_bf16(hi) << 16);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024). `scratch` holds
// 32 floats of shared memory. Every thread gets the result.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nw ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

// Shared-memory address of a generic pointer, for PTX that takes .shared addresses.
__device__ __forceinline__ u32 smem_u32(const void* p) {
    return (u32)__cvta_generic_to_shared(p);
}

// 16-byte asynchronous global -> shared copy (sm_80+). `src_bytes` < 16 zero-fills the rest
// (0 reads nothing, so `src` only has to be a valid address, not in bounds).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)),
                 "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// D = A * B + D for one m16n8k16 tile: A row-major 16x16 bf16 (4 regs), B column-major
// 16x8 bf16 (2 regs), C/D 16x8 f32 (4 regs). Fragment layouts (PTX ISA, "mma.m16n8k16"),
// with g = lane / 4 and t = lane % 4:
//   a0 = A[g][2t..2t+1]   a1 = A[g+8][2t..2t+1]   a2 = A[g][2t+8..]   a3 = A[g+8][2t+8..]
//   b0 = B[2t..2t+1][g]   b1 = B[2t+8..2t+9][g]
//   d0,d1 = D[g][2t..2t+1]                        d2,d3 = D[g+8][2t..2t+1]
__device__ __forceinline__ void mma_bf16_16816(float* d, const u32* a, const u32* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
