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

// ---- backward ----

// RMSNorm backward. Forward: y = w * x * r, r = 1 / sqrt(mean(x^2) + eps), per row of d.
// With g = w * dy:  dx = r * g - x * r^3 * (g . x) / d;  dw += sum_rows dy * x * r.

// dy, x, dx [n, d]; w [d]. One block per row (blockDim % 32 == 0). rs [n] f32 receives r of
// each row for rmsnorm_bwd_dw (may be null when dw is not wanted).
extern "C" __global__ void rmsnorm_bwd_dx(const bf16_t* __restrict__ dy, const bf16_t* __restrict__ x,
                                          const bf16_t* __restrict__ w, bf16_t* __restrict__ dx,
                                          float* __restrict__ rs, int n, int d, float eps) {
    __shared__ float scratch[32];
    const int row = blockIdx.x;
    if (row >= n) return;
    const bf16_t* xr = x + (size_t)row * d;
    const bf16_t* dyr = dy + (size_t)row * d;
    float ss = 0.0f, gx = 0.0f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        const float xv = bf16_to_f32(xr[c]);
        ss = fmaf(xv, xv, ss);
        gx = fmaf(bf16_to_f32(w[c]) * bf16_to_f32(dyr[c]), xv, gx);
    }
    ss = block_sum(ss, scratch);
    gx = block_sum(gx, scratch);
    const float r = 1.0f / sqrtf(ss / (float)d + eps);
    const float cf = r * r * r * gx / (float)d;
    bf16_t* dxr = dx + (size_t)row * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        const float xv = bf16_to_f32(xr[c]);
        dxr[c] = f32_to_bf16(r * bf16_to_f32(w[c]) * bf16_to_f32(dyr[c]) - xv * cf);
    }
    if (rs && threadIdx.x == 0) rs[row] = r;
}

#define NB_COLS 32
#define NB_ROWS 8

// dw[c] += sum_i dy[i, c] * x[i, c] * rs[i] (f32 sum, one bf16 rounding). Block
// (NB_COLS, NB_ROWS): 32 columns, 8 row lanes; grid ceil(d / 32). Deterministic.
extern "C" __global__ void __launch_bounds__(NB_COLS * NB_ROWS)
    rmsnorm_bwd_dw(const bf16_t* __restrict__ dy, const bf16_t* __restrict__ x,
                   const float* __restrict__ rs, bf16_t* __restrict__ dw, int n, int d) {
    __shared__ float part[NB_ROWS][NB_COLS + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int c = blockIdx.x * NB_COLS + tx;
    float acc = 0.0f;
    if (c < d) {
        for (int i = ty; i < n; i += NB_ROWS) {
            const size_t e = (size_t)i * d + c;
            acc = fmaf(bf16_to_f32(dy[e]) * bf16_to_f32(x[e]), rs[i], acc);
        }
    }
    part[ty][tx] = acc;
    __syncthreads();
    if (ty == 0 && c < d) {
        float s = 0.0f;
#pragma unroll
        for (int r = 0; r < NB_ROWS; ++r) s += part[r][tx];
        dw[c] = f32_to_bf16(bf16_to_f32(dw[c]) + s);
    }
}
