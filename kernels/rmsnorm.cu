// RMSNorm as HF computes it (f32 inside): out = w * (x / sqrt(mean(x^2) + eps)),
// optionally fused with the residual add before it: x += y (x rounded to bf16 and stored,
// and the norm taken of that stored value, so fused == add then norm).
#include "common.cuh"

// x, y, out [n, d]; w [d]; y may be null (plain norm). One block per row, blockDim % 32 == 0.
extern "C" __global__ void add_rmsnorm(bf16_t* __restrict__ x, const bf16_t* __restrict__ y,
                                       const bf16_t* __restrict__ w, bf16_t* __restrict__ out,
                                       int n, int d, float eps) {
    __shared__ float scratch[32];
    const int row = blockIdx.x;
    if (row >= n) return;
    bf16_t* xr = x + (size_t)row * d;
    const bf16_t* yr = y ? y + (size_t)row * d : nullptr;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float v = bf16_to_f32(xr[c]);
        if (yr) {
            bf16_t s = f32_to_bf16(v + bf16_to_f32(yr[c]));
            xr[c] = s;
            v = bf16_to_f32(s);
        }
        ss = fmaf(v, v, ss);
    }
    ss = block_sum(ss, scratch);
    const float r = 1.0f / sqrtf(ss / (float)d + eps);
    bf16_t* orow = out + (size_t)row * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x)
        orow[c] = f32_to_bf16(bf16_to_f32(w[c]) * (bf16_to_f32(xr[c]) * r));
}

// x += y elementwise over `len` elements.
extern "C" __global__ void add_inplace(bf16_t* __restrict__ x, const bf16_t* __restrict__ y,
                                       int len) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < len; i += gridDim.x * blockDim.x)
        x[i] = f32_to_bf16(bf16_to_f32(x[i]) + bf16_to_f32(y[i]));
}

// out[r, j] = sum_c (x[r, c] / rms(x[r]) * g[c]) * w[j, c], in f32 end to end (nothing
// rounded to bf16): label logits for path patching. x [n, d], g [d], w [m, d] (m small),
// out [n, m] f32. One block per row, blockDim % 32 == 0.
extern "C" __global__ void norm_dot(const bf16_t* __restrict__ x, const bf16_t* __restrict__ g,
                                    const bf16_t* __restrict__ w, float* __restrict__ out,
                                    int n, int d, int m, float eps) {
    __shared__ float scratch[32];
    const int row = blockIdx.x;
    if (row >= n) return;
    const bf16_t* xr = x + (size_t)row * d;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        const float v = bf16_to_f32(xr[c]);
        ss = fmaf(v, v, ss);
    }
    ss = block_sum(ss, scratch);
    const float r = 1.0f / sqrtf(ss / (float)d + eps);
    for (int j = 0; j < m; ++j) {
        const bf16_t* wr = w + (size_t)j * d;
        float acc = 0.0f;
        for (int c = threadIdx.x; c < d; c += blockDim.x)
            acc = fmaf(bf16_to_f32(xr[c]) * r * bf16_to_f32(g[c]), bf16_to_f32(wr[c]), acc);
        acc = block_sum(acc, scratch);
        if (threadIdx.x == 0) out[(size_t)row * m + j] = acc;
    }
}
