//! The training forward: the one driver (`model::driver::run_layers`, each layer the
//! evaluation forward's own `model::layer::layer_forward`) with the adapters plugged in,
//! keeping per layer what the backward needs (all activations, only the input residual, or
//! nothing), by the memory plan of [`ActMemory`].

use super::Adapter;
use crate::backend::{SeqSpan, TrainBackend};
use crate::model::driver::{embed, run_layers, Batch};
pub(super) use crate::model::layer::LayerActs;
use crate::model::layer::{self, LayerIo};
use crate::model::mask::{param, LayerParam, ParamId};
use crate::transformer::Model;
use anyhow::Result;

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

/// One layer as the forward left it: nothing (below the lowest layer the backward visits),
/// only its input residual (activations recomputed during backward), or everything.
pub(super) enum Kept<T> {
    Nothing,
    Input(T),
    All(T, LayerActs<T>),
}

/// Bytes left for kept activations: `available` less room for the logits, their
/// gradient and the backward's temporaries (a recomputed layer included).
pub(super) fn after_margin(available: usize, per_layer: usize) -> usize {
    available.saturating_sub(available / 10 + (1 << 30) + 4 * per_layer)
}

pub(super) struct Forward<T> {
    pub(super) batch: Batch,
    pub(super) layers: Vec<Kept<T>>,
    /// Per adapter: `scale * x A^T` `[n, r]`.
    pub(super) lora_u: Vec<Option<T>>,
    pub(super) x_final: T,
}

pub(super) fn adapter_of<T>(adapters: &[Adapter<T>], layer: usize, p: LayerParam) -> Option<usize> {
    adapters
        .iter()
        .position(|a| a.layer == layer && a.proj == p)
}

/// `y = x W^T (+ adapter)`; records the adapter's `u = scale * x A^T`.
pub(super) fn lin<B: TrainBackend>(
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
pub(super) fn layer_act_bytes<B: TrainBackend>(m: &Model<B>, n: usize) -> usize {
    let c = &m.cfg;
    let (d, f) = (c.hidden_size, c.intermediate_size);
    let (hd, gd) = (
        c.num_attention_heads * c.head_dim,
        c.num_key_value_heads * c.head_dim,
    );
    // Qwen3's q and k before their norms.
    let qk_pre = if c.qk_norm { hd + gd } else { 0 };
    n * (3 * d + 2 * hd + 2 * gd + 3 * f + qk_pre) * m.backend.elem_bytes()
}

/// Which layers keep all activations: `first` is the lowest layer the backward visits
/// (None: none). Layers are kept from the top down (the first the backward needs).
pub(super) fn keep_plan<B: TrainBackend>(
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

/// The activations of layer `l` from its input residual `x` (the forward's op order), for
/// the backward to recompute a layer the forward did not keep. Returns them and the
/// layer's output residual.
pub(super) fn layer_forward<B: TrainBackend>(
    m: &Model<B>,
    l: usize,
    x: &B::Tensor,
    batch: &Batch,
    adapters: &[Adapter<B::Tensor>],
    lora_u: &mut [Option<B::Tensor>],
) -> Result<(LayerActs<B::Tensor>, B::Tensor)> {
    let mut io = TrainIo::new(m, adapters, lora_u, &batch.spans);
    let rope = m.cfg.rope.plan(&batch.spans);
    layer::layer_forward(&m.parts(), &mut io, l, x, &batch.positions, &rope)
}

/// The training side of [`LayerIo`]: linears with their adapters (recording `u`), plain
/// attention over the packed sequences, no taps; each layer kept by the plan.
struct TrainIo<'a, B: TrainBackend> {
    m: &'a Model<B>,
    adapters: &'a [Adapter<B::Tensor>],
    lora_u: &'a mut [Option<B::Tensor>],
    spans: &'a [SeqSpan],
    /// The lowest layer the backward visits (None: no backward) and, per layer, whether
    /// it keeps all its activations.
    first: Option<usize>,
    plan: Vec<bool>,
    kept: Vec<Kept<B::Tensor>>,
}

impl<'a, B: TrainBackend> TrainIo<'a, B> {
    fn new(
        m: &'a Model<B>,
        adapters: &'a [Adapter<B::Tensor>],
        lora_u: &'a mut [Option<B::Tensor>],
        spans: &'a [SeqSpan],
    ) -> Self {
        Self {
            m,
            adapters,
            lora_u,
            spans,
            first: None,
            plan: vec![],
            kept: vec![],
        }
    }
}

impl<B: TrainBackend> LayerIo<B> for TrainIo<'_, B> {
    fn linear(&mut self, l: usize, p: LayerParam, x: &B::Tensor) -> Result<B::Tensor> {
        lin(self.m, x, l, p, self.adapters, self.lora_u)
    }
    fn attention(
        &mut self,
        _l: usize,
        q: &B::Tensor,
        k: &B::Tensor,
        v: &B::Tensor,
    ) -> Result<B::Tensor> {
        let shape = self.m.cfg.attn_shape();
        Ok(self.m.backend.attention(q, k, v, self.spans, shape, &[])?.0)
    }
    fn keep(&mut self, l: usize, x_in: B::Tensor, acts: LayerActs<B::Tensor>) {
        self.kept.push(match (self.first, self.plan[l]) {
            (Some(f), _) if l < f => Kept::Nothing,
            (None, _) => Kept::Nothing,
            (_, true) => Kept::All(x_in, acts),
            (_, false) => Kept::Input(x_in),
        });
    }
}

/// The training forward. `first`: the lowest layer the backward will visit (None: no
/// backward); `mem`: which of those layers keep their activations.
pub(super) fn forward<B: TrainBackend>(
    m: &Model<B>,
    adapters: &[Adapter<B::Tensor>],
    seqs: &[&[u32]],
    first: Option<usize>,
    mem: ActMemory,
) -> Result<Forward<B::Tensor>> {
    let batch = Batch::whole(&m.cfg, seqs)?;
    let mut lora_u: Vec<Option<B::Tensor>> = adapters.iter().map(|_| None).collect();
    let mut io = TrainIo::new(m, adapters, &mut lora_u, &batch.spans);
    io.first = first;
    io.plan = keep_plan(m, batch.ids.len(), first, mem);
    let parts = m.parts();
    let x_final = run_layers(&parts, &mut io, 0, embed(&parts, &batch)?, &batch)?;
    let layers = std::mem::take(&mut io.kept);
    Ok(Forward {
        batch,
        layers,
        lora_u,
        x_final,
    })
}
