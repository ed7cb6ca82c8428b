// Elementwise ops that belong to no layer op (bf16 storage, f32 math).
#include "common.cuh"

// x *= s over `len` elements.
extern "C" __global__ void scale_bf16(bf16_t* __restrict__ x, float s, long len) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < len;
         i += (long)gridDim.x * blockDim.x)
        x[i] = f32_to_bf16(bf16_to_f32(x[i]) * s);
}

// x += y elementwise over `len` elements.
extern "C" __global__ void add_inplace(bf16_t* __restrict__ x, const bf16_t* __restrict__ y,
                                       int len) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < len; i += gridDim.x * blockDim.x)
        x[i] = f32_to_bf16(bf16_to_f32(x[i]) + bf16_to_f32(y[i]));
}

// Fill `len` bf16 with the bit pattern `value` (tests poison outputs with NaN = 0xffff).
extern "C" __global__ void fill_u16(bf16_t* __restrict__ x, unsigned int value, long len) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < len;
         i += (long)gridDim.x * blockDim.x)
        x[i] = (bf16_t)value;
}
