// SwiGLU activation: out = silu(gate) * up = gate / (1 + exp(-gate)) * up, elementwise.
#include "common.cuh"

extern "C" __global__ void swiglu(const bf16_t* __restrict__ gate, const bf16_t* __restrict__ up,
                                  bf16_t* __restrict__ out, int len) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < len; i += gridDim.x * blockDim.x) {
        const float g = bf16_to_f32(gate[i]);
        out[i] = f32_to_bf16(g / (1.0f + expf(-g)) * bf16_to_f32(up[i]));
    }
}
