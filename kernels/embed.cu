// Row gathers: the token embedding (rows of the table by token id) and the tap/logits
// gathers (rows of an activation). out[i] = x[rows[i]] for i < nrows; x, out have `c` cols.
// The host checks every index. One block per output row.
#include "common.cuh"

extern "C" __global__ void gather_rows(const bf16_t* __restrict__ x, const u32* __restrict__ rows,
                                       bf16_t* __restrict__ out, int nrows, int c) {
    const int i = blockIdx.x;
    if (i >= nrows) return;
    const bf16_t* src = x + (size_t)rows[i] * c;
    bf16_t* dst = out + (size_t)i * c;
    for (int j = threadIdx.x; j < c; j += blockDim.x) dst[j] = src[j];
}

// ---- backward ----

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
