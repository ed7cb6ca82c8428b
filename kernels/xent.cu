// Fused softmax cross-entropy, forward and backward, per row of logits [n, V] (bf16 in, f32
// math): loss[i] = log(sum_j exp(l_j - m)) + m - l_t (m = row max) and
// dlogits[i, j] = (softmax_j - [j == t]) * scale. Rows with target < 0 have no loss:
// loss 0, dlogits 0. One block per row, XE_THREADS threads.
#include "common.cuh"

#define XE_THREADS 256

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nw ? scratch[lane] : -INFINITY;
    return warp_max(v);
}

extern "C" __global__ void __launch_bounds__(XE_THREADS)
    xent_fwd_bwd(const bf16_t* __restrict__ logits, const int* __restrict__ targets,
                 bf16_t* __restrict__ dlogits, float* __restrict__ loss, int n, int vocab,
                 float scale) {
    __shared__ float scratch[32];
    const int row = blockIdx.x;
    if (row >= n) return;
    const bf16_t* lr = logits + (size_t)row * vocab;
    bf16_t* dr = dlogits + (size_t)row * vocab;
    const int t = targets[row];
    if (t < 0) {  // block-uniform
        for (int j = threadIdx.x; j < vocab; j += blockDim.x) dr[j] = 0;
        if (threadIdx.x == 0) loss[row] = 0.0f;
        return;
    }
    float m = -INFINITY;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) m = fmaxf(m, bf16_to_f32(lr[j]));
    m = block_max(m, scratch);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) sum += expf(bf16_to_f32(lr[j]) - m);
    sum = block_sum(sum, scratch);
    const float f = (1.0f / sum) * scale;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        const float p = expf(bf16_to_f32(lr[j]) - m) * f;
        dr[j] = f32_to_bf16(j == t ? p - scale : p);
    }
    if (threadIdx.x == 0) loss[row] = logf(sum) + m - bf16_to_f32(lr[t]);
}
