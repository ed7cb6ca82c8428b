// The embedding backward (the forward is a row gather: rows.cu's gather_rows).
#include "common.cuh"

// Embedding backward: dtable[id] += sum of dx[row] over the rows holding token `id`.
// The host groups rows by id (CSR): unique ids uid[u], their rows rows[start[u] ..
// start[u + 1]] ascending. One block per unique id, threads over columns: every table row
// is written by one block, the sum is f32 in a fixed order (deterministic, no atomics) and
// rounded to bf16 once.

extern "C" __global__ void embed_bwd(const bf16_t* __restrict__ dx, const u32* __restrict__ uid,
                                     const u32* __restrict__ start, const u32* __restrict__ rows,
                                     bf16_t* __restrict__ dtable, int n_unique, int d) {
    const int u = blockIdx.x;
    if (u >= n_unique) return;
    const u32 r0 = start[u], r1 = start[u + 1];
    bf16_t* t = dtable + (size_t)uid[u] * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float acc = 0.0f;
        for (u32 e = r0; e < r1; ++e) acc += bf16_to_f32(dx[(size_t)rows[e] * d + c]);
        t[c] = f32_to_bf16(bf16_to_f32(t[c]) + acc);
    }
}
