// SwiGLU activation: out = silu(gate) * up = gate / (1 + exp(-gate)) * up, elementwise.
#include "common.cuh"

extern "C" __global__ void swiglu(const bf16_t* __restrict__ gate, const bf16_t* __restrict__ up,
                                  bf16_t* __restrict__ out, int len) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < len; i += gridDim.x * blockDim.x) {
        const float g = bf16_to_f32(gate[i]);
        out[i] = f32_to_bf16(g / (1.0f + expf(-g)) * bf16_to_f32(up[i]));
    }
}

// ---- backward ----

// Backward of act = silu(g) * u with s = sigmoid(g):
//   dgate = dact * u * s * (1 + g (1 - s)),  dup = dact * g * s.
extern "C" __global__ void swiglu_bwd(const bf16_t* __restrict__ dact, const bf16_t* __restrict__ gate,
                                      const bf16_t* __restrict__ up, bf16_t* __restrict__ dgate,
                                      bf16_t* __restrict__ dup, long len) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < len;
         i += (long)gridDim.x * blockDim.x) {
        const float d = bf16_to_f32(dact[i]), g = bf16_to_f32(gate[i]), u = bf16_to_f32(up[i]);
        const float s = 1.0f / (1.0f + expf(-g));
        dgate[i] = f32_to_bf16(d * u * s * (1.0f + g * (1.0f - s)));
        dup[i] = f32_to_bf16(d * g * s);
    }
}
