//! Fused softmax cross-entropy on the CPU (loss and `dlogits` in one pass), and its host
//! variant in f64 for one row ([`xent_row_f64`]), which rows scored on the host use.

use crate::backend::cpu::simd;
use crate::backend::{shapes, HostTensor};
use anyhow::Result;
use rayon::prelude::*;

/// In place: each row of logits becomes its row of dlogits (no 200 MB allocation,
/// zero-fill and copy for a SmolLM2 batch).
pub(crate) fn xent_fwd_bwd_owned(
    logits: HostTensor,
    targets: &[Option<u32>],
    scale: f32,
) -> Result<(f64, HostTensor)> {
    let (_, vocab) = shapes::xent(&logits.shape, targets)?;
    let mut d = logits;
    let losses: Vec<f32> = d
        .data
        .par_chunks_mut(vocab)
        .zip(targets)
        .map(|(row, t)| {
            let Some(t) = *t else {
                row.fill(0.0);
                return 0.0;
            };
            let max = simd::max(row);
            let l_t = row[t as usize];
            let sum = simd::exp_shifted_sum(row, max);
            let inv = 1.0 / sum;
            simd::scale(row, inv * scale);
            row[t as usize] -= scale;
            // -log softmax(t) = log(sum) + max - l_t
            sum.ln() + max - l_t
        })
        .collect();
    Ok((losses.iter().map(|&l| l as f64).sum(), d))
}

/// Max and `sum exp(l - max)` (in f64) of a row of logits: the softmax's normalizer, as
/// the host rows of the training loss compute it.
pub fn softmax_norm_f64(row: &[f32]) -> (f32, f64) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (max, row.iter().map(|&l| ((l - max) as f64).exp()).sum())
}

/// The host variant of [`xent_fwd_bwd_owned`] for one row, in f64: returns the NLL of
/// target `t` and turns the row of logits into `scale * (softmax(row) - onehot(t))`, each
/// probability computed in f64 and rounded once to f32. The training loss scores a batch
/// with retain rows on the host (`model::train::loss`) and its cross-entropy rows here, so
/// a tuned model's weights are those of this arithmetic; it agrees with the f32 op to f32
/// rounding. `t` must be inside the row.
pub fn xent_row_f64(row: &mut [f32], t: u32, scale: f32) -> f64 {
    let (max, sum) = softmax_norm_f64(row);
    let loss = sum.ln() + (max - row[t as usize]) as f64;
    for v in row.iter_mut() {
        *v = (((*v - max) as f64).exp() / sum) as f32 * scale;
    }
    row[t as usize] -= scale;
    loss
}
