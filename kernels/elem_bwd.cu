// Elementwise backward ops and region copies (bf16 storage, f32 math).
#include "common.cuh"

// x *= s over `len` elements.
extern "C" __global__ void scale_bf16(bf16_t* __restrict__ x, float s, long len) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < len;
         i += (long)gridDim.x * blockDim.x)
        x[i] = f32_to_bf16(bf16_to_f32(x[i]) * s);
}

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

// dst[r * dst_ld + c] = src[r * src_ld + c] for r < rows, c < cols: a column block of a
// matrix to or from a compact buffer. Touches nothing else of dst.
extern "C" __global__ void copy2d_bf16(const bf16_t* __restrict__ src, int src_ld,
                                       bf16_t* __restrict__ dst, int dst_ld, int rows, int cols) {
    const long total = (long)rows * cols;
    for (long e = blockIdx.x * (long)blockDim.x + threadIdx.x; e < total;
         e += (long)gridDim.x * blockDim.x) {
        const int r = (int)(e / cols), c = (int)(e - (long)r * cols);
        dst[(size_t)r * dst_ld + c] = src[(size_t)r * src_ld + c];
    }
}
