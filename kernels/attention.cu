// Causal grouped-query attention, forward (flash style: online softmax, no [T, T] matrix).
//
// q [n, H*D], k/v [rows, G*D] (the call's own k/v, or a KV cache), bf16. A sequence span
// (see backend::SeqSpan) has query rows q_start + i, i < q_len, at absolute positions
// pos0 + i; its keys are rows kv_start + j, except that with kv_new >= 0 the positions
// j >= pos0 (the call's own tokens) are rows kv_new + (j - pos0) (a shared prefix kept
// apart from each continuation's keys). Query i sees key j iff j <= pos0 + i and,
// with a sliding window W, pos0 + i - j < W. Head h reads key/value group h / (H / G).
//
// Outputs: z [n, H*D] bf16 (TransformerLens' hook_z layout) and lse [n, H] f32, the
// natural log of each softmax denominator, max included, so that p_ij = exp(s_ij - lse_i).
//
// Work split: the host cuts every span into tiles of ATT_QPB consecutive queries and passes
// them as 6 ints each {q_start, i0, nq, kv_start, pos0, kv_new}; grid = (tiles, H), one warp per
// query. A block streams its key range through shared memory 32 keys at a time; lane j
// scores key j of the tile (no shuffles for dot products), then the warp rescales its
// running output (each lane owns dims 2*lane + 64*p, p < ATT_MAXP) and adds p_j * v_j.
// Scores are f32: s = (q . k) / sqrt(D), exp by expf (accurate, not __expf) for parity with
// the f32 oracle. D must be even and at most 64 * ATT_MAXP = 256.
#include "common.cuh"

#define ATT_QPB 4
#define ATT_MAXP 4
#define ATT_MAXD (64 * ATT_MAXP)
#define ATT_KT 32

extern "C" __global__ void __launch_bounds__(ATT_QPB * 32)
    flash_attn_fwd(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k,
                   const bf16_t* __restrict__ v, bf16_t* __restrict__ z,
                   float* __restrict__ lse, const int* __restrict__ tiles, int n_heads,
                   int n_kv_heads, int head_dim, int window /* 0 = none */) {
    const int D = head_dim, H = n_heads, G = n_kv_heads;
    const int h = blockIdx.y, grp = h / (H / G);
    const int* tl = tiles + 6 * blockIdx.x;
    const int q_start = tl[0], i0 = tl[1], nq = tl[2], kv_start = tl[3], pos0 = tl[4];
    const int kv_new = tl[5];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const bool active = warp < nq;
    const int pos = pos0 + i0 + warp;  // this warp's query position
    const int lo = (active && window > 0) ? max(0, pos + 1 - window) : 0;

    // Key range of the whole block.
    const int hi_blk = pos0 + i0 + nq - 1;
    const int lo_blk = window > 0 ? max(0, pos0 + i0 + 1 - window) : 0;

    // K tile row stride D + 2 halves: (D + 2) / 2 words is odd when D % 4 == 0, so lane j
    // reading word d/2 of row j hits bank j * odd + const: conflict-free.
    __shared__ __align__(16) bf16_t Ks[ATT_KT * (ATT_MAXD + 2)];
    __shared__ __align__(16) bf16_t Vs[ATT_KT * ATT_MAXD];
    __shared__ float Qs[ATT_QPB][ATT_MAXD];
    const int KS = D + 2;
    const float scale = 1.0f / sqrtf((float)D);

    if (active) {
        const bf16_t* qr = q + (size_t)(q_start + i0 + warp) * H * D + h * D;
        for (int d = lane; d < D; d += 32) Qs[warp][d] = bf16_to_f32(qr[d]);
    }

    float m_run = -INFINITY, l_run = 0.0f;
    float acc[ATT_MAXP][2];
#pragma unroll
    for (int p = 0; p < ATT_MAXP; ++p) acc[p][0] = acc[p][1] = 0.0f;

    const int row_w = G * D;  // k/v row width
    const int half = D >> 1;
    for (int jb = lo_blk; jb <= hi_blk; jb += ATT_KT) {
        const int nk = min(ATT_KT, hi_blk - jb + 1);
        __syncthreads();  // previous tile fully consumed (and Qs written, first time)
        for (int e = threadIdx.x; e < nk * half; e += blockDim.x) {
            int r = e / half, c = (e - r * half) * 2;
            const int jj = jb + r;
            const int krow = (kv_new >= 0 && jj >= pos0) ? kv_new + (jj - pos0) : kv_start + jj;
            size_t src = (size_t)krow * row_w + grp * D + c;
            *(u32*)&Ks[r * KS + c] = *(const u32*)(k + src);
            *(u32*)&Vs[r * D + c] = *(const u32*)(v + src);
        }
        __syncthreads();
        if (!active) continue;

        const int j = jb + lane;
        const bool valid = lane < nk && j <= pos && j >= lo;
        float s = -INFINITY;
        if (valid) {
            float dot = 0.0f;
            const bf16_t* kr = &Ks[lane * KS];
            for (int d = 0; d < D; d += 2) {
                u32 kw = *(const u32*)(kr + d);
                dot = fmaf(Qs[warp][d], bf16lo(kw), dot);
                dot = fmaf(Qs[warp][d + 1], bf16hi(kw), dot);
            }
            s = dot * scale;
        }
        const float m_tile = warp_max(s);
        if (m_tile == -INFINITY) continue;  // no visible key here (uniform over the warp)
        const float m_new = fmaxf(m_run, m_tile);
        const float corr = expf(m_run - m_new);  // 0 on the first visible tile
        const float pj = valid ? expf(s - m_new) : 0.0f;
        l_run = l_run * corr + warp_sum(pj);
        m_run = m_new;
#pragma unroll
        for (int p = 0; p < ATT_MAXP; ++p) {
            acc[p][0] *= corr;
            acc[p][1] *= corr;
        }
        for (int jj = 0; jj < nk; ++jj) {
            const float pb = __shfl_sync(0xffffffffu, pj, jj);
            if (pb == 0.0f) continue;  // uniform: pb is the same in every lane
#pragma unroll
            for (int p = 0; p < ATT_MAXP; ++p) {
                const int d = 2 * (lane + 32 * p);
                if (d < D) {
                    u32 vw = *(const u32*)&Vs[jj * D + d];
                    acc[p][0] = fmaf(pb, bf16lo(vw), acc[p][0]);
                    acc[p][1] = fmaf(pb, bf16hi(vw), acc[p][1]);
                }
            }
        }
    }

    if (active) {
        const int row = q_start + i0 + warp;
        const float inv = 1.0f / l_run;  // l_run >= 1: key `pos` itself is always visible
        bf16_t* zr = z + (size_t)row * H * D + h * D;
#pragma unroll
        for (int p = 0; p < ATT_MAXP; ++p) {
            const int d = 2 * (lane + 32 * p);
            if (d < D) *(u32*)(zr + d) = pack_bf16x2(acc[p][0] * inv, acc[p][1] * inv);
        }
        if (lane == 0) lse[(size_t)row * H + h] = m_run + logf(l_run);
    }
}

// Probabilities of one head of one span, from the lse of flash_attn_fwd:
// probs [q_len, kv_len] f32 with kv_len = pos0 + q_len, p_ij = exp(s_ij - lse_i) where
// key j is visible and exactly 0 elsewhere (every element is written).
// Grid: q_len blocks (one query row each); block: any multiple of 32 threads.
extern "C" __global__ void attn_probs(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k,
                                      const float* __restrict__ lse, float* __restrict__ probs,
                                      int q_start, int q_len, int kv_start, int pos0,
                                      int kv_new /* -1: none */, int head,
                                      int n_heads, int n_kv_heads, int head_dim, int window) {
    const int D = head_dim, H = n_heads, G = n_kv_heads;
    const int grp = head / (H / G);
    const int i = blockIdx.x;
    const int pos = pos0 + i, kv_len = pos0 + q_len;
    const int lo = window > 0 ? max(0, pos + 1 - window) : 0;
    const float scale = 1.0f / sqrtf((float)D);
    __shared__ float Qs[ATT_MAXD];
    const bf16_t* qr = q + (size_t)(q_start + i) * H * D + head * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) Qs[d] = bf16_to_f32(qr[d]);
    __syncthreads();
    const float l = lse[(size_t)(q_start + i) * H + head];
    for (int j = threadIdx.x; j < kv_len; j += blockDim.x) {
        float p = 0.0f;
        if (j >= lo && j <= pos) {
            const int krow = (kv_new >= 0 && j >= pos0) ? kv_new + (j - pos0) : kv_start + j;
            const bf16_t* kr = k + (size_t)krow * G * D + grp * D;
            float dot = 0.0f;
            for (int d = 0; d < D; d += 2) {
                u32 kw = *(const u32*)(kr + d);
                dot = fmaf(Qs[d], bf16lo(kw), dot);
                dot = fmaf(Qs[d + 1], bf16hi(kw), dot);
            }
            p = expf(dot * scale - l);
        }
        probs[(size_t)i * kv_len + j] = p;
    }
}

// ---- backward ----

// Causal grouped-query attention, backward, for packed whole sequences (SeqSpan with
// pos0 = 0 and no kv_new): span s has query rows q_start + i and key/value rows
// kv_start + i, i < q_len. Query i sees key j iff j <= i and (window == 0 || i - j < window);
// head h reads key/value group h / (H / G). q, dz, dq [n, H*D]; k, v, dk, dv [rows, G*D];
// all bf16, math in f32. D even, <= AB_MAXD.
//
// With s_ij = scale * q_i.k_j (scale = 1/sqrt(D)), P = softmax_j(s), dP_ij = dz_i.v_j and
// D_i = sum_j P_ij dP_ij:
//   dS_ij = P_ij (dP_ij - D_i),  dq_i = scale sum_j dS_ij k_j,
//   dk_j = scale sum_(i, h in group) dS_ij q_i,  dv_j = sum_(i, h in group) P_ij dz_i.
//
// attn_bwd_dq (query-major, laid out like flash_attn_fwd): one warp per (query, head), pass A
// computes lse_i and D_i online, pass B recomputes P_ij = exp(s_ij - lse_i) and sums dq_i.
// Writes dq and lse, D [n, H] f32 for the second kernel.
// attn_bwd_dkv (key-major): one warp per (key, kv group); loops over the group's heads and
// the queries that see the key, recomputing P from lse, so the group's sum needs no atomics.
// s and dP are the same fmaf chains (d = 0, 1, ... D-1) in both kernels, so both see the
// same P bit for bit.

#define AB_WPB 4                   // warps per block: queries (dq) or keys (dkv)
#define AB_MAXP 4                  // each lane owns dims 2*lane + 64*p, p < AB_MAXP
#define AB_MAXD (64 * AB_MAXP)
#define AB_T 32                    // rows per shared-memory tile (keys or queries)
#define AB_S (AB_MAXD + 2)         // allocated row stride of a bf16 tile

// f32 vector a[D] . bf16 row b[D] (b 4-byte aligned), fmaf in order d = 0 .. D-1.
__device__ __forceinline__ float dot_f32_bf16(const float* a, const bf16_t* b, int D) {
    float dot = 0.0f;
    for (int d = 0; d < D; d += 2) {
        const u32 w = *(const u32*)(b + d);
        dot = fmaf(a[d], bf16lo(w), dot);
        dot = fmaf(a[d + 1], bf16hi(w), dot);
    }
    return dot;
}

// Rows row0 .. row0 + nr - 1, columns col0 .. col0 + D - 1 of x and y (row width row_w) into
// the tiles Xs, Ys at row stride D + 2 halves ((D + 2) / 2 words is odd when D % 4 == 0,
// so lane r reading word d/2 of row r is bank-conflict-free). Whole block cooperates.
__device__ __forceinline__ void load_tile2(bf16_t* Xs, bf16_t* Ys, const bf16_t* __restrict__ x,
                                           const bf16_t* __restrict__ y, int row0, int nr,
                                           int row_w, int col0, int D) {
    const int half = D >> 1, S = D + 2;
    for (int e = threadIdx.x; e < nr * half; e += blockDim.x) {
        const int r = e / half, c = (e - r * half) * 2;
        const size_t src = (size_t)(row0 + r) * row_w + col0 + c;
        *(u32*)&Xs[r * S + c] = *(const u32*)(x + src);
        *(u32*)&Ys[r * S + c] = *(const u32*)(y + src);
    }
}

// tiles: 4 ints per block {q_start, i0, nq, kv_start}: queries i0 .. i0 + nq - 1 (nq <=
// AB_WPB) of a span. Grid (tiles, H), block AB_WPB * 32.
extern "C" __global__ void __launch_bounds__(AB_WPB * 32)
    attn_bwd_dq(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k,
                const bf16_t* __restrict__ v, const bf16_t* __restrict__ dz,
                bf16_t* __restrict__ dq, float* __restrict__ lse, float* __restrict__ dsum,
                const int* __restrict__ tiles, int n_heads, int n_kv_heads, int head_dim,
                int window /* 0 = none */) {
    const int D = head_dim, H = n_heads, G = n_kv_heads;
    const int h = blockIdx.y, grp = h / (H / G);
    const int* tl = tiles + 4 * blockIdx.x;
    const int q_start = tl[0], i0 = tl[1], nq = tl[2], kv_start = tl[3];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const bool active = warp < nq;
    const int pos = i0 + warp;  // this warp's query (position in the span)
    const int lo = (active && window > 0) ? max(0, pos + 1 - window) : 0;
    const int hi_blk = i0 + nq - 1;
    const int lo_blk = window > 0 ? max(0, i0 + 1 - window) : 0;

    __shared__ __align__(16) bf16_t Ks[AB_T * AB_S];
    __shared__ __align__(16) bf16_t Vs[AB_T * AB_S];
    __shared__ float Qs[AB_WPB][AB_MAXD];
    __shared__ float Zs[AB_WPB][AB_MAXD];
    const int S = D + 2, row_w = G * D;
    const float scale = 1.0f / sqrtf((float)D);
    const size_t qoff = (size_t)(q_start + pos) * H * D + (size_t)h * D;  // used when active

    if (active) {
        for (int d = lane; d < D; d += 32) {
            Qs[warp][d] = bf16_to_f32(q[qoff + d]);
            Zs[warp][d] = bf16_to_f32(dz[qoff + d]);
        }
    }

    // Pass A: lse = m + log(l) and D = sum_j P_j dP_j, both online over key tiles.
    float m_run = -INFINITY, l_run = 0.0f, d_run = 0.0f;
    for (int jb = lo_blk; jb <= hi_blk; jb += AB_T) {
        const int nk = min(AB_T, hi_blk - jb + 1);
        __syncthreads();  // previous tile consumed (and Qs/Zs written, first time)
        load_tile2(Ks, Vs, k, v, kv_start + jb, nk, row_w, grp * D, D);
        __syncthreads();
        if (!active) continue;
        const int j = jb + lane;
        const bool valid = lane < nk && j <= pos && j >= lo;
        float s = -INFINITY, dp = 0.0f;
        if (valid) {
            s = dot_f32_bf16(Qs[warp], &Ks[lane * S], D) * scale;
            dp = dot_f32_bf16(Zs[warp], &Vs[lane * S], D);
        }
        const float m_tile = warp_max(s);
        if (m_tile == -INFINITY) continue;  // no visible key in this tile (warp-uniform)
        const float m_new = fmaxf(m_run, m_tile);
        const float corr = expf(m_run - m_new);  // 0 on the first visible tile
        const float pj = valid ? expf(s - m_new) : 0.0f;
        l_run = l_run * corr + warp_sum(pj);
        d_run = d_run * corr + warp_sum(pj * dp);
        m_run = m_new;
    }
    // Active warps: l_run >= 1 (key `pos` itself is always visible).
    const float L = active ? m_run + logf(l_run) : 0.0f;
    const float Di = active ? d_run / l_run : 0.0f;

    // Pass B: dq = scale * sum_j P_j (dP_j - D) k_j.
    float acc[AB_MAXP][2];
#pragma unroll
    for (int p = 0; p < AB_MAXP; ++p) acc[p][0] = acc[p][1] = 0.0f;
    for (int jb = lo_blk; jb <= hi_blk; jb += AB_T) {
        const int nk = min(AB_T, hi_blk - jb + 1);
        __syncthreads();
        load_tile2(Ks, Vs, k, v, kv_start + jb, nk, row_w, grp * D, D);
        __syncthreads();
        if (!active) continue;
        const int j = jb + lane;
        const bool valid = lane < nk && j <= pos && j >= lo;
        float ds = 0.0f;
        if (valid) {
            const float s = dot_f32_bf16(Qs[warp], &Ks[lane * S], D) * scale;
            const float dp = dot_f32_bf16(Zs[warp], &Vs[lane * S], D);
            ds = expf(s - L) * (dp - Di);
        }
        for (int jj = 0; jj < nk; ++jj) {
            const float db = __shfl_sync(0xffffffffu, ds, jj);
            if (db == 0.0f) continue;  // uniform: db is the same in every lane
#pragma unroll
            for (int p = 0; p < AB_MAXP; ++p) {
                const int d = 2 * (lane + 32 * p);
                if (d < D) {
                    const u32 kw = *(const u32*)&Ks[jj * S + d];
                    acc[p][0] = fmaf(db, bf16lo(kw), acc[p][0]);
                    acc[p][1] = fmaf(db, bf16hi(kw), acc[p][1]);
                }
            }
        }
    }

    if (active) {
        bf16_t* out = dq + qoff;
#pragma unroll
        for (int p = 0; p < AB_MAXP; ++p) {
            const int d = 2 * (lane + 32 * p);
            if (d < D) *(u32*)(out + d) = pack_bf16x2(acc[p][0] * scale, acc[p][1] * scale);
        }
        if (lane == 0) {
            const size_t r = (size_t)(q_start + pos) * H + h;
            lse[r] = L;
            dsum[r] = Di;
        }
    }
}

// tiles: 5 ints per block {q_start, j0, nk, kv_start, q_len}: keys j0 .. j0 + nk - 1 (nk <=
// AB_WPB) of a span of q_len tokens. Grid (tiles, G), block AB_WPB * 32. lse, dsum from
// attn_bwd_dq.
extern "C" __global__ void __launch_bounds__(AB_WPB * 32)
    attn_bwd_dkv(const bf16_t* __restrict__ q, const bf16_t* __restrict__ k,
                 const bf16_t* __restrict__ v, const bf16_t* __restrict__ dz,
                 const float* __restrict__ lse, const float* __restrict__ dsum,
                 bf16_t* __restrict__ dk, bf16_t* __restrict__ dv, const int* __restrict__ tiles,
                 int n_heads, int n_kv_heads, int head_dim, int window /* 0 = none */) {
    const int D = head_dim, H = n_heads, G = n_kv_heads;
    const int g = blockIdx.y, group = H / G;
    const int* tl = tiles + 5 * blockIdx.x;
    const int q_start = tl[0], j0 = tl[1], nk = tl[2], kv_start = tl[3], q_len = tl[4];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const bool active = warp < nk;
    const int j = j0 + warp;  // this warp's key (position in the span)
    // Queries that see some key of the block: j0 .. last key + window - 1, within the span.
    const int i_hi = window > 0 ? min(q_len - 1, j0 + nk - 1 + window - 1) : q_len - 1;

    __shared__ __align__(16) bf16_t Qs[AB_T * AB_S];
    __shared__ __align__(16) bf16_t Zs[AB_T * AB_S];
    __shared__ float Kf[AB_WPB][AB_MAXD];
    __shared__ float Vf[AB_WPB][AB_MAXD];
    __shared__ float Ls[AB_T], Ds[AB_T];
    const int S = D + 2;
    const float scale = 1.0f / sqrtf((float)D);
    const size_t koff = (size_t)(kv_start + j) * G * D + (size_t)g * D;  // used when active

    if (active) {
        for (int d = lane; d < D; d += 32) {
            Kf[warp][d] = bf16_to_f32(k[koff + d]);
            Vf[warp][d] = bf16_to_f32(v[koff + d]);
        }
    }

    float ak[AB_MAXP][2], av[AB_MAXP][2];
#pragma unroll
    for (int p = 0; p < AB_MAXP; ++p) ak[p][0] = ak[p][1] = av[p][0] = av[p][1] = 0.0f;

    for (int hh = 0; hh < group; ++hh) {
        const int h = g * group + hh;
        for (int ib = j0; ib <= i_hi; ib += AB_T) {
            const int ni = min(AB_T, i_hi - ib + 1);
            __syncthreads();  // previous tile consumed (and Kf/Vf written, first time)
            load_tile2(Qs, Zs, q, dz, q_start + ib, ni, H * D, h * D, D);
            if (threadIdx.x < ni) {
                const size_t r = (size_t)(q_start + ib + threadIdx.x) * H + h;
                Ls[threadIdx.x] = lse[r];
                Ds[threadIdx.x] = dsum[r];
            }
            __syncthreads();
            if (!active) continue;
            const int i = ib + lane;
            const bool valid = lane < ni && i >= j && (window <= 0 || i - j < window);
            float p = 0.0f, ds = 0.0f;
            if (valid) {
                const float s = dot_f32_bf16(Kf[warp], &Qs[lane * S], D) * scale;
                p = expf(s - Ls[lane]);
                const float dp = dot_f32_bf16(Vf[warp], &Zs[lane * S], D);
                ds = p * (dp - Ds[lane]);
            }
            for (int ii = 0; ii < ni; ++ii) {
                const float pb = __shfl_sync(0xffffffffu, p, ii);
                const float db = __shfl_sync(0xffffffffu, ds, ii);
                if (pb == 0.0f && db == 0.0f) continue;  // uniform over the warp
#pragma unroll
                for (int pp = 0; pp < AB_MAXP; ++pp) {
                    const int d = 2 * (lane + 32 * pp);
                    if (d < D) {
                        const u32 qw = *(const u32*)&Qs[ii * S + d];
                        const u32 zw = *(const u32*)&Zs[ii * S + d];
                        ak[pp][0] = fmaf(db, bf16lo(qw), ak[pp][0]);
                        ak[pp][1] = fmaf(db, bf16hi(qw), ak[pp][1]);
                        av[pp][0] = fmaf(pb, bf16lo(zw), av[pp][0]);
                        av[pp][1] = fmaf(pb, bf16hi(zw), av[pp][1]);
                    }
                }
            }
        }
    }

    if (active) {
#pragma unroll
        for (int p = 0; p < AB_MAXP; ++p) {
            const int d = 2 * (lane + 32 * p);
            if (d < D) {
                *(u32*)(dk + koff + d) = pack_bf16x2(ak[p][0] * scale, ak[p][1] * scale);
                *(u32*)(dv + koff + d) = pack_bf16x2(av[p][0], av[p][1]);
            }
        }
    }
}
