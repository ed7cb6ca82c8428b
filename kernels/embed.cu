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

// Fill `len` bf16 with the bit pattern `value` (tests poison outputs with NaN = 0xffff).
extern "C" __global__ void fill_u16(bf16_t* __restrict__ x, unsigned int value, long len) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < len;
         i += (long)gridDim.x * blockDim.x)
        x[i] = (bf16_t)value;
}
