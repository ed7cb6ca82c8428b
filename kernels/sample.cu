// Greedy decoding on the device: argmax of each logits row, lowest index on ties (as
// torch.argmax and generate::argmax). NaN is never chosen unless the row is all NaN
// (then index 0). logits [n, vocab] bf16, out [n] u32. One block per row, 256 threads.
#include "common.cuh"

#define AM_THREADS 256

extern "C" __global__ void __launch_bounds__(AM_THREADS)
    argmax_rows(const bf16_t* __restrict__ logits, u32* __restrict__ out, int n, int vocab) {
    __shared__ float sv[AM_THREADS];
    __shared__ int si[AM_THREADS];
    const int row = blockIdx.x;
    if (row >= n) return;
    const bf16_t* r = logits + (size_t)row * vocab;
    float best = -INFINITY;
    int bi = 0x7fffffff;
    for (int j = threadIdx.x; j < vocab; j += AM_THREADS) {
        float v = bf16_to_f32(r[j]);
        if (v > best || (bi == 0x7fffffff && v == best)) {  // first candidate may be -inf
            best = v;
            bi = j;
        }
    }
    sv[threadIdx.x] = best;
    si[threadIdx.x] = bi;
    __syncthreads();
    for (int s = AM_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            float ov = sv[threadIdx.x + s];
            int oi = si[threadIdx.x + s];
            if (ov > sv[threadIdx.x] || (ov == sv[threadIdx.x] && oi < si[threadIdx.x])) {
                sv[threadIdx.x] = ov;
                si[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[row] = si[0] == 0x7fffffff ? 0u : (u32)si[0];
}
