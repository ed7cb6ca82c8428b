//! Training forward (keeps what backward needs) and the backward pass through the whole
//! model, written once over [`TrainBackend`].
//!
//! The forward repeats `transformer.rs`'s op order exactly (embed -> per layer [rmsnorm,
//! q/k/v, rope, attention, o_proj, add, rmsnorm, gate/up, swiglu, down, add] -> final norm ->
//! lm_head), so the training loss is the evaluation loss. The loss is token-level
//! cross-entropy; only rows with a target go through the final norm and lm_head.
//!
//! Backward stages, bottom to top: embed (0), attention of layer l (1 + 2l), MLP of layer l
//! (2 + 2l), final norm + head (2L + 1). Stages below the lowest trainable one are not
//! visited, and the lowest visited stage does not compute the gradient it would pass down.
//! Weight gradients are computed only for the mask's slices (region GEMMs).

use crate::backend::{AttnShape, SeqSpan};
use crate::backend::{Region, TrainBackend};
use crate::model::mask::{param, LayerParam, Mask, ParamId};
use crate::model::HostTensor;
use crate::transformer::Model;
use anyhow::{bail, ensure, Result};

/// One training sequence: `targets[t]` is the token the logits at position t must predict
/// (`None`: no loss there). HF's `labels` are shifted: `targets[t] = labels[t + 1]`.
///
/// A *retain* sequence (`retain`) is scored at its target rows by KL(original ‖ model)
/// against `teacher` (one [`SoftTarget`] per target row, in row order: the original
/// model's next-token distribution there) instead of by cross-entropy on the tokens: the
/// targets only say which rows count. It keeps behaviour the tuning should not change.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSeq {
    pub ids: Vec<u32>,
    pub targets: Vec<Option<u32>>,
    pub retain: bool,
    pub teacher: Vec<SoftTarget>,
}

/// A next-token distribution cut to its `k` most likely tokens: `ids` with `probs`
/// (descending); the remaining mass `1 - sum(probs)` is one bucket for every other token.
#[derive(Debug, Clone, PartialEq)]
pub struct SoftTarget {
    pub ids: Vec<u32>,
    pub probs: Vec<f32>,
}

impl SoftTarget {
    /// The top `k` of `softmax(logits)` (ties broken by the lower id).
    pub fn top_k(logits: &[f32], k: usize) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        let k = k.min(logits.len());
        let by_logit = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        if k < order.len() {
            order.select_nth_unstable_by(k, by_logit);
            order.truncate(k);
        }
        order.sort_by(by_logit);
        let probs = order
            .iter()
            .map(|&i| (((logits[i as usize] - max) as f64).exp() / sum) as f32)
            .collect();
        Self { ids: order, probs }
    }
}

impl TrainSeq {
    /// A cross-entropy sequence.
    pub fn new(ids: Vec<u32>, targets: Vec<Option<u32>>) -> Self {
        Self {
            ids,
            targets,
            retain: false,
            teacher: vec![],
        }
    }
    /// From HF `input_ids` and `labels` (-100 = ignored), shifting as `ForCausalLMLoss`.
    pub fn from_hf_labels(ids: &[u32], labels: &[i64]) -> Self {
        let targets = (0..ids.len())
            .map(|t| match labels.get(t + 1) {
                Some(&l) if l >= 0 => Some(l as u32),
                _ => None,
            })
            .collect();
        Self::new(ids.to_vec(), targets)
    }
    pub fn n_targets(&self) -> usize {
        self.targets.iter().flatten().count()
    }
}

/// A low-rank adapter on one projection: `y = x W^T + scale * (x A^T) B^T`,
/// `a [r, in]`, `b [out, r]`.
pub struct Adapter<T> {
    pub layer: usize,
    pub proj: LayerParam,
    pub a: T,
    pub b: T,
    pub scale: f32,
}

/// Gradient buffers: one per mask slice (shape of the slice's region), and `(dA, dB)` per
/// adapter. Backward accumulates into them (param grads +=).
pub struct Grads<T> {
    pub slices: Vec<T>,
    pub adapters: Vec<(T, T)>,
}

impl<T> Grads<T> {
    /// Zeroed buffers for `mask` and `adapters`.
    pub fn zeros<B: TrainBackend<Tensor = T>>(
        model: &Model<B>,
        mask: &Mask,
        adapters: &[Adapter<T>],
    ) -> Result<Self> {
        let b = &model.backend;
        let mut slices = Vec::with_capacity(mask.slices.len());
        for s in &mask.slices {
            let shape = b.shape(param(&model.weights, s.param)?).to_vec();
            slices.push(b.zeros(&s.region.shape(&shape))?);
        }
        let mut ads = Vec::with_capacity(adapters.len());
        for a in adapters {
            ads.push((b.zeros(b.shape(&a.a))?, b.zeros(b.shape(&a.b))?));
        }
        Ok(Self {
            slices,
            adapters: ads,
        })
    }
}

/// What the backward needs of one layer besides its input residual.
struct LayerActs<T> {
    h: T,     // [n, d] attn_norm(x_in)
    q: T,     // [n, H*D] after rope
    k: T,     // [n, G*D] after rope
    v: T,     // [n, G*D]
    z: T,     // [n, H*D]
    x_mid: T, // [n, d] residual after attention
    h2: T,    // [n, d] mlp_norm(x_mid)
    gate: T,  // [n, F]
    up: T,    // [n, F]
    act: T,   // [n, F]
}

struct Packed {
    ids: Vec<u32>,
    positions: Vec<usize>,
    spans: Vec<SeqSpan>,
}

/// One layer as the forward left it: nothing (below the lowest layer the backward visits),
/// only its input residual (activations recomputed during backward), or everything.
enum Kept<T> {
    Nothing,
    Input(T),
    All(T, LayerActs<T>),
}

/// How the training forward keeps activations for the backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum ActMemory {
    /// Keep every layer whose activations fit in the backend's free memory (less a
    /// margin); recompute the rest from their input residual during backward.
    #[default]
    Auto,
    /// Keep every layer.
    KeepAll,
    /// Keep only input residuals; recompute every layer during backward.
    RecomputeAll,
    /// Keep layers while their activations fit in this many bytes.
    Budget(usize),
    /// Keep layers while the whole device use (weights, optimizer state and everything
    /// else already allocated, plus the activations) stays under this many bytes.
    DeviceCap(usize),
}

/// Bytes left for kept activations: `available` less room for the logits, their
/// gradient and the backward's temporaries (a recomputed layer included).
fn after_margin(available: usize, per_layer: usize) -> usize {
    available.saturating_sub(available / 10 + (1 << 30) + 4 * per_layer)
}

struct Forward<T> {
    packed: Packed,
    layers: Vec<Kept<T>>,
    /// Per adapter: `scale * x A^T` `[n, r]`.
    lora_u: Vec<Option<T>>,
    x_final: T,
}

fn pack(seqs: &[&[u32]], vocab: usize) -> Result<Packed> {
    ensure!(!seqs.is_empty(), "no sequences to train on");
    let mut ids = vec![];
    let mut positions = vec![];
    let mut spans = vec![];
    for (i, s) in seqs.iter().enumerate() {
        ensure!(!s.is_empty(), "sequence {i} is empty");
        if let Some(t) = s.iter().find(|&&t| t as usize >= vocab) {
            bail!("sequence {i}: token id {t} is outside the vocabulary ({vocab})");
        }
        spans.push(SeqSpan {
            q_start: ids.len(),
            q_len: s.len(),
            kv_start: ids.len(),
            pos0: 0,
            kv_new: None,
        });
        ids.extend_from_slice(s);
        positions.extend(0..s.len());
    }
    Ok(Packed {
        ids,
        positions,
        spans,
    })
}

fn attn_shape<B: TrainBackend>(m: &Model<B>) -> AttnShape {
    AttnShape {
        n_heads: m.cfg.num_attention_heads,
        n_kv_heads: m.cfg.num_key_value_heads,
        head_dim: m.cfg.head_dim,
        window: m.cfg.sliding_window,
    }
}

fn adapter_of<T>(adapters: &[Adapter<T>], layer: usize, p: LayerParam) -> Option<usize> {
    adapters
        .iter()
        .position(|a| a.layer == layer && a.proj == p)
}

/// `y = x W^T (+ adapter)`; records the adapter's `u = scale * x A^T`.
fn lin<B: TrainBackend>(
    m: &Model<B>,
    x: &B::Tensor,
    l: usize,
    p: LayerParam,
    adapters: &[Adapter<B::Tensor>],
    lora_u: &mut [Option<B::Tensor>],
) -> Result<B::Tensor> {
    let b = &m.backend;
    let mut y = b.linear(x, param(&m.weights, ParamId::Layer(l, p))?)?;
    if let Some(ai) = adapter_of(adapters, l, p) {
        let ad = &adapters[ai];
        let mut u = b.linear(x, &ad.a)?; // [n, r]
        b.scale(&mut u, ad.scale)?;
        b.add_assign(&mut y, &b.linear(&u, &ad.b)?)?;
        lora_u[ai] = Some(u);
    }
    Ok(y)
}

/// Bytes of one layer's [`LayerActs`] for `n` rows.
fn layer_act_bytes<B: TrainBackend>(m: &Model<B>, n: usize) -> usize {
    let c = &m.cfg;
    let (d, f) = (c.hidden_size, c.intermediate_size);
    let (hd, gd) = (
        c.num_attention_heads * c.head_dim,
        c.num_key_value_heads * c.head_dim,
    );
    n * (3 * d + 2 * hd + 2 * gd + 3 * f) * m.backend.elem_bytes()
}

/// Which layers keep all activations: `first` is the lowest layer the backward visits
/// (None: none). Layers are kept from the top down (the first the backward needs).
fn keep_plan<B: TrainBackend>(
    m: &Model<B>,
    n: usize,
    first: Option<usize>,
    mem: ActMemory,
) -> Vec<bool> {
    let nl = m.cfg.num_hidden_layers;
    let Some(first) = first else {
        return vec![false; nl];
    };
    let per_layer = layer_act_bytes(m, n).max(1);
    let budget = match mem {
        ActMemory::KeepAll => usize::MAX,
        ActMemory::RecomputeAll => 0,
        ActMemory::Budget(b) => b,
        ActMemory::Auto => match m.backend.memory_info() {
            Some((free, _)) => after_margin(free, per_layer),
            None => usize::MAX,
        },
        ActMemory::DeviceCap(cap) => {
            let in_use = m
                .backend
                .memory_info()
                .map_or(0, |(free, total)| total - free);
            after_margin(cap.saturating_sub(in_use), per_layer)
        }
    };
    let fit = budget / per_layer;
    (0..nl)
        .map(|l| l >= first && l >= nl.saturating_sub(fit))
        .collect()
}

/// The activations of layer `l` from its input residual `x` (the forward's op order).
/// Returns them and the layer's output residual.
fn layer_forward<B: TrainBackend>(
    m: &Model<B>,
    l: usize,
    x: &B::Tensor,
    packed: &Packed,
    adapters: &[Adapter<B::Tensor>],
    lora_u: &mut [Option<B::Tensor>],
) -> Result<(LayerActs<B::Tensor>, B::Tensor)> {
    let cfg = &m.cfg;
    let b = &m.backend;
    let lw = &m.weights.layers[l];
    let eps = cfg.rms_norm_eps as f32;
    let h = b.rmsnorm(x, &lw.attn_norm, eps)?;
    let mut q = lin(m, &h, l, LayerParam::Q, adapters, lora_u)?; // [n, H*D]
    let mut k = lin(m, &h, l, LayerParam::K, adapters, lora_u)?; // [n, G*D]
    let v = lin(m, &h, l, LayerParam::V, adapters, lora_u)?;
    b.rope(&mut q, cfg.head_dim, &packed.positions, cfg.rope_theta)?;
    b.rope(&mut k, cfg.head_dim, &packed.positions, cfg.rope_theta)?;
    let (z, _) = b.attention(&q, &k, &v, &packed.spans, attn_shape(m), &[])?;
    let attn_out = lin(m, &z, l, LayerParam::O, adapters, lora_u)?; // [n, d]
                                                                    // x_mid = attn_out + x, x_out = mlp_out + x_mid: added in place into the fresh outputs
                                                                    // (no copies of the residual). IEEE addition commutes, so these are the bits of x +
                                                                    // attn_out, as the evaluation forward computes them.
    let mut x_mid = attn_out;
    b.add_assign(&mut x_mid, x)?;
    let h2 = b.rmsnorm(&x_mid, &lw.mlp_norm, eps)?;
    let gate = lin(m, &h2, l, LayerParam::Gate, adapters, lora_u)?; // [n, F]
    let up = lin(m, &h2, l, LayerParam::Up, adapters, lora_u)?;
    let act = b.swiglu(&gate, &up)?;
    let mlp_out = lin(m, &act, l, LayerParam::Down, adapters, lora_u)?; // [n, d]
    let mut x_out = mlp_out;
    b.add_assign(&mut x_out, &x_mid)?;
    Ok((
        LayerActs {
            h,
            q,
            k,
            v,
            z,
            x_mid,
            h2,
            gate,
            up,
            act,
        },
        x_out,
    ))
}

/// The training forward. `first`: the lowest layer the backward will visit (None: no
/// backward); `mem`: which of those layers keep their activations.
fn forward<B: TrainBackend>(
    m: &Model<B>,
    adapters: &[Adapter<B::Tensor>],
    seqs: &[&[u32]],
    first: Option<usize>,
    mem: ActMemory,
) -> Result<Forward<B::Tensor>> {
    let cfg = &m.cfg;
    let b = &m.backend;
    let w = &m.weights;
    let packed = pack(seqs, cfg.vocab_size)?;
    let plan = keep_plan(m, packed.ids.len(), first, mem);
    let mut lora_u: Vec<Option<B::Tensor>> = adapters.iter().map(|_| None).collect();
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    let mut x = b.embed(&w.embed, &packed.ids)?; // [n, d]
    for (l, &keep) in plan.iter().enumerate() {
        let (acts, x_out) = layer_forward(m, l, &x, &packed, adapters, &mut lora_u)?;
        layers.push(match (first, keep) {
            (Some(f), _) if l < f => Kept::Nothing,
            (None, _) => Kept::Nothing,
            (_, true) => Kept::All(x, acts),
            (_, false) => Kept::Input(x),
        });
        x = x_out;
    }
    Ok(Forward {
        packed,
        layers,
        lora_u,
        x_final: x,
    })
}

/// The head matrix (lm_head, or the embedding when tied) and its parameter id.
fn head<B: TrainBackend>(m: &Model<B>) -> (&B::Tensor, ParamId) {
    match &m.weights.lm_head {
        Some(h) => (h, ParamId::LmHead),
        None => (&m.weights.embed, ParamId::Embed),
    }
}

/// Backward of linears of one input `x`, `y_i = x W_i^T (+ adapter)` of parameters `p_i`
/// with output gradients `dy_i` (`outs`: q/k/v, gate/up, or one): weight grads for the mask's
/// slices of each `p_i` and its adapter (param grads +=); returns
/// `dx = sum_i dy_i W_i (+ adapter paths)` (=) when `need_dx`, in one backend call.
#[allow(clippy::too_many_arguments)]
fn lin_bwd<B: TrainBackend>(
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
            ParamId::LmHead | ParamId::Embed => head(m).0,
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
fn trains<T>(mask: &Mask, adapters: &[Adapter<T>], l: usize, p: LayerParam) -> bool {
    mask.trains(ParamId::Layer(l, p)) || adapter_of(adapters, l, p).is_some()
}

/// Backward from `dres` (gradient of the final residual, `[n, d]`) down to the lowest
/// needed stage. `want_dz`: also return dL/dz of every layer (forces every attention stage).
#[allow(clippy::too_many_arguments)]
fn backward_layers<B: TrainBackend>(
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
    let cfg = &m.cfg;
    let eps = cfg.rms_norm_eps as f32;
    let nl = cfg.num_hidden_layers;
    let mut dzs: Vec<Option<B::Tensor>> = (0..nl).map(|_| None).collect();
    for l in (0..nl).rev() {
        if 2 + 2 * l < s_min {
            break;
        }
        // This layer's activations, kept or recomputed; freed when the layer is done.
        let (x_in, a) = match std::mem::replace(&mut fw.layers[l], Kept::Nothing) {
            Kept::All(x, a) => (x, a),
            Kept::Input(x) => {
                let mut scratch: Vec<Option<B::Tensor>> = adapters.iter().map(|_| None).collect();
                let (a, _) = layer_forward(m, l, &x, &fw.packed, adapters, &mut scratch)?;
                (x, a)
            }
            Kept::Nothing => bail!("layer {l}: the forward kept no activations for the backward"),
        };
        let a = &a;
        let u = &fw.lora_u;
        let lw = &m.weights.layers[l];
        // ---- MLP stage: x_out = x_mid + down(swiglu(gate(h2), up(h2))), h2 = norm(x_mid).
        let st = 2 + 2 * l;
        if st < s_min {
            break;
        }
        let need_dx = st > s_min;
        let inner = need_dx
            || [LayerParam::MlpNorm, LayerParam::Gate, LayerParam::Up]
                .iter()
                .any(|&p| trains(mask, adapters, l, p));
        let dact = lin_bwd(
            m,
            &[(&dres, ParamId::Layer(l, LayerParam::Down))],
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
                    b.add_assign(&mut dres, &dx)?; // dres is now dL/dx_mid
                }
            }
        }
        // ---- Attention stage: x_mid = x_in + o(attn(rope(q(h)), rope(k(h)), v(h))), h = norm(x_in).
        let st = 1 + 2 * l;
        if st < s_min {
            break;
        }
        let need_dx = st > s_min;
        let qkv_train = [
            LayerParam::AttnNorm,
            LayerParam::Q,
            LayerParam::K,
            LayerParam::V,
        ]
        .iter()
        .any(|&p| trains(mask, adapters, l, p));
        let need_dz = need_dx || qkv_train || want_dz;
        let dz = lin_bwd(
            m,
            &[(&dres, ParamId::Layer(l, LayerParam::O))],
            &a.z,
            mask,
            adapters,
            u,
            grads,
            need_dz,
        )?;
        let Some(dz) = dz else { continue };
        if need_dx || qkv_train {
            let (mut dq, mut dk, dv) =
                b.attention_bwd(&dz, &a.q, &a.k, &a.v, &fw.packed.spans, attn_shape(m))?;
            b.rope_bwd(&mut dq, cfg.head_dim, &fw.packed.positions, cfg.rope_theta)?;
            b.rope_bwd(&mut dk, cfg.head_dim, &fw.packed.positions, cfg.rope_theta)?;
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
                let dx = b.rmsnorm_bwd(&dh, &x_in, &lw.attn_norm, eps, dw)?;
                if need_dx {
                    b.add_assign(&mut dres, &dx)?; // dres is now dL/dx_in
                }
            }
        }
        if want_dz {
            dzs[l] = Some(dz);
        }
    }
    if s_min == 0 {
        // Embedding stage: dtable[ids] += dres.
        if let Some(dt) = grad_full(mask, grads, ParamId::Embed)? {
            b.embed_bwd(&dres, &fw.packed.ids, dt)?;
        }
    }
    Ok(dzs)
}

/// The gradient buffer of a parameter that trains whole (norms, embedding), if it trains.
fn grad_full<'g, T>(mask: &Mask, grads: &'g mut Grads<T>, p: ParamId) -> Result<Option<&'g mut T>> {
    let mut it = mask.slices_of(p);
    match it.next() {
        None => Ok(None),
        Some((i, Region::Full)) => Ok(Some(&mut grads.slices[i])),
        Some((_, r)) => bail!("{p}: only whole-tensor training is supported here, got {r:?}"),
    }
}

/// Lowest stage the backward must reach.
fn lowest_stage<T>(m_layers: usize, mask: &Mask, adapters: &[Adapter<T>]) -> Option<usize> {
    let a = adapters
        .iter()
        .map(|a| ParamId::Layer(a.layer, a.proj).stage(m_layers))
        .min();
    match (mask.lowest_stage(m_layers), a) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

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
    let mut fw = forward(m, adapters, &ids, first_layer(s_min), mem)?;
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
    let eps = m.cfg.rms_norm_eps as f32;
    let x_sel = b.gather_rows(&fw.x_final, &rows)?; // [t, d]
    let hn = b.rmsnorm(&x_sel, &m.weights.final_norm, eps)?;
    let (hw, hid) = head(m);
    let logits = b.linear(&hn, hw)?; // [t, V]
    let (loss, dlogits) = if soft.iter().all(Option::is_none) {
        b.xent_fwd_bwd_owned(logits, &tg, scale)?
    } else {
        // Retain rows: on the host (a download and an upload of [t, V]; no device kernel).
        let mut d = b.download(&logits)?;
        drop(logits);
        let loss = xent_and_kl_in_place(&mut d, &tg, &soft, scale)?;
        (loss, b.upload(&d)?)
    };
    let Some(s_min) = s_min else {
        return Ok((loss, rows.len()));
    };
    // ---- Final stage: logits = norm(x_final[rows]) @ head^T.
    let st = 2 * nl + 1;
    let need_dx = st > s_min;
    let dhn = lin_bwd(
        m,
        &[(&dlogits, hid)],
        &hn,
        mask,
        adapters,
        &fw.lora_u,
        grads,
        need_dx || mask.trains(ParamId::FinalNorm),
    )?;
    if let Some(dhn) = dhn {
        let dw = grad_full(mask, grads, ParamId::FinalNorm)?;
        let dx_sel = b.rmsnorm_bwd(&dhn, &x_sel, &m.weights.final_norm, eps, dw)?;
        if need_dx {
            let mut dres = b.zeros(b.shape(&fw.x_final))?;
            b.scatter_rows(&mut dres, &rows, &dx_sel)?;
            backward_layers(m, adapters, mask, &mut fw, dres, s_min, grads, false)?;
        }
    }
    Ok((loss, rows.len()))
}

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
    ensure!(d.shape.len() == 2, "logits of shape {:?}", d.shape);
    let (n, vocab) = (d.shape[0], d.shape[1]);
    ensure!(
        targets.len() == n && soft.len() == n,
        "{} targets and {} teacher rows for {n} logit rows",
        targets.len(),
        soft.len()
    );
    let mut total = 0.0f64;
    for ((row, t), p) in d.data.chunks_mut(vocab).zip(targets).zip(soft) {
        let Some(t) = *t else {
            row.fill(0.0);
            continue;
        };
        ensure!(
            (t as usize) < vocab,
            "target {t} outside the vocabulary of {vocab}"
        );
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = row.iter().map(|&l| ((l - max) as f64).exp()).sum();
        match p {
            None => {
                total += sum.ln() + (max - row[t as usize]) as f64;
                for v in row.iter_mut() {
                    *v = (((*v - max) as f64).exp() / sum) as f32 * scale;
                }
                row[t as usize] -= scale;
            }
            Some(p) => {
                if let Some(&bad) = p.ids.iter().find(|&&i| i as usize >= vocab) {
                    bail!("teacher token {bad} outside the vocabulary of {vocab}");
                }
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
                total += kl;
                // Other tokens: q_j (1 - p_rest / q_rest); the top k: q_i - p_i.
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
            }
        }
    }
    Ok(total)
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
    let hn = b.rmsnorm(&x_sel, &m.weights.final_norm, m.cfg.rms_norm_eps as f32)?;
    let logits = b.download(&b.linear(&hn, head(m).0)?)?; // [t, V]
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
    let rows: Vec<usize> = fw
        .packed
        .spans
        .iter()
        .map(|s| s.q_start + s.q_len - 1)
        .collect();
    let eps = m.cfg.rms_norm_eps as f32;
    let x_sel = b.gather_rows(&fw.x_final, &rows)?;
    let (hw, _) = head(m);
    let dl = b.upload(dlogits_last)?;
    let dhn = b.linear_bwd_input(&dl, hw)?;
    let dx_sel = b.rmsnorm_bwd(&dhn, &x_sel, &m.weights.final_norm, eps, None)?;
    let mut dres = b.zeros(b.shape(&fw.x_final))?;
    b.scatter_rows(&mut dres, &rows, &dx_sel)?;
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
