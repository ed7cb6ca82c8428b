// Row moves: gathers (the token embedding, rows of the table by token id; the taps and
// logits rows of an activation), scatters and slice writes (patching and ablation), and
// column blocks of weights (the tuned regions). The host checks every index.
#include "common.cuh"

// out[i] = x[rows[i]] for i < nrows; x, out have `c` cols. One block per output row.
extern "C" __global__ void gather_rows(const bf16_t* __restrict__ x, const u32* __restrict__ rows,
                                       bf16_t* __restrict__ out, int nrows, int c) {
    const int i = blockIdx.x;
    if (i >= nrows) return;
    const bf16_t* src = x + (size_t)rows[i] * c;
    bf16_t* dst = out + (size_t)i * c;
    for (int j = threadIdx.x; j < c; j += blockDim.x) dst[j] = src[j];
}

// dst[rows[i]] = src[i] (rows of width c), e.g. new keys/values into the KV cache.
extern "C" __global__ void scatter_rows(bf16_t* __restrict__ dst, const u32* __restrict__ rows,
                                        const bf16_t* __restrict__ src, int nrows, int c) {
    const int i = blockIdx.x;
    if (i >= nrows) return;
    bf16_t* d = dst + (size_t)rows[i] * c;
    const bf16_t* s = src + (size_t)i * c;
    for (int j = threadIdx.x; j < c; j += blockDim.x) d[j] = s[j];
}

// x[rows[i], col0[i] .. col0[i] + width] = values[i * vstride .. + width] for i < nslices,
// x of width c. vstride = width: one value row per slice (patching); vstride = 0: every
// slice gets row 0 (mean-ablation writes the same slice to every row).
extern "C" __global__ void write_slices(bf16_t* __restrict__ x, int c, const u32* __restrict__ rows,
                                        const u32* __restrict__ col0,
                                        const bf16_t* __restrict__ values, int nslices, int width,
                                        int vstride) {
    const int i = blockIdx.x;
    if (i >= nslices) return;
    bf16_t* d = x + (size_t)rows[i] * c + col0[i];
    const bf16_t* s = values + (size_t)i * vstride;
    for (int j = threadIdx.x; j < width; j += blockDim.x) d[j] = s[j];
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
