//! The loss of rows scored on the host: a batch with retain rows (KL to the original
//! model's top-k distribution, no device kernel) scores all its rows here, its
//! cross-entropy rows by the xent op's f64 host variant (`backend::host::xent_row_f64`; a
//! batch of cross-entropy rows only runs the device's `xent_fwd_bwd` op instead).

use super::seq::SoftTarget;
use crate::backend::host::{softmax_norm_f64, xent_row_f64};
use crate::model::HostTensor;
use anyhow::{bail, ensure, Result};

/// Rows of `d` (logits `[t, V]`) become `scale * dloss/dlogits` in place; returns the
/// unscaled loss sum. A row with `soft[r]` scores KL(p ‖ softmax(row)) over the teacher's
/// top-k tokens plus one bucket for all others (gradient `q - p~`, where `p~` spreads the
/// teacher's remaining mass over the other tokens in proportion to `q`); any other row
/// with a target scores the token NLL (gradient `q - onehot`), as `xent_fwd_bwd`.
pub fn xent_and_kl_in_place(
    d: &mut HostTensor,
    targets: &[Option<u32>],
    soft: &[Option<&SoftTarget>],
    scale: f32,
) -> Result<f64> {
    use rayon::prelude::*;
    ensure!(d.shape.len() == 2, "logits of shape {:?}", d.shape);
    let (n, vocab) = (d.shape[0], d.shape[1]);
    ensure!(
        targets.len() == n && soft.len() == n,
        "{} targets and {} teacher rows for {n} logit rows",
        targets.len(),
        soft.len()
    );
    if let Some(t) = targets.iter().flatten().find(|&&t| t as usize >= vocab) {
        bail!("target {t} outside the vocabulary of {vocab}");
    }
    if let Some(t) = soft
        .iter()
        .flatten()
        .flat_map(|p| &p.ids)
        .find(|&&i| i as usize >= vocab)
    {
        bail!("teacher token {t} outside the vocabulary of {vocab}");
    }
    let losses: Vec<f64> = d
        .data
        .par_chunks_mut(vocab)
        .zip(targets)
        .zip(soft)
        .map(|((row, t), p)| match (*t, p) {
            (None, _) => {
                row.fill(0.0);
                0.0
            }
            (Some(t), None) => xent_row_f64(row, t, scale),
            (Some(_), Some(p)) => kl_row(row, p, scale),
        })
        .collect();
    Ok(losses.iter().sum())
}

/// One retain row: KL(p ‖ q) over p's top-k tokens plus one bucket for the rest; the row
/// becomes `scale * (q - p~)`: `q_i - p_i` on the top k, `q_j (1 - p_rest / q_rest)` elsewhere.
fn kl_row(row: &mut [f32], p: &SoftTarget, scale: f32) -> f64 {
    let (max, sum) = softmax_norm_f64(row);
    let q_of = |l: f32| ((l - max) as f64).exp() / sum;
    let q_top: Vec<f64> = p.ids.iter().map(|&i| q_of(row[i as usize])).collect();
    let p_rest = (1.0 - p.probs.iter().map(|&x| x as f64).sum::<f64>()).max(0.0);
    let q_rest = (1.0 - q_top.iter().sum::<f64>()).max(0.0);
    let mut kl = 0.0;
    for (&pi, &qi) in p.probs.iter().zip(&q_top) {
        if pi > 0.0 {
            kl += pi as f64 * (pi as f64 / qi.max(f64::MIN_POSITIVE)).ln();
        }
    }
    if p_rest > 0.0 {
        kl += p_rest * (p_rest / q_rest.max(f64::MIN_POSITIVE)).ln();
    }
    let other = if q_rest > 0.0 {
        1.0 - p_rest / q_rest
    } else {
        1.0
    };
    for v in row.iter_mut() {
        *v = (q_of(*v) * other) as f32 * scale;
    }
    for ((&i, &pi), &qi) in p.ids.iter().zip(&p.probs).zip(&q_top) {
        row[i as usize] = ((qi - pi as f64) as f32) * scale;
    }
    kl
}
