//! The backward through the layers: from the gradient of the final residual down to the
//! lowest stage that trains, weight gradients only for the mask's slices and the adapters.

use super::forward::{adapter_of, layer_forward, Forward, Kept, LayerActs};
use super::trainable::{Adapter, Grads};
use crate::backend::{HostTensor, Region, Span, TrainBackend};
use crate::model::driver::Batch;
use crate::model::mask::{head, param, LayerParam, Mask, ParamId};
use crate::model::rope::rope_qk_bwd;
use crate::transformer::Model;
use anyhow::{bail, Result};

/// Backward of linears of one input `x`, `y_i = x W_i^T (+ adapter)` of parameters `p_i`
/// with output gradients `dy_i` (`outs`: q/k/v, gate/up, or one): weight grads for the mask's
/// slices of each `p_i` and its adapter (param grads +=); returns
/// `dx = sum_i dy_i W_i (+ adapter paths)` (=) when `need_dx`, in one backend call.
#[allow(clippy::too_many_arguments)]
pub(super) fn lin_bwd<B: TrainBackend>(
    m: &Model<B>,
    outs: &[(&B::Tensor, ParamId)],
    x: &B::Tensor,
    mask: &Mask,
    adapters: &[Adapter<B::Tensor>],
    lora_u: &[Option<B::Tensor>],
    grads: &mut Grads<B::Tensor>,
    need_dx: bool,
) -> Result<Option<B::Tensor>> {
    let b = &m.backend;
    let mut weights = Vec::with_capacity(outs.len());
    // (du, adapter) of the outputs with a LoRA adapter: their dx path is du A.
    let mut lora_paths: Vec<(B::Tensor, usize)> = Vec::new();
    for &(dy, p) in outs {
        weights.push(match p {
            ParamId::LmHead | ParamId::Embed => head(&m.weights).0,
            _ => param(&m.weights, p)?,
        });
        for (i, reg) in mask.slices_of(p) {
            b.linear_bwd_weight(dy, x, reg, &mut grads.slices[i])?;
        }
        if let ParamId::Layer(l, lp) = p {
            if let Some(ai) = adapter_of(adapters, l, lp) {
                let ad = &adapters[ai];
                let u = lora_u[ai]
                    .as_ref()
                    .expect("adapter input recorded in forward");
                // y += u B^T with u = s x A^T:  dB += dy^T u;  du = s dy B;  dA += du^T x;  dx += du A.
                b.linear_bwd_weight(dy, u, Region::Full, &mut grads.adapters[ai].1)?;
                let mut du = b.linear_bwd_input(dy, &ad.b)?;
                b.scale(&mut du, ad.scale)?;
                b.linear_bwd_weight(&du, x, Region::Full, &mut grads.adapters[ai].0)?;
                lora_paths.push((du, ai));
            }
        }
    }
    if !need_dx {
        return Ok(None);
    }
    let mut parts: Vec<(&B::Tensor, &B::Tensor)> = outs
        .iter()
        .zip(&weights)
        .map(|(&(dy, _), &w)| (dy, w))
        .collect();
    parts.extend(lora_paths.iter().map(|(du, ai)| (du, &adapters[*ai].a)));
    Ok(Some(b.linear_bwd_input_sum(&parts)?))
}

/// Does stage-local parameter `p` (or its adapter) train?
pub(super) fn trains<T>(mask: &Mask, adapters: &[Adapter<T>], l: usize, p: LayerParam) -> bool {
    mask.trains(ParamId::Layer(l, p)) || adapter_of(adapters, l, p).is_some()
}

/// Backward from `dres` (gradient of the final residual, `[n, d]`) down to the lowest
/// needed stage. `want_dz`: also return dL/dz of every layer (forces every attention stage).
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_layers<B: TrainBackend>(
    m: &Model<B>,
    adapters: &[Adapter<B::Tensor>],
    mask: &Mask,
    fw: &mut Forward<B::Tensor>,
    mut dres: B::Tensor,
    s_min: usize,
    grads: &mut Grads<B::Tensor>,
    want_dz: bool,
) -> Result<Vec<Option<B::Tensor>>> {
    let b = &m.backend;
    let nl = m.cfg.num_hidden_layers;
    let mut dzs: Vec<Option<B::Tensor>> = (0..nl).map(|_| None).collect();
    for l in (0..nl).rev() {
        if 2 + 2 * l < s_min {
            break;
        }
        let _span = Span::new(b, "layer", Some(l));
        // This layer's activations, kept or recomputed; freed when the layer is done.
        let (x_in, a) = match std::mem::replace(&mut fw.layers[l], Kept::Nothing) {
            Kept::All(x, a) => (x, a),
            Kept::Input(x) => {
                let mut scratch: Vec<Option<B::Tensor>> = adapters.iter().map(|_| None).collect();
                let (a, _) = layer_forward(m, l, &x, &fw.batch, adapters, &mut scratch)?;
                (x, a)
            }
            Kept::Nothing => bail!("layer {l}: the forward kept no activations for the backward"),
        };
        let stage = StageBwd {
            m,
            adapters,
            mask,
            u: &fw.lora_u,
            l,
        };
        // ---- MLP stage (2 + 2l), then the attention stage (1 + 2l).
        let st = 2 + 2 * l;
        if st < s_min {
            break;
        }
        stage.mlp(&a, grads, &mut dres, st > s_min)?;
        let st = 1 + 2 * l;
        if st < s_min {
            break;
        }
        let need_dx = st > s_min;
        let Some(dz) = stage.attention(&a, &x_in, &fw.batch, grads, &mut dres, need_dx, want_dz)?
        else {
            continue;
        };
        if want_dz {
            dzs[l] = Some(dz);
        }
    }
    if s_min == 0 {
        // Embedding stage: dtable[ids] += dres.
        if let Some(dt) = grad_full(mask, grads, ParamId::Embed)? {
            b.embed_bwd(&dres, &fw.batch.ids, dt)?;
        }
    }
    Ok(dzs)
}

/// The gradient buffer of a parameter that trains whole (norms, embedding), if it trains.
pub(super) fn grad_full<'g, T>(
    mask: &Mask,
    grads: &'g mut Grads<T>,
    p: ParamId,
) -> Result<Option<&'g mut T>> {
    let mut it = mask.slices_of(p);
    match it.next() {
        None => Ok(None),
        Some((i, Region::Full)) => Ok(Some(&mut grads.slices[i])),
        Some((_, r)) => bail!("{p}: only whole-tensor training is supported here, got {r:?}"),
    }
}

/// Lowest stage the backward must reach.
pub(super) fn lowest_stage<T>(
    m_layers: usize,
    mask: &Mask,
    adapters: &[Adapter<T>],
) -> Option<usize> {
    let a = adapters
        .iter()
        .map(|a| ParamId::Layer(a.layer, a.proj).stage(m_layers))
        .min();
    match (mask.lowest_stage(m_layers), a) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

/// Weight gradients of the q/k/v bias slices the mask trains, from the gradients of the
/// projections' outputs (before rope: `dq`, `dk`, `dv`): a bias `[1, out]` is the weight of a
/// linear whose input is the constant 1, so `dbias[reg] += (1^T dy)[reg]`, the column sums of
/// dy, by the weight-gradient GEMM with a column of ones as its output gradient.
fn bias_grads<B: TrainBackend>(
    m: &Model<B>,
    l: usize,
    mask: &Mask,
    dys: [&B::Tensor; 3],
    grads: &mut Grads<B::Tensor>,
) -> Result<()> {
    let b = &m.backend;
    let mut ones: Option<B::Tensor> = None;
    for (p, dy) in LayerParam::BIASES.into_iter().zip(dys) {
        for (i, reg) in mask.slices_of(ParamId::Layer(l, p)) {
            if ones.is_none() {
                let n = b.shape(dy)[0];
                ones = Some(b.upload(&HostTensor::new(vec![n, 1], vec![1.0; n]))?);
            }
            let ones = ones.as_ref().expect("made above");
            b.linear_bwd_weight(ones, dy, reg, &mut grads.slices[i])?;
        }
    }
    Ok(())
}

/// The backward of one layer's two stages, with what both share.
struct StageBwd<'a, B: TrainBackend> {
    m: &'a Model<B>,
    adapters: &'a [Adapter<B::Tensor>],
    mask: &'a Mask,
    /// Per adapter: `scale * x A^T` of the forward.
    u: &'a [Option<B::Tensor>],
    l: usize,
}

impl<B: TrainBackend> StageBwd<'_, B> {
    /// Backward of a per-head q or k norm (`layer::head_norm`, weights `p`): from `dy [n,
    /// heads*D]` (the gradient of the normed q or k) and `pre` (its input as rows `[n*heads,
    /// D]`), the gradient of its input `[n, heads*D]`; the weight's gradient += when it trains.
    fn head_norm_bwd(
        &self,
        p: LayerParam,
        dy: B::Tensor,
        pre: &B::Tensor,
        grads: &mut Grads<B::Tensor>,
    ) -> Result<B::Tensor> {
        let (m, l) = (self.m, self.l);
        let b = &m.backend;
        let shape = b.shape(&dy).to_vec();
        let w = param(&m.weights, ParamId::Layer(l, p))?;
        let dw = grad_full(self.mask, grads, ParamId::Layer(l, p))?;
        let rows = b.reshape(dy, b.shape(pre))?;
        let dx = b.rmsnorm_bwd(&rows, pre, w, m.cfg.rms_norm_eps as f32, dw)?;
        b.reshape(dx, &shape)
    }

    /// MLP stage: `x_out = x_mid + down(swiglu(gate(h2), up(h2)))`, `h2 = norm(x_mid)`. Weight
    /// grads +=; with `need_dx`, `dres` becomes dL/dx_mid.
    fn mlp(
        &self,
        a: &LayerActs<B::Tensor>,
        grads: &mut Grads<B::Tensor>,
        dres: &mut B::Tensor,
        need_dx: bool,
    ) -> Result<()> {
        let StageBwd {
            m,
            adapters,
            mask,
            u,
            l,
        } = *self;
        let b = &m.backend;
        let eps = m.cfg.rms_norm_eps as f32;
        let lw = &m.weights.layers[l];
        let inner = need_dx
            || [LayerParam::MlpNorm, LayerParam::Gate, LayerParam::Up]
                .iter()
                .any(|&p| trains(mask, adapters, l, p));
        let dact = lin_bwd(
            m,
            &[(&*dres, ParamId::Layer(l, LayerParam::Down))],
            &a.act,
            mask,
            adapters,
            u,
            grads,
            inner,
        )?;
        if let Some(dact) = dact {
            let (dgate, dup) = b.swiglu_bwd(&dact, &a.gate, &a.up)?; // [n, F] each
            let need_h2 = need_dx || mask.trains(ParamId::Layer(l, LayerParam::MlpNorm));
            let dh2 = lin_bwd(
                m,
                &[
                    (&dgate, ParamId::Layer(l, LayerParam::Gate)),
                    (&dup, ParamId::Layer(l, LayerParam::Up)),
                ],
                &a.h2,
                mask,
                adapters,
                u,
                grads,
                need_h2,
            )?;
            if let Some(dh2) = dh2 {
                let dw = grad_full(mask, grads, ParamId::Layer(l, LayerParam::MlpNorm))?;
                let dx = b.rmsnorm_bwd(&dh2, &a.x_mid, &lw.mlp_norm, eps, dw)?;
                if need_dx {
                    b.add_assign(dres, &dx)?; // dres is now dL/dx_mid
                }
            }
        }
        Ok(())
    }

    /// Attention stage: `x_mid = x_in + o(attn(rope(q(h)), rope(k(h)), v(h)))`,
    /// `h = norm(x_in)`. Weight grads +=; with `need_dx`, `dres` becomes dL/dx_in. Returns
    /// dL/dz when it was formed (None: nothing below needs it).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        a: &LayerActs<B::Tensor>,
        x_in: &B::Tensor,
        batch: &Batch,
        grads: &mut Grads<B::Tensor>,
        dres: &mut B::Tensor,
        need_dx: bool,
        want_dz: bool,
    ) -> Result<Option<B::Tensor>> {
        let StageBwd {
            m,
            adapters,
            mask,
            u,
            l,
        } = *self;
        let (b, cfg) = (&m.backend, &m.cfg);
        let eps = cfg.rms_norm_eps as f32;
        let lw = &m.weights.layers[l];
        let qkv_train = [
            LayerParam::AttnNorm,
            LayerParam::Q,
            LayerParam::K,
            LayerParam::V,
            LayerParam::QBias,
            LayerParam::KBias,
            LayerParam::VBias,
            LayerParam::QNorm,
            LayerParam::KNorm,
        ]
        .iter()
        .any(|&p| trains(mask, adapters, l, p));
        let need_dz = need_dx || qkv_train || want_dz;
        let dz = lin_bwd(
            m,
            &[(&*dres, ParamId::Layer(l, LayerParam::O))],
            &a.z,
            mask,
            adapters,
            u,
            grads,
            need_dz,
        )?;
        let Some(dz) = dz else {
            return Ok(None);
        };
        if need_dx || qkv_train {
            let (mut dq, mut dk, dv) =
                b.attention_bwd(&dz, &a.q, &a.k, &a.v, &batch.spans, cfg.attn_shape())?;
            let rope = cfg.rope.plan(&batch.spans);
            rope_qk_bwd(b, &rope, &mut dq, &mut dk, &batch.positions)?;
            if let Some((q_pre, k_pre)) = &a.qk_pre {
                dq = self.head_norm_bwd(LayerParam::QNorm, dq, q_pre, grads)?;
                dk = self.head_norm_bwd(LayerParam::KNorm, dk, k_pre, grads)?;
            }
            bias_grads(m, l, mask, [&dq, &dk, &dv], grads)?;
            let need_h = need_dx || mask.trains(ParamId::Layer(l, LayerParam::AttnNorm));
            let dh = lin_bwd(
                m,
                &[
                    (&dq, ParamId::Layer(l, LayerParam::Q)),
                    (&dk, ParamId::Layer(l, LayerParam::K)),
                    (&dv, ParamId::Layer(l, LayerParam::V)),
                ],
                &a.h,
                mask,
                adapters,
                u,
                grads,
                need_h,
            )?;
            if let Some(dh) = dh {
                let dw = grad_full(mask, grads, ParamId::Layer(l, LayerParam::AttnNorm))?;
                let dx = b.rmsnorm_bwd(&dh, x_in, &lw.attn_norm, eps, dw)?;
                if need_dx {
                    b.add_assign(dres, &dx)?; // dres is now dL/dx_in
                }
            }
        }
        Ok(Some(dz))
    }
}
