//! Divergence checks of a training run: a loss far past the first step's, a tuned tensor
//! grown far past its size before training, a weight past any real checkpoint's.

use crate::model::mask::Mask;
use crate::model::{HostTensor, ModelWeights};
use anyhow::{bail, Result};

/// Error when a trained tensor of the final weights `w` holds a value past [`GROWTH_LIMIT`]
/// times the largest magnitude its trained slice had before training (`base_max`, one per
/// slice of `mask`; at least 0.01): no fine-tuning moves weights that far; an exploding run
/// does.
pub(super) fn check_growth(
    mask: &Mask,
    base_max: &[f32],
    w: &ModelWeights<HostTensor>,
) -> Result<()> {
    let named: std::collections::HashMap<String, &HostTensor> = w.named().into_iter().collect();
    for (s, &base) in mask.slices.iter().zip(base_max) {
        let name = s.param.hf_name();
        let Some(t) = named.get(&name) else { continue };
        let limit = GROWTH_LIMIT * base.max(0.01);
        let top = t.data.iter().fold(0f32, |a, x| a.max(x.abs()));
        if top > limit {
            bail!(
                "tensor {name} reached a magnitude of {top:e}, past {GROWTH_LIMIT} x the largest value its trained part held before training ({base:e}): the weights exploded"
            );
        }
    }
    Ok(())
}

/// The loss past which training has diverged: above both 4 x the first step's loss
/// `first_loss` and twice that of a uniform guess over `vocab_size` tokens.
pub(super) fn loss_limit(first_loss: f64, vocab_size: usize) -> f64 {
    let uniform = (vocab_size as f64).ln();
    (4.0 * first_loss).max(2.0 * uniform)
}

/// How many times its largest value before training a trained tensor may grow to.
pub const GROWTH_LIMIT: f32 = 1000.0;

/// The largest weight magnitude a trained model may hold: real checkpoints stay far below
/// it (f16 tops out at 65504), so a weight past it means training diverged.
pub const WEIGHT_LIMIT: f32 = 1e6;

/// Error naming the first tensor with a weight past [`WEIGHT_LIMIT`], its value and index.
pub fn weights_bounded(w: &ModelWeights<HostTensor>) -> Result<()> {
    for (name, t) in w.named() {
        if let Some((i, x)) = t
            .data
            .iter()
            .enumerate()
            .find(|(_, x)| x.abs() > WEIGHT_LIMIT)
        {
            bail!("tensor {name} holds {x:e} at index {i}, past {WEIGHT_LIMIT:e}: the weights exploded");
        }
    }
    Ok(())
}
