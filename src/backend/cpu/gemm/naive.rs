//! The reference GEMMs (`PINPOINT_CPU_KERNELS=reference`, see `cpu/select.rs`): one output
//! element at a time, a serial f32 sum over k in order. Rows of the output go to rayon
//! tasks; nothing else is reordered.

use super::common::Strided;
use rayon::prelude::*;

/// `out [n, m] = x [n, k] @ w [m, k]^T`.
pub fn matmul_t(x: &[f32], w: &[f32], n: usize, k: usize, m: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; n * m];
    if m == 0 {
        return out;
    }
    out.par_chunks_mut(m).enumerate().for_each(|(i, row)| {
        let xi = &x[i * k..(i + 1) * k];
        for (j, o) in row.iter_mut().enumerate() {
            let wj = &w[j * k..(j + 1) * k];
            let mut acc = 0.0f32;
            for t in 0..k {
                acc += xi[t] * wj[t];
            }
            *o = acc;
        }
    });
    out
}

/// `dst [m, n] (+)= lhs [m, k] @ rhs [k, n]`, dst row-major contiguous (the caller checks
/// the bounds). With `accumulate`, the sum starts from dst's value.
pub fn gemm_into(
    dst: &mut [f32],
    accumulate: bool,
    m: usize,
    n: usize,
    k: usize,
    lhs: Strided,
    rhs: Strided,
) {
    let at = |s: &Strided, r: usize, c: usize| s.data[s.off + r * s.rs + c * s.cs];
    dst[..m * n]
        .par_chunks_mut(n.max(1))
        .enumerate()
        .for_each(|(i, row)| {
            for (j, o) in row.iter_mut().enumerate() {
                let mut acc = if accumulate { *o } else { 0.0f32 };
                for t in 0..k {
                    acc += at(&lhs, i, t) * at(&rhs, t, j);
                }
                *o = acc;
            }
        });
}
