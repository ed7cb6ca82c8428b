// Tensor-core attention (FlashAttention-2 style) for packed whole sequences, forward and
// backward. mma.sync m16n8k16 bf16 with f32 accumulation (sm_80+), no cp.async pipeline.
//
// Only the common case: every span has pos0 = 0, no kv_new and kv_start = q_start, so a
// span is rows row0 .. row0 + len - 1 of q/z/dz and of k/v. Query i (position in the span)
// sees key j iff j <= i and (window == 0 || i - j < window); head h reads key/value group
// h / (H / G). q, z, dz, dq [n, H*D]; k, v, dk, dv [rows, G*D]; lse, dsum [n, H] f32.
// D is a template parameter, 64 or 128 (one entry point per D).
//
// Work split: the host cuts every span into tiles of 64 positions, 3 ints each
// {row0, i0, len}. Forward, stats and dq: grid (tiles, H), one CTA = 64 queries of a head,
// 4 warps of 16 queries; K/V go through shared memory a key tile at a time. dkv: grid
// (tiles, G), one CTA = 64 keys of a kv group (4 warps of 16 keys), looping over the
// group's heads and 16-query tiles, so dK and dV have one writer each (no atomics).
//
// Scores s = (q . k) * scale, scale = 1/sqrt(D); p = expf(s - m) (accurate expf, as the
// CUDA-core kernels); lse = m + logf(l) has the same meaning as flash_attn_fwd's (attn_probs
// reads it). P and dS enter the second mma of a step rounded to bf16, as FlashAttention.
//
// Fragment layouts (see common.cuh), g = lane / 4, t = lane % 4. A C fragment pair of
// n-tiles 2kk, 2kk+1 (16 x 16 of f32) is exactly the A fragment of k-step kk once packed.
#include "common.cuh"

#define TC_BQ 64   // queries per CTA (forward, stats, dq), 16 per warp
#define TC_BKF 64  // keys per shared-memory tile, forward and stats
#define TC_BKD 32  // keys per shared-memory tile, dq
#define TC_BKV 64  // keys per CTA, dkv, 16 per warp
#define TC_QV 16   // queries per shared-memory tile, dkv

// Rows p0 .. p0 + R - 1 (span positions) of a span starting at global row row0 with len
// rows, columns col0 .. col0 + D - 1 of src (row width row_w), into dst [R][D + 8]. Rows
// at positions outside 0 .. len - 1 are zero (masked keys must not carry NaN into P V).
// Padded row stride D + 8 halves: (D + 8) / 2 words = 4 mod 32, so a fragment load (rows
// g = 0..7, words t = 0..3) hits 32 distinct banks.
template <int D>
__device__ __forceinline__ void tc_load_rows(bf16_t* dst, const bf16_t* __restrict__ src,
                                             int row_w, int col0, int row0, int p0, int R,
                                             int len) {
    constexpr int W = D / 2;  // u32 words per row
    for (int e = threadIdx.x; e < R * W; e += blockDim.x) {
        const int r = e / W, c = (e - r * W) * 2;
        const int p = p0 + r;
        u32 val = 0u;
        if (p >= 0 && p < len) val = *(const u32*)(src + (size_t)(row0 + p) * row_w + col0 + c);
        *(u32*)&dst[r * (D + 8) + c] = val;
    }
}

// A fragment of the 16 x 16 block at (m0, k0) of a row-major smem tile X (row stride S).
__device__ __forceinline__ void tc_frag_a(u32* a, const bf16_t* X, int S, int m0, int k0,
                                          int g, int t) {
    a[0] = *(const u32*)&X[(m0 + g) * S + k0 + 2 * t];
    a[1] = *(const u32*)&X[(m0 + g + 8) * S + k0 + 2 * t];
    a[2] = *(const u32*)&X[(m0 + g) * S + k0 + 2 * t + 8];
    a[3] = *(const u32*)&X[(m0 + g + 8) * S + k0 + 2 * t + 8];
}

// B fragment (16 x 8, B[k][n] = X[n0 + n][k0 + k]) from a row-major tile X: B = X^T.
__device__ __forceinline__ void tc_frag_b_rows(u32* b, const bf16_t* X, int S, int n0, int k0,
                                               int g, int t) {
    b[0] = *(const u32*)&X[(n0 + g) * S + k0 + 2 * t];
    b[1] = *(const u32*)&X[(n0 + g) * S + k0 + 2 * t + 8];
}

// B fragment (16 x 8, B[k][n] = X[k0 + k][n0 + n]) from a row-major tile X: B = X itself,
// two scalar loads per register (lower k in the low half).
__device__ __forceinline__ void tc_frag_b_cols(u32* b, const bf16_t* X, int S, int k0, int n0,
                                               int g, int t) {
    const int c = n0 + g;
    b[0] = (u32)X[(k0 + 2 * t) * S + c] | ((u32)X[(k0 + 2 * t + 1) * S + c] << 16);
    b[1] = (u32)X[(k0 + 2 * t + 8) * S + c] | ((u32)X[(k0 + 2 * t + 9) * S + c] << 16);
}

// A fragment of k-step kk from f32 C fragments c[2kk], c[2kk + 1], rounded to bf16.
__device__ __forceinline__ void tc_c_to_a(u32* a, const float* c0, const float* c1) {
    a[0] = pack_bf16x2(c0[0], c0[1]);
    a[1] = pack_bf16x2(c0[2], c0[3]);
    a[2] = pack_bf16x2(c1[0], c1[1]);
    a[3] = pack_bf16x2(c1[2], c1[3]);
}

__device__ __forceinline__ bool tc_visible(int i, int j, int len, int window) {
    return i < len && j <= i && (window <= 0 || i - j < window);
}

// Forward. STATS = false: writes z and lse. STATS = true (for the backward): writes lse and
// dsum_i = dz_i . o_i (o in f32, before rounding), no z.
template <int D, bool STATS>
__device__ __forceinline__ void tc_fwd(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k,
                                       const bf16_t* __restrict__ v, bf16_t* __restrict__ z,
                                       float* __restrict__ lse, const bf16_t* __restrict__ dz,
                                       float* __restrict__ dsum, const int* __restrict__ tiles,
                                       int H, int G, int window) {
    constexpr int S = D + 8, KD = D / 16, ND = D / 8, NT = TC_BKF / 8;
    __shared__ __align__(16) bf16_t Ks[TC_BKF * S];
    __shared__ __align__(16) bf16_t Vs[TC_BKF * S];
    const int h = blockIdx.y, grp = h / (H / G);
    const int row0 = tiles[3 * blockIdx.x], i0 = tiles[3 * blockIdx.x + 1];
    const int len = tiles[3 * blockIdx.x + 2];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int qw = i0 + 16 * warp;  // first query of this warp
    const int qrw = H * D, kvw = G * D;
    const float scale = 1.0f / sqrtf((float)D);

    // Q tile through Ks into registers (A fragments, held for the whole loop).
    tc_load_rows<D>(Ks, q, qrw, h * D, row0, i0, TC_BQ, len);
    __syncthreads();
    u32 qa[KD][4];
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) tc_frag_a(qa[kk], Ks, S, 16 * warp, 16 * kk, g, t);

    float o[ND][4];
#pragma unroll
    for (int nd = 0; nd < ND; ++nd) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

    const int hi = min(len - 1, i0 + TC_BQ - 1);
    const int lo = window > 0 ? max(0, i0 + 1 - window) : 0;
    for (int kb = lo; kb <= hi; kb += TC_BKF) {
        __syncthreads();  // previous tile (or the Q fragments) fully read
        tc_load_rows<D>(Ks, k, kvw, grp * D, row0, kb, TC_BKF, len);
        tc_load_rows<D>(Vs, v, kvw, grp * D, row0, kb, TC_BKF, len);
        __syncthreads();
        // Warp-uniform skips: no query of the warp in the span, every key after every
        // query, or every key out of every query's window.
        if (qw >= len || kb > qw + 15) continue;
        if (window > 0 && qw - (kb + TC_BKF - 1) >= window) continue;

        float s[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KD; ++kk) {
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                u32 b[2];
                tc_frag_b_rows(b, Ks, S, 8 * nt, 16 * kk, g, t);
                mma_bf16_16816(s[nt], qa[kk], b);
            }
        }
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = e >> 1;
                const int i = qw + g + 8 * r, j = kb + 8 * nt + 2 * t + (e & 1);
                const float sv = tc_visible(i, j, len, window) ? s[nt][e] * scale : -INFINITY;
                s[nt][e] = sv;
                mx[r] = fmaxf(mx[r], sv);
            }
        float mu[2], corr[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            const float mn = fmaxf(m[r], mx[r]);
            mu[r] = mn == -INFINITY ? 0.0f : mn;  // row with nothing visible yet: p = 0
            corr[r] = expf(m[r] - mu[r]);         // 0 while m is -inf
            m[r] = mn;
        }
        float rs[2] = {0.0f, 0.0f};
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float p = expf(s[nt][e] - mu[e >> 1]);  // masked: exp(-inf) = 0
                s[nt][e] = p;
                rs[e >> 1] += p;
            }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            rs[r] += __shfl_xor_sync(0xffffffffu, rs[r], 1);
            rs[r] += __shfl_xor_sync(0xffffffffu, rs[r], 2);
            l[r] = l[r] * corr[r] + rs[r];
        }
#pragma unroll
        for (int nd = 0; nd < ND; ++nd)
#pragma unroll
            for (int e = 0; e < 4; ++e) o[nd][e] *= corr[e >> 1];
        // O += P V: P (16 x 64 keys) as A over k = keys, B[k = key][n = d] = V[key][d].
#pragma unroll
        for (int kk = 0; kk < TC_BKF / 16; ++kk) {
            u32 a[4];
            tc_c_to_a(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
            for (int nd = 0; nd < ND; ++nd) {
                u32 b[2];
                tc_frag_b_cols(b, Vs, S, 16 * kk, 8 * nd, g, t);
                mma_bf16_16816(o[nd], a, b);
            }
        }
    }

    if (qw >= len) return;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int i = qw + g + 8 * r;
        const bool in = i < len;  // then l >= 1: key i itself is visible
        const float inv = in ? 1.0f / l[r] : 0.0f;
        const size_t row = (size_t)(row0 + (in ? i : 0));
        float dsv = 0.0f;
#pragma unroll
        for (int nd = 0; nd < ND; ++nd) {
            const int d = h * D + 8 * nd + 2 * t;
            const float o0 = o[nd][2 * r] * inv, o1 = o[nd][2 * r + 1] * inv;
            if (STATS) {
                if (in) {
                    const u32 w = *(const u32*)(dz + row * qrw + d);
                    dsv = fmaf(bf16lo(w), o0, dsv);
                    dsv = fmaf(bf16hi(w), o1, dsv);
                }
            } else if (in) {
                *(u32*)(z + row * qrw + d) = pack_bf16x2(o0, o1);
            }
        }
        if (STATS) {
            dsv += __shfl_xor_sync(0xffffffffu, dsv, 1);
            dsv += __shfl_xor_sync(0xffffffffu, dsv, 2);
        }
        if (in && t == 0) {
            lse[row * H + h] = m[r] + logf(l[r]);
            if (STATS) dsum[row * H + h] = dsv;
        }
    }
}

// dq_i = scale * sum_j P_ij (dP_ij - dsum_i) k_j with P = exp(s - lse), dP_ij = dz_i . v_j.
template <int D>
__device__ __forceinline__ void tc_dq(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k,
                                      const bf16_t* __restrict__ v, const bf16_t* __restrict__ dz,
                                      const float* __restrict__ lse,
                                      const float* __restrict__ dsum, bf16_t* __restrict__ dq,
                                      const int* __restrict__ tiles, int H, int G, int window) {
    constexpr int S = D + 8, KD = D / 16, ND = D / 8, NT = TC_BKD / 8;
    // 64 rows each: the Q and dZ tiles pass through them first; key tiles use 32 rows.
    __shared__ __align__(16) bf16_t Ks[TC_BQ * S];
    __shared__ __align__(16) bf16_t Vs[TC_BQ * S];
    const int h = blockIdx.y, grp = h / (H / G);
    const int row0 = tiles[3 * blockIdx.x], i0 = tiles[3 * blockIdx.x + 1];
    const int len = tiles[3 * blockIdx.x + 2];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int qw = i0 + 16 * warp;
    const int qrw = H * D, kvw = G * D;
    const float scale = 1.0f / sqrtf((float)D);

    tc_load_rows<D>(Ks, q, qrw, h * D, row0, i0, TC_BQ, len);
    tc_load_rows<D>(Vs, dz, qrw, h * D, row0, i0, TC_BQ, len);
    __syncthreads();
    u32 qa[KD][4], za[KD][4];
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) {
        tc_frag_a(qa[kk], Ks, S, 16 * warp, 16 * kk, g, t);
        tc_frag_a(za[kk], Vs, S, 16 * warp, 16 * kk, g, t);
    }
    float L[2], Dd[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int i = qw + g + 8 * r;
        L[r] = i < len ? lse[(size_t)(row0 + i) * H + h] : 0.0f;
        Dd[r] = i < len ? dsum[(size_t)(row0 + i) * H + h] : 0.0f;
    }
    float acc[ND][4];
#pragma unroll
    for (int nd = 0; nd < ND; ++nd) acc[nd][0] = acc[nd][1] = acc[nd][2] = acc[nd][3] = 0.0f;

    const int hi = min(len - 1, i0 + TC_BQ - 1);
    const int lo = window > 0 ? max(0, i0 + 1 - window) : 0;
    for (int kb = lo; kb <= hi; kb += TC_BKD) {
        __syncthreads();
        tc_load_rows<D>(Ks, k, kvw, grp * D, row0, kb, TC_BKD, len);
        tc_load_rows<D>(Vs, v, kvw, grp * D, row0, kb, TC_BKD, len);
        __syncthreads();
        if (qw >= len || kb > qw + 15) continue;
        if (window > 0 && qw - (kb + TC_BKD - 1) >= window) continue;

        float s[NT][4], dp[NT][4];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KD; ++kk) {
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                u32 b[2];
                tc_frag_b_rows(b, Ks, S, 8 * nt, 16 * kk, g, t);
                mma_bf16_16816(s[nt], qa[kk], b);
                tc_frag_b_rows(b, Vs, S, 8 * nt, 16 * kk, g, t);
                mma_bf16_16816(dp[nt], za[kk], b);
            }
        }
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = e >> 1;
                const int i = qw + g + 8 * r, j = kb + 8 * nt + 2 * t + (e & 1);
                float ds = 0.0f;
                if (tc_visible(i, j, len, window))
                    ds = expf(s[nt][e] * scale - L[r]) * (dp[nt][e] - Dd[r]);
                s[nt][e] = ds;
            }
        // dQ += dS K: dS (16 x 32 keys) as A over k = keys, B[k = key][n = d] = K[key][d].
#pragma unroll
        for (int kk = 0; kk < TC_BKD / 16; ++kk) {
            u32 a[4];
            tc_c_to_a(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
            for (int nd = 0; nd < ND; ++nd) {
                u32 b[2];
                tc_frag_b_cols(b, Ks, S, 16 * kk, 8 * nd, g, t);
                mma_bf16_16816(acc[nd], a, b);
            }
        }
    }

    if (qw >= len) return;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int i = qw + g + 8 * r;
        if (i >= len) continue;
        bf16_t* out = dq + (size_t)(row0 + i) * qrw + h * D;
#pragma unroll
        for (int nd = 0; nd < ND; ++nd)
            *(u32*)(out + 8 * nd + 2 * t) =
                pack_bf16x2(acc[nd][2 * r] * scale, acc[nd][2 * r + 1] * scale);
    }
}

// dk_j = scale * sum_(i, h in group) dS_ij q_i, dv_j = sum_(i, h in group) P_ij dz_i, computed
// transposed: each warp holds S^T = K Q^T for its 16 keys x 16 queries.
template <int D>
__device__ __forceinline__ void tc_dkv(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k,
                                       const bf16_t* __restrict__ v,
                                       const bf16_t* __restrict__ dz,
                                       const float* __restrict__ lse,
                                       const float* __restrict__ dsum, bf16_t* __restrict__ dk,
                                       bf16_t* __restrict__ dv, const int* __restrict__ tiles,
                                       int H, int G, int window) {
    constexpr int S = D + 8, KD = D / 16, ND = D / 8;
    __shared__ __align__(16) bf16_t Ks[TC_BKV * S];
    __shared__ __align__(16) bf16_t Vs[TC_BKV * S];
    __shared__ __align__(16) bf16_t Qs[TC_QV * S];
    __shared__ __align__(16) bf16_t Zs[TC_QV * S];
    __shared__ float Ls[TC_QV], Ds[TC_QV];
    const int kvg = blockIdx.y, group = H / G;
    const int row0 = tiles[3 * blockIdx.x], j0 = tiles[3 * blockIdx.x + 1];
    const int len = tiles[3 * blockIdx.x + 2];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int kw = j0 + 16 * warp;  // first key of this warp
    const int qrw = H * D, kvw = G * D;
    const float scale = 1.0f / sqrtf((float)D);

    tc_load_rows<D>(Ks, k, kvw, kvg * D, row0, j0, TC_BKV, len);
    tc_load_rows<D>(Vs, v, kvw, kvg * D, row0, j0, TC_BKV, len);

    float ak[ND][4], av[ND][4];
#pragma unroll
    for (int nd = 0; nd < ND; ++nd)
#pragma unroll
        for (int e = 0; e < 4; ++e) ak[nd][e] = av[nd][e] = 0.0f;

    // Queries that see some key of the CTA: j0 .. last key + window - 1, within the span.
    const int i_hi = window > 0 ? min(len - 1, j0 + TC_BKV - 1 + window - 1) : len - 1;
    for (int hh = 0; hh < group; ++hh) {
        const int h = kvg * group + hh;
        for (int ib = j0; ib <= i_hi; ib += TC_QV) {
            __syncthreads();  // previous query tile consumed
            tc_load_rows<D>(Qs, q, qrw, h * D, row0, ib, TC_QV, len);
            tc_load_rows<D>(Zs, dz, qrw, h * D, row0, ib, TC_QV, len);
            if (threadIdx.x < TC_QV) {
                const int i = ib + threadIdx.x;
                const size_t r = (size_t)(row0 + i) * H + h;
                Ls[threadIdx.x] = i < len ? lse[r] : 0.0f;
                Ds[threadIdx.x] = i < len ? dsum[r] : 0.0f;
            }
            __syncthreads();
            if (kw >= len || ib + TC_QV - 1 < kw) continue;
            if (window > 0 && ib - (kw + 15) >= window) continue;

            float st[2][4], dpt[2][4];
#pragma unroll
            for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) st[nt][e] = dpt[nt][e] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < KD; ++kk) {
                u32 a[4], b[2];
                tc_frag_a(a, Ks, S, 16 * warp, 16 * kk, g, t);
#pragma unroll
                for (int nt = 0; nt < 2; ++nt) {
                    tc_frag_b_rows(b, Qs, S, 8 * nt, 16 * kk, g, t);
                    mma_bf16_16816(st[nt], a, b);
                }
                tc_frag_a(a, Vs, S, 16 * warp, 16 * kk, g, t);
#pragma unroll
                for (int nt = 0; nt < 2; ++nt) {
                    tc_frag_b_rows(b, Zs, S, 8 * nt, 16 * kk, g, t);
                    mma_bf16_16816(dpt[nt], a, b);
                }
            }
#pragma unroll
            for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int j = kw + g + 8 * (e >> 1);    // key: the row of S^T
                    const int qi = 8 * nt + 2 * t + (e & 1);  // query in the tile: the column
                    float p = 0.0f, ds = 0.0f;
                    if (tc_visible(ib + qi, j, len, window)) {
                        p = expf(st[nt][e] * scale - Ls[qi]);
                        ds = p * (dpt[nt][e] - Ds[qi]);
                    }
                    st[nt][e] = p;
                    dpt[nt][e] = ds;
                }
            // dV += P^T dZ, dK += dS^T Q: A over k = the 16 queries, B[k = query][n = d].
            u32 ap[4], ads[4];
            tc_c_to_a(ap, st[0], st[1]);
            tc_c_to_a(ads, dpt[0], dpt[1]);
#pragma unroll
            for (int nd = 0; nd < ND; ++nd) {
                u32 b[2];
                tc_frag_b_cols(b, Zs, S, 0, 8 * nd, g, t);
                mma_bf16_16816(av[nd], ap, b);
                tc_frag_b_cols(b, Qs, S, 0, 8 * nd, g, t);
                mma_bf16_16816(ak[nd], ads, b);
            }
        }
    }

    if (kw >= len) return;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int j = kw + g + 8 * r;
        if (j >= len) continue;
        const size_t off = (size_t)(row0 + j) * kvw + kvg * D;
#pragma unroll
        for (int nd = 0; nd < ND; ++nd) {
            const int d = 8 * nd + 2 * t;
            *(u32*)(dk + off + d) = pack_bf16x2(ak[nd][2 * r] * scale, ak[nd][2 * r + 1] * scale);
            *(u32*)(dv + off + d) = pack_bf16x2(av[nd][2 * r], av[nd][2 * r + 1]);
        }
    }
}

// ---- Entry points: grid (tiles, H) for fwd / stats / dq, (tiles, G) for dkv; 128 threads.
#define TC_FWD_ARGS                                                                        \
    const bf16_t *__restrict__ q, const bf16_t *__restrict__ k, const bf16_t *__restrict__ v, \
        bf16_t *__restrict__ z, float *__restrict__ lse, const int *__restrict__ tiles,      \
        int n_heads, int n_kv_heads, int window
#define TC_STATS_ARGS                                                                      \
    const bf16_t *__restrict__ q, const bf16_t *__restrict__ k, const bf16_t *__restrict__ v, \
        const bf16_t *__restrict__ dz, float *__restrict__ lse, float *__restrict__ dsum,    \
        const int *__restrict__ tiles, int n_heads, int n_kv_heads, int window
#define TC_DQ_ARGS                                                                         \
    const bf16_t *__restrict__ q, const bf16_t *__restrict__ k, const bf16_t *__restrict__ v, \
        const bf16_t *__restrict__ dz, const float *__restrict__ lse,                        \
        const float *__restrict__ dsum, bf16_t *__restrict__ dq,                             \
        const int *__restrict__ tiles, int n_heads, int n_kv_heads, int window
#define TC_DKV_ARGS                                                                        \
    const bf16_t *__restrict__ q, const bf16_t *__restrict__ k, const bf16_t *__restrict__ v, \
        const bf16_t *__restrict__ dz, const float *__restrict__ lse,                        \
        const float *__restrict__ dsum, bf16_t *__restrict__ dk, bf16_t *__restrict__ dv,    \
        const int *__restrict__ tiles, int n_heads, int n_kv_heads, int window

extern "C" __global__ void __launch_bounds__(128, 1) attn_tc_fwd_d64(TC_FWD_ARGS) {
    tc_fwd<64, false>(q, k, v, z, lse, nullptr, nullptr, tiles, n_heads, n_kv_heads, window);
}
extern "C" __global__ void __launch_bounds__(128) attn_tc_fwd_d128(TC_FWD_ARGS) {
    tc_fwd<128, false>(q, k, v, z, lse, nullptr, nullptr, tiles, n_heads, n_kv_heads, window);
}
extern "C" __global__ void __launch_bounds__(128, 1) attn_tc_stats_d64(TC_STATS_ARGS) {
    tc_fwd<64, true>(q, k, v, nullptr, lse, dz, dsum, tiles, n_heads, n_kv_heads, window);
}
extern "C" __global__ void __launch_bounds__(128) attn_tc_stats_d128(TC_STATS_ARGS) {
    tc_fwd<128, true>(q, k, v, nullptr, lse, dz, dsum, tiles, n_heads, n_kv_heads, window);
}
extern "C" __global__ void __launch_bounds__(128) attn_tc_dq_d64(TC_DQ_ARGS) {
    tc_dq<64>(q, k, v, dz, lse, dsum, dq, tiles, n_heads, n_kv_heads, window);
}
extern "C" __global__ void __launch_bounds__(128) attn_tc_dq_d128(TC_DQ_ARGS) {
    tc_dq<128>(q, k, v, dz, lse, dsum, dq, tiles, n_heads, n_kv_heads, window);
}
extern "C" __global__ void __launch_bounds__(128) attn_tc_dkv_d64(TC_DKV_ARGS) {
    tc_dkv<64>(q, k, v, dz, lse, dsum, dk, dv, tiles, n_heads, n_kv_heads, window);
}
extern "C" __global__ void __launch_bounds__(128) attn_tc_dkv_d128(TC_DKV_ARGS) {
    tc_dkv<128>(q, k, v, dz, lse, dsum, dk, dv, tiles, n_heads, n_kv_heads, window);
}
