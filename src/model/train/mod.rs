//! Training over [`TrainBackend`]: the loss and its gradients, the forward-only passes
//! training needs (teacher distributions, logits with unmerged adapters, the loss) and
//! attribution patching's backward to z. `seq.rs` holds the training sequences and their
//! teachers, `trainable.rs` the adapters and gradient buffers, `forward.rs` the training
//! forward (keeps what the backward needs), `backward.rs` the backward through the layers,
//! `loss.rs` the loss of rows scored on the host.
//!
//! The forward is the one driver (`model::driver`) the evaluation forward (`transformer.rs`)
//! runs too (embed -> layers -> final norm -> lm_head), so the training loss is the
//! evaluation loss. The loss is token-level
//! cross-entropy; only rows with a target go through the final norm and lm_head.
//!
//! Backward stages, bottom to top: embed (0), attention of layer l (1 + 2l), MLP of layer l
//! (2 + 2l), final norm + head (2L + 1). Stages below the lowest trainable one are not
//! visited, and the lowest visited stage does not compute the gradient it would pass down.
//! Weight gradients are computed only for the mask's slices (region GEMMs).

mod backward;
mod forward;
mod loss;
mod seq;
mod trainable;

use crate::backend::{Span, TrainBackend};
use crate::heads::Positions;
use crate::model::driver::final_logits;
use crate::model::mask::{head, Mask, ParamId};
use crate::model::HostTensor;
use crate::transformer::Model;
use anyhow::{ensure, Result};
use backward::{backward_layers, grad_full, lin_bwd, lowest_stage};
use forward::forward;
pub use forward::ActMemory;
pub use loss::xent_and_kl_in_place;
pub use seq::{SoftTarget, TrainSeq};
pub use trainable::{Adapter, Grads};

/// Forward and backward of `scale * sum of token NLLs` over `seqs`. Weight gradients of
/// `mask`'s slices and of `adapters` accumulate into `grads` (param grads +=). Returns the
/// unscaled sum of token NLLs (f64) and the number of targets. For the mean loss use
/// `scale = 1 / (targets of the whole global batch)`.
pub fn loss_and_grads<B: TrainBackend>(
    m: &Model<B>,
    adapters: &[Adapter<B::Tensor>],
    mask: &Mask,
    seqs: &[TrainSeq],
    scale: f32,
    grads: &mut Grads<B::Tensor>,
) -> Result<(f64, usize)> {
    loss_and_grads_with(m, adapters, mask, seqs, scale, grads, ActMemory::Auto)
}

/// The lowest layer a backward from stage `s_min` visits.
fn first_layer(s_min: Option<usize>) -> Option<usize> {
    s_min.map(|s| s.saturating_sub(1) / 2)
}

/// [`loss_and_grads`] with an explicit activation-memory policy.
pub fn loss_and_grads_with<B: TrainBackend>(
    m: &Model<B>,
    adapters: &[Adapter<B::Tensor>],
    mask: &Mask,
    seqs: &[TrainSeq],
    scale: f32,
    grads: &mut Grads<B::Tensor>,
    mem: ActMemory,
) -> Result<(f64, usize)> {
    ensure!(
        grads.slices.len() == mask.slices.len(),
        "grads do not match the mask"
    );
    ensure!(
        grads.adapters.len() == adapters.len(),
        "grads do not match the adapters"
    );
    let b = &m.backend;
    let ids: Vec<&[u32]> = seqs.iter().map(|s| s.ids.as_slice()).collect();
    for (i, s) in seqs.iter().enumerate() {
        ensure!(
            s.targets.len() == s.ids.len(),
            "sequence {i}: {} targets for {} ids",
            s.targets.len(),
            s.ids.len()
        );
        ensure!(
            !s.retain || s.teacher.len() == s.n_targets(),
            "sequence {i} is a retain example with {} teacher distributions for {} target rows (see tune::Trainer, which computes them from the original model)",
            s.teacher.len(),
            s.n_targets()
        );
    }
    let nl = m.cfg.num_hidden_layers;
    let s_min = lowest_stage(nl, mask, adapters);
    let span = Span::new(b, "forward", None);
    let mut fw = forward(m, adapters, &ids, first_layer(s_min), mem)?;
    drop(span);
    // Rows with a target.
    let mut rows = vec![];
    let mut tg = vec![];
    let mut soft: Vec<Option<&SoftTarget>> = vec![];
    let mut off = 0;
    for s in seqs {
        let mut teacher = s.teacher.iter();
        for (t, x) in s.targets.iter().enumerate() {
            if x.is_some() {
                rows.push(off + t);
                tg.push(*x);
                soft.push(if s.retain { teacher.next() } else { None });
            }
        }
        off += s.ids.len();
    }
    if rows.is_empty() {
        return Ok((0.0, 0));
    }
    let span = Span::new(b, "loss", None);
    let x_sel = b.gather_rows(&fw.x_final, &rows)?; // [t, d]
    let (hn, logits) = final_logits(&m.parts(), &x_sel)?; // [t, d], [t, V]
    let (loss, dlogits) = if soft.iter().all(Option::is_none) {
        b.xent_fwd_bwd_owned(logits, &tg, scale)?
    } else {
        // Retain rows: on the host (a download and an upload of [t, V]; no device kernel).
        let mut d = b.download(&logits)?;
        drop(logits);
        let loss = xent_and_kl_in_place(&mut d, &tg, &soft, scale)?;
        (loss, b.upload(&d)?)
    };
    drop(span);
    let Some(s_min) = s_min else {
        return Ok((loss, rows.len()));
    };
    let _span = Span::new(b, "backward", None);
    // ---- Final stage: logits = norm(x_final[rows]) @ head^T.
    let st = 2 * nl + 1;
    let need_dx = st > s_min;
    let dhn = lin_bwd(
        m,
        &[(&dlogits, head(&m.weights).1)],
        &hn,
        mask,
        adapters,
        &fw.lora_u,
        grads,
        need_dx || mask.trains(ParamId::FinalNorm),
    )?;
    if let Some(dhn) = dhn {
        let dw = grad_full(mask, grads, ParamId::FinalNorm)?;
        let dres = final_norm_bwd(m, &dhn, &x_sel, &rows, &fw.x_final, dw)?;
        if need_dx {
            backward_layers(m, adapters, mask, &mut fw, dres, s_min, grads, false)?;
        }
    }
    Ok((loss, rows.len()))
}

/// The backward of [`final_logits`]' norm on rows `rows` of `x_final [n, d]` (`x_sel` those
/// rows, `dhn` the gradient of the normed rows): the gradient of the final residual `[n, d]`
/// (zero on other rows); the norm's weight gradient += into `dw` when it trains.
fn final_norm_bwd<B: TrainBackend>(
    m: &Model<B>,
    dhn: &B::Tensor,
    x_sel: &B::Tensor,
    rows: &[usize],
    x_final: &B::Tensor,
    dw: Option<&mut B::Tensor>,
) -> Result<B::Tensor> {
    let b = &m.backend;
    let eps = m.cfg.rms_norm_eps as f32;
    let dx_sel = b.rmsnorm_bwd(dhn, x_sel, &m.weights.final_norm, eps, dw)?;
    let mut dres = b.zeros(b.shape(x_final))?;
    b.scatter_rows(&mut dres, rows, &dx_sel)?;
    Ok(dres)
}

/// The `k` most likely next tokens of `m` (with `adapters`) at every target row of each
/// sequence, in row order: the teacher of a retain sequence.
pub fn soft_targets<B: TrainBackend>(
    m: &Model<B>,
    adapters: &[Adapter<B::Tensor>],
    seqs: &[TrainSeq],
    k: usize,
) -> Result<Vec<Vec<SoftTarget>>> {
    let b = &m.backend;
    let ids: Vec<&[u32]> = seqs.iter().map(|s| s.ids.as_slice()).collect();
    let fw = forward(m, adapters, &ids, None, ActMemory::KeepAll)?;
    let mut rows = vec![];
    let mut off = 0;
    for s in seqs {
        rows.extend(
            s.targets
                .iter()
                .enumerate()
                .filter(|(_, x)| x.is_some())
                .map(|(t, _)| off + t),
        );
        off += s.ids.len();
    }
    if rows.is_empty() {
        return Ok(seqs.iter().map(|_| vec![]).collect());
    }
    let x_sel = b.gather_rows(&fw.x_final, &rows)?; // [t, d]
    let logits = b.download(&final_logits(&m.parts(), &x_sel)?.1)?; // [t, V]
    let vocab = m.cfg.vocab_size;
    let mut all: Vec<SoftTarget> = logits
        .data
        .chunks(vocab)
        .map(|row| SoftTarget::top_k(row, k))
        .collect();
    // Split the rows (one per target, in order) back into their sequences.
    let mut out = Vec::with_capacity(seqs.len());
    for s in seqs.iter().rev() {
        out.push(all.split_off(all.len() - s.n_targets()));
    }
    out.reverse();
    Ok(out)
}

/// Sum of token NLLs and number of targets (forward only).
pub fn loss<B: TrainBackend>(
    m: &Model<B>,
    adapters: &[Adapter<B::Tensor>],
    seqs: &[TrainSeq],
) -> Result<(f64, usize)> {
    // Adapter gradients (if any) go to throwaway buffers.
    let mut g = Grads::zeros(m, &Mask::none(), adapters)?;
    loss_and_grads(m, adapters, &Mask::none(), seqs, 1.0, &mut g)
}

/// Logits `[rows, V]` at every position of `seqs` (packed), with adapters applied unmerged.
pub fn logits_with<B: TrainBackend>(
    m: &Model<B>,
    adapters: &[Adapter<B::Tensor>],
    seqs: &[Vec<u32>],
) -> Result<HostTensor> {
    let ids: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
    let fw = forward(m, adapters, &ids, None, ActMemory::KeepAll)?;
    let b = &m.backend;
    let logits = m.logits_of_residual(&fw.x_final)?;
    b.download(&logits)
}

/// Attribution patching's backward: for a scalar f of the last-position logits of each
/// sequence, with `dlogits_last [n_seqs, V]` = df/dlogits, the gradient df/dz of every
/// layer at every position: per layer `dz [rows, H*D]` (rows packed as the sequences).
/// No weight gradients are formed.
pub fn backward_to_z<B: TrainBackend>(
    m: &Model<B>,
    seqs: &[Vec<u32>],
    dlogits_last: &HostTensor,
) -> Result<Vec<B::Tensor>> {
    let b = &m.backend;
    let vocab = m.cfg.vocab_size;
    ensure!(
        dlogits_last.shape == [seqs.len(), vocab],
        "backward_to_z: dlogits of shape {:?} for {} sequences of vocabulary {vocab}",
        dlogits_last.shape,
        seqs.len()
    );
    let ids: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
    let mut fw = forward(m, &[], &ids, Some(0), ActMemory::Auto)?;
    let rows = fw.batch.select(&Positions::Last);
    let x_sel = b.gather_rows(&fw.x_final, &rows)?;
    let dl = b.upload(dlogits_last)?;
    let dhn = b.linear_bwd_input(&dl, head(&m.weights).0)?;
    let dres = final_norm_bwd(m, &dhn, &x_sel, &rows, &fw.x_final, None)?;
    let mask = Mask::none();
    let mut grads = Grads {
        slices: vec![],
        adapters: vec![],
    };
    let dzs = backward_layers(m, &[], &mask, &mut fw, dres, 1, &mut grads, true)?;
    dzs.into_iter()
        .enumerate()
        .map(|(l, d)| d.ok_or_else(|| anyhow::anyhow!("no dz for layer {l}")))
        .collect()
}
