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
