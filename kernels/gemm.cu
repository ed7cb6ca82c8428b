// Linear layers: C[n, m] = A[n, k] @ W[m, k]^T, bf16 in and out, f32 accumulation.
// Both operands are K-contiguous, which is exactly mma's "row.col" form: A row-major,
// B = W^T column-major.
#include "common.cuh"

// ---- Tiled tensor-core GEMM ---------------------------------------------------------------
// Block tile BM x BN over (rows of A) x (rows of W), K in steps of BK, two shared-memory
// stages filled by cp.async while the other is multiplied. 4 warps in a 2 x 2 grid, each
// owning a 32 x 32 piece of the tile = 2 x 4 mma tiles of 16 x 8.
// Edges: rows/cols past n/m are zero-filled on load and skipped on store; K is zero-padded.
// cp.async needs 16-byte chunks, so it is used only when k % 8 == 0 (every real model);
// otherwise the same loop loads through registers, element by element.
#define GEMM_BM 64
#define GEMM_BN 64
#define GEMM_BK 32
// Padded row: 40 bf16 = 80 bytes = 20 words. 16-byte aligned rows for cp.async, and the
// fragment loads (rows g = 0..7, words t = 0..3) fall in 32 distinct banks.
#define GEMM_SK (GEMM_BK + 8)

__device__ __forceinline__ void gemm_load_tile(bf16_t (*dst)[GEMM_SK], const bf16_t* src,
                                               int row0, int nrows, int k, int k0, bool vec) {
    // GEMM_BM == GEMM_BN: 64 rows x 4 chunks of 8 = 256 chunks, 2 per thread.
#pragma unroll
    for (int it = 0; it < 2; ++it) {
        int c = threadIdx.x + it * 128;
        int r = c >> 2, kc = (c & 3) * 8;
        int gr = row0 + r, gk = k0 + kc;
        if (vec) {
            bool in = gr < nrows && gk < k;  // k % 8 == 0: a chunk is wholly in or out
            const bf16_t* p = in ? src + (size_t)gr * k + gk : src;
            cp_async16(&dst[r][kc], p, in ? 16 : 0);
        } else {
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                bool in = gr < nrows && gk + e < k;
                dst[r][kc + e] = in ? src[(size_t)gr * k + gk + e] : (bf16_t)0;
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(128)
    gemm_bf16_tn(const bf16_t* __restrict__ A, const bf16_t* __restrict__ W,
                 bf16_t* __restrict__ C, int n, int m, int k) {
    __shared__ __align__(16) bf16_t As[2][GEMM_BM][GEMM_SK];
    __shared__ __align__(16) bf16_t Ws[2][GEMM_BN][GEMM_SK];
    const int row0 = blockIdx.y * GEMM_BM, col0 = blockIdx.x * GEMM_BN;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    const int g = lane >> 2, t = lane & 3;
    const bool vec = (k & 7) == 0;
    const int nk = (k + GEMM_BK - 1) / GEMM_BK;

    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    gemm_load_tile(As[0], A, row0, n, k, 0, vec);
    gemm_load_tile(Ws[0], W, col0, m, k, 0, vec);
    cp_async_commit();
    for (int kt = 0; kt < nk; ++kt) {
        const int s = kt & 1;
        if (kt + 1 < nk) {
            gemm_load_tile(As[s ^ 1], A, row0, n, k, (kt + 1) * GEMM_BK, vec);
            gemm_load_tile(Ws[s ^ 1], W, col0, m, k, (kt + 1) * GEMM_BK, vec);
        }
        cp_async_commit();     // possibly empty: keeps the group count uniform
        cp_async_wait<1>();    // stage s has landed (this thread's copies)
        __syncthreads();       // ... and everyone's
#pragma unroll
        for (int kk = 0; kk < GEMM_BK; kk += 16) {
            u32 a[2][4], b[4][2];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                int r = wm + i * 16 + g;
                a[i][0] = *(const u32*)&As[s][r][kk + 2 * t];
                a[i][1] = *(const u32*)&As[s][r + 8][kk + 2 * t];
                a[i][2] = *(const u32*)&As[s][r][kk + 2 * t + 8];
                a[i][3] = *(const u32*)&As[s][r + 8][kk + 2 * t + 8];
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                int c = wn + j * 8 + g;
                b[j][0] = *(const u32*)&Ws[s][c][kk + 2 * t];
                b[j][1] = *(const u32*)&Ws[s][c][kk + 2 * t + 8];
            }
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) mma_bf16_16816(acc[i][j], a[i], b[j]);
        }
        __syncthreads();  // stage s is refilled by the next iteration's loads
    }

#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                int r = row0 + wm + i * 16 + g + (e >> 1) * 8;
                int c = col0 + wn + j * 8 + 2 * t + (e & 1);
                if (r < n && c < m) C[(size_t)r * m + c] = f32_to_bf16(acc[i][j][e]);
            }
}

// ---- Few-row GEMM (decode) ----------------------------------------------------------------
// For n <= GEMV_MAXN rows the tile above would mostly multiply padding; this is bound by
// reading W once. One warp per W row j: lanes stride over K (8 elements = 16 bytes at a
// time when k % 8 == 0), keep one partial sum per A row, and reduce with shuffles.
#define GEMV_MAXN 8
#define GEMV_WARPS 8

extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv_bf16_tn(const bf16_t* __restrict__ A, const bf16_t* __restrict__ W,
                 bf16_t* __restrict__ C, int n, int m, int k) {
    const int lane = threadIdx.x & 31;
    const int j = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (j >= m) return;
    float acc[GEMV_MAXN];
#pragma unroll
    for (int r = 0; r < GEMV_MAXN; ++r) acc[r] = 0.0f;
    const bf16_t* w = W + (size_t)j * k;
    if ((k & 7) == 0) {
        for (int kk = lane * 8; kk < k; kk += 256) {
            uint4 wv = *(const uint4*)(w + kk);
            u32 ww[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
            for (int r = 0; r < GEMV_MAXN; ++r) {
                if (r < n) {
                    uint4 av = *(const uint4*)(A + (size_t)r * k + kk);
                    u32 aa[4] = {av.x, av.y, av.z, av.w};
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        acc[r] = fmaf(bf16lo(aa[e]), bf16lo(ww[e]), acc[r]);
                        acc[r] = fmaf(bf16hi(aa[e]), bf16hi(ww[e]), acc[r]);
                    }
                }
            }
        }
    } else {
        for (int kk = lane; kk < k; kk += 32) {
            float wf = bf16_to_f32(w[kk]);
#pragma unroll
            for (int r = 0; r < GEMV_MAXN; ++r)
                if (r < n) acc[r] = fmaf(bf16_to_f32(A[(size_t)r * k + kk]), wf, acc[r]);
        }
    }
#pragma unroll
    for (int r = 0; r < GEMV_MAXN; ++r) {
        if (r < n) {
            float s = warp_sum(acc[r]);
            if (lane == 0) C[(size_t)r * m + j] = f32_to_bf16(s);
        }
    }
}
