// Rotate-half RoPE (HF Llama/Mistral) in place on x [n, c], c = heads * head_dim.
// Per head, with half = head_dim / 2 and i < half:
//   a = x[i], b = x[i + half], angle = pos * inv_freq[i] (f32 product, as HF)
//   x[i] = a cos - b sin,  x[i + half] = b cos + a sin
// cos/sin are taken in double of the f32 angle and rounded, exactly as the CPU oracle.
// inv_freq [half] f32 comes from the host (model::rope, for every RoPE variant; plain RoPE
// is backend::rope_inv_freq), positions [n] u32.
#include "common.cuh"

extern "C" __global__ void rope_rotate_half(bf16_t* __restrict__ x, const u32* __restrict__ positions,
                                            const float* __restrict__ inv_freq, int n, int c,
                                            int head_dim) {
    const int half = head_dim >> 1;
    const int pairs_per_row = c >> 1;  // (heads * half)
    const long total = (long)n * pairs_per_row;
    for (long e = blockIdx.x * (long)blockDim.x + threadIdx.x; e < total;
         e += (long)gridDim.x * blockDim.x) {
        const int row = (int)(e / pairs_per_row);
        const int rem = (int)(e - (long)row * pairs_per_row);
        const int hd = rem / half, i = rem - hd * half;
        const float angle = (float)positions[row] * inv_freq[i];
        double sd, cd;
        sincos((double)angle, &sd, &cd);
        const float cs = (float)cd, sn = (float)sd;
        bf16_t* p = x + (size_t)row * c + hd * head_dim;
        const float a = bf16_to_f32(p[i]), b = bf16_to_f32(p[i + half]);
        p[i] = f32_to_bf16(a * cs - b * sn);
        p[i + half] = f32_to_bf16(b * cs + a * sn);
    }
}

// ---- backward ----

// Backward of rotate-half RoPE (rope.cu's rope_rotate_half), in place on the gradient
// x [n, c], c = heads * head_dim: the transpose of the rotation, i.e. rotate by -angle:
//   x[i] = a cos + b sin,  x[i + half] = b cos - a sin.
// The angle is computed exactly as the forward (f32 pos * inv_freq, sincos in double).
extern "C" __global__ void rope_bwd(bf16_t* __restrict__ x, const u32* __restrict__ positions,
                                    const float* __restrict__ inv_freq, int n, int c, int head_dim) {
    const int half = head_dim >> 1;
    const int pairs_per_row = c >> 1;  // (heads * half)
    const long total = (long)n * pairs_per_row;
    for (long e = blockIdx.x * (long)blockDim.x + threadIdx.x; e < total;
         e += (long)gridDim.x * blockDim.x) {
        const int row = (int)(e / pairs_per_row);
        const int rem = (int)(e - (long)row * pairs_per_row);
        const int hd = rem / half, i = rem - hd * half;
        const float angle = (float)positions[row] * inv_freq[i];
        double sd, cd;
        sincos((double)angle, &sd, &cd);
        const float cs = (float)cd, sn = -(float)sd;  // sin(-angle)
        bf16_t* p = x + (size_t)row * c + hd * head_dim;
        const float a = bf16_to_f32(p[i]), b = bf16_to_f32(p[i + half]);
        p[i] = f32_to_bf16(a * cs - b * sn);
        p[i + half] = f32_to_bf16(b * cs + a * sn);
    }
}
