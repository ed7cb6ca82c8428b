// Optimizer kernels: masked AdamW on a region of a bf16 weight, with f32 master weights and
// moments, and the sum of squares of a gradient (for global-norm clipping).
#include "common.cuh"

// One AdamW step over a region of rr x rc elements (rr = len / rc) of a weight w of row
// stride ld; region element e = (r, c) lives at w[(row0 + r) * ld + col0 + c]. master, m,
// v [len] f32 and grad [len] bf16 are row-major over the region. As AdamStep::apply:
//   g' = g * clip; m = b1 m + (1 - b1) g'; v = b2 v + (1 - b2) g'^2;
//   master = master * decay - step_size * m / (sqrt(v) / bc2_sqrt + eps); w = bf16(master).
// Only the region's elements of w are written.
extern "C" __global__ void adamw_region(float* __restrict__ master, float* __restrict__ m,
                                        float* __restrict__ v, const bf16_t* __restrict__ grad,
                                        bf16_t* __restrict__ w, long len, int rc, int ld, int row0,
                                        int col0, float b1, float b2, float eps, float step_size,
                                        float bc2_sqrt, float decay, float clip) {
    for (long e = blockIdx.x * (long)blockDim.x + threadIdx.x; e < len;
         e += (long)gridDim.x * blockDim.x) {
        // Same operations in the same order as the host (AdamStep::apply).
        const float g = bf16_to_f32(grad[e]) * clip;
        const float mm = b1 * m[e] + (1.0f - b1) * g;
        const float vv = b2 * v[e] + (1.0f - b2) * g * g;
        const float denom = sqrtf(vv) / bc2_sqrt + eps;
        const float x = master[e] * decay - step_size * mm / denom;
        m[e] = mm;
        v[e] = vv;
        master[e] = x;
        const long r = e / rc, c = e - r * rc;
        w[(size_t)(row0 + r) * ld + col0 + c] = f32_to_bf16(x);
    }
}

#define SS_THREADS 256

// Per-block partial sums of g^2 over len elements, accumulated in f64: part[blockIdx.x];
// the host adds the gridDim.x partials. blockDim.x == SS_THREADS.
extern "C" __global__ void __launch_bounds__(SS_THREADS)
    sum_squares_part(const bf16_t* __restrict__ g, long len, double* __restrict__ part) {
    __shared__ double warp_part[SS_THREADS / 32];
    double acc = 0.0;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < len;
         i += (long)gridDim.x * blockDim.x) {
        const double x = (double)bf16_to_f32(g[i]);
        acc = fma(x, x, acc);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if ((threadIdx.x & 31) == 0) warp_part[threadIdx.x >> 5] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        double s = 0.0;
        for (int w = 0; w < SS_THREADS / 32; ++w) s += warp_part[w];
        part[blockIdx.x] = s;
    }
}
