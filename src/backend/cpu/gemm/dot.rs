//! The dot-product GEMM for few rows (decode steps, single-position sweeps): register tiles
//! over `x [n, k]` and `W [m, k]` rows, tasks of row blocks by column blocks (AVX-512).

#![cfg(target_arch = "x86_64")]

use super::common::OutPtr;
use rayon::prelude::*;

/// Output rows (tokens) and columns (features) per parallel task.
const ROW_BLOCK: usize = 64;
const COL_BLOCK: usize = 64;

#[cfg(target_arch = "x86_64")]
pub(super) fn matmul_t_blocked(
    x: &[f32],
    w: &[f32],
    n: usize,
    k: usize,
    m: usize,
    out: &mut [f32],
) {
    let row_blocks = n.div_ceil(ROW_BLOCK);
    let col_blocks = m.div_ceil(COL_BLOCK);
    let ptr = OutPtr(out.as_mut_ptr());
    (0..row_blocks * col_blocks).into_par_iter().for_each(|t| {
        let (rb, cb) = (t % row_blocks, t / row_blocks);
        let (r0, c0) = (rb * ROW_BLOCK, cb * COL_BLOCK);
        let (r1, c1) = ((r0 + ROW_BLOCK).min(n), (c0 + COL_BLOCK).min(m));
        let p = ptr;
        // SAFETY: avx512f was detected; each task writes only out[r0..r1, c0..c1].
        unsafe { block_avx512(x, w, k, m, r0, r1, c0, c1, p.0) };
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn block_avx512(
    x: &[f32],
    w: &[f32],
    k: usize,
    m: usize,
    r0: usize,
    r1: usize,
    c0: usize,
    c1: usize,
    out: *mut f32,
) {
    // Column tiles outside, row tiles inside: a 4-row slab of W stays in L1 while the x
    // rows of the block stream from L2.
    let mut c = c0;
    while c < c1 {
        let cw = if c1 - c >= 4 { 4 } else { 1 };
        let mut r = r0;
        while r < r1 {
            let rh = if r1 - r >= 4 { 4 } else { 1 };
            match (rh, cw) {
                (4, 4) => tile::<4, 4>(x, w, k, m, r, c, out),
                (4, _) => tile::<4, 1>(x, w, k, m, r, c, out),
                (_, 4) => tile::<1, 4>(x, w, k, m, r, c, out),
                _ => tile::<1, 1>(x, w, k, m, r, c, out),
            }
            r += rh;
        }
        c += cw;
    }
}

/// `out[r..r+R, c..c+C] = x[r..r+R] . w[c..c+C]` over all of k.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::needless_range_loop)]
unsafe fn tile<const R: usize, const C: usize>(
    x: &[f32],
    w: &[f32],
    k: usize,
    m: usize,
    r: usize,
    c: usize,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    let xp = x.as_ptr().add(r * k);
    let wp = w.as_ptr().add(c * k);
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let mut kk = 0;
    while kk + 16 <= k {
        let mut wv = [_mm512_setzero_ps(); C];
        for j in 0..C {
            wv[j] = _mm512_loadu_ps(wp.add(j * k + kk));
        }
        for i in 0..R {
            let xv = _mm512_loadu_ps(xp.add(i * k + kk));
            for j in 0..C {
                acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
            }
        }
        kk += 16;
    }
    if kk < k {
        let mask: __mmask16 = ((1u32 << (k - kk)) - 1) as __mmask16;
        let mut wv = [_mm512_setzero_ps(); C];
        for j in 0..C {
            wv[j] = _mm512_maskz_loadu_ps(mask, wp.add(j * k + kk));
        }
        for i in 0..R {
            let xv = _mm512_maskz_loadu_ps(mask, xp.add(i * k + kk));
            for j in 0..C {
                acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
            }
        }
    }
    for i in 0..R {
        for j in 0..C {
            *out.add((r + i) * m + c + j) = _mm512_reduce_add_ps(acc[i][j]);
        }
    }
}
