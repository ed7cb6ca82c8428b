//! One decoder layer, written once: the evaluation forward (`transformer.rs`: taps, KV
//! cache, attention patterns) and the training forward (`train/`: LoRA adapters, the
//! activations the backward needs) both run it through the one driver (`driver.rs`), with
//! what differs between them plugged in through [`LayerIo`]; path patching runs its MLP
//! block ([`mlp_block`]) on single rows. What a family's block has beyond Llama's is read
//! from the layer's weights (`LayerWeights::qkv_bias`, `qk_norm`; `model::family`).
//!
//! Op order (HF Llama/Mistral/Qwen2/Qwen3): `h = rmsnorm(x)`, q/k/v = linears of h (plus
//! Qwen2's biases), q and k normed per head (Qwen3's q/k norms), rope on q and k
//! (`model::rope`: the variant's frequencies, yarn's factor), `z = attention(q, k, v)`,
//! `x_mid = o_proj(z) + x`, `h2 = rmsnorm(x_mid)` ([`mlp_block`] from here),
//! `act = swiglu(gate(h2), up(h2))`, `x_out = down(act) + x_mid`. Hook points: `AttnIn(l)` on
//! h, `Q(l)`/`K(l)`/`V(l)` on q/k/v
//! before RoPE, `Z(l)` on z, `AttnOut(l)` on o_proj's output, `MlpOut(l)` on down's output (`ResidPre(l)`
//! is the caller's, on x before the call).

use crate::backend::{Backend, Span};
use crate::heads::HookPoint;
use crate::model::mask::{param, LayerParam, ParamId};
use crate::model::rope::{rope_qk, RopePlan};
use crate::model::{ModelConfig, ModelWeights};
use anyhow::Result;

/// What a caller plugs into [`layer_forward`].
pub(crate) trait LayerIo<B: Backend> {
    /// `x @ W^T` for weight `p` of layer `l` (plus an adapter, in training).
    fn linear(&mut self, l: usize, p: LayerParam, x: &B::Tensor) -> Result<B::Tensor>;
    /// Attention of layer `l` (q and k already rotated): returns z `[n, H*D]`.
    fn attention(
        &mut self,
        l: usize,
        q: &B::Tensor,
        k: &B::Tensor,
        v: &B::Tensor,
    ) -> Result<B::Tensor>;
    /// Apply the taps of `point` to `t` (ablate, patch, capture). None by default.
    fn hook(&mut self, point: HookPoint, t: &mut B::Tensor) -> Result<()> {
        let _ = (point, t);
        Ok(())
    }
    /// Layer `l` is done (`model::driver::run_layers`): its input residual and activations,
    /// kept for a backward or dropped (the default).
    fn keep(&mut self, l: usize, x_in: B::Tensor, acts: LayerActs<B::Tensor>) {
        let _ = (l, x_in, acts);
    }
}

/// [`LayerIo`] of a block run alone on residual rows (path patching's MLP rows): plain
/// linears, no taps, no attention.
pub(crate) struct PlainIo<'a, 'm, B: Backend>(pub &'a Parts<'m, B>);

impl<B: Backend> LayerIo<B> for PlainIo<'_, '_, B> {
    fn linear(&mut self, l: usize, p: LayerParam, x: &B::Tensor) -> Result<B::Tensor> {
        plain_linear(self.0, l, p, x)
    }
    fn attention(
        &mut self,
        l: usize,
        _q: &B::Tensor,
        _k: &B::Tensor,
        _v: &B::Tensor,
    ) -> Result<B::Tensor> {
        anyhow::bail!("layer {l}: a block run alone on residual rows has no attention")
    }
}

/// What a layer reads of the model (`Model::parts`): config, backend and weights.
pub(crate) struct Parts<'m, B: Backend> {
    pub cfg: &'m ModelConfig,
    pub backend: &'m B,
    pub weights: &'m ModelWeights<B::Tensor>,
}

/// [`LayerIo::linear`] without adapters: `x @ W^T`.
pub(crate) fn plain_linear<B: Backend>(
    m: &Parts<'_, B>,
    l: usize,
    p: LayerParam,
    x: &B::Tensor,
) -> Result<B::Tensor> {
    m.backend.linear(x, param(m.weights, ParamId::Layer(l, p))?)
}

/// `y[i] += bias` for every row i of `y [n, c]` (`bias [1, c]`): the bias broadcast by
/// gathering its one row n times, then added (existing ops, no bias kernel). A bias adds a
/// constant to the linear's output, so the input gradients do not change; its own gradient
/// (the column sums of dy) is the backward's (`train/backward.rs`).
fn add_bias<B: Backend>(b: &B, y: &mut B::Tensor, bias: &B::Tensor) -> Result<()> {
    let n = b.shape(y)[0];
    let rows = b.gather_rows(bias, &vec![0; n])?;
    b.add_assign(y, &rows)
}

/// What the backward needs of one layer besides its input residual.
pub(crate) struct LayerActs<T> {
    pub h: T, // [n, d] attn_norm(x_in)
    pub q: T, // [n, H*D] after rope
    pub k: T, // [n, G*D] after rope
    /// q and k before their per-head norms (Qwen3), as rows `[n*H, D]` and `[n*G, D]`.
    pub qk_pre: Option<(T, T)>,
    pub v: T,     // [n, G*D]
    pub z: T,     // [n, H*D]
    pub x_mid: T, // [n, d] residual after attention
    pub h2: T,    // [n, d] mlp_norm(x_mid)
    pub gate: T,  // [n, F]
    pub up: T,    // [n, F]
    pub act: T,   // [n, F]
}

/// Layer `l` from its input residual `x` (rows at `positions`, rotated by the call's `rope`
/// plan): its activations and its output residual.
pub(crate) fn layer_forward<B: Backend>(
    m: &Parts<'_, B>,
    io: &mut impl LayerIo<B>,
    l: usize,
    x: &B::Tensor,
    positions: &[usize],
    rope: &RopePlan,
) -> Result<(LayerActs<B::Tensor>, B::Tensor)> {
    let (cfg, b) = (m.cfg, m.backend);
    let _span = Span::new(b, "layer", Some(l));
    let lw = &m.weights.layers[l];
    let eps = cfg.rms_norm_eps as f32;
    let mut h = b.rmsnorm(x, &lw.attn_norm, eps)?;
    io.hook(HookPoint::AttnIn(l), &mut h)?;
    let mut q = io.linear(l, LayerParam::Q, &h)?; // [n, H*D]
    let mut k = io.linear(l, LayerParam::K, &h)?; // [n, G*D]
    let mut v = io.linear(l, LayerParam::V, &h)?;
    if let Some([bq, bk, bv]) = &lw.qkv_bias {
        add_bias(b, &mut q, bq)?;
        add_bias(b, &mut k, bk)?;
        add_bias(b, &mut v, bv)?;
    }
    let qk_pre = match &lw.qk_norm {
        Some([qn, kn]) => {
            let (q_pre, qn_out) = head_norm(m, q, qn)?;
            let (k_pre, kn_out) = head_norm(m, k, kn)?;
            (q, k) = (qn_out, kn_out);
            Some((q_pre, k_pre))
        }
        None => None,
    };
    // hook_q/k/v: after the biases (and Qwen3's q/k norms), before RoPE (a patched q or k is rotated as its row).
    io.hook(HookPoint::Q(l), &mut q)?;
    io.hook(HookPoint::K(l), &mut k)?;
    io.hook(HookPoint::V(l), &mut v)?;
    rope_qk(b, rope, &mut q, &mut k, positions)?;
    let mut z = io.attention(l, &q, &k, &v)?;
    io.hook(HookPoint::Z(l), &mut z)?;
    let mut attn_out = io.linear(l, LayerParam::O, &z)?; // [n, d]
    io.hook(HookPoint::AttnOut(l), &mut attn_out)?;
    // x_mid = attn_out + x, x_out = mlp_out + x_mid: added in place into the fresh outputs
    // (the input residual stays for the backward). IEEE addition commutes: these are the
    // bits of x + attn_out.
    let mut x_mid = attn_out;
    b.add_assign(&mut x_mid, x)?;
    let (mlp, x_out) = mlp_block(m, io, l, &x_mid)?;
    Ok((
        LayerActs {
            h,
            q,
            k,
            qk_pre,
            v,
            z,
            x_mid,
            h2: mlp.h2,
            gate: mlp.gate,
            up: mlp.up,
            act: mlp.act,
        },
        x_out,
    ))
}

/// RMSNorm of each head's slice of `x [n, heads*D]` with the weights `w [D]` (Qwen3's q/k
/// norms): returns `x` as rows `[n*heads, D]` (what the norm's backward reads) and the
/// normed `[n, heads*D]`.
fn head_norm<B: Backend>(
    m: &Parts<'_, B>,
    x: B::Tensor,
    w: &B::Tensor,
) -> Result<(B::Tensor, B::Tensor)> {
    let b = m.backend;
    let (n, width) = (b.shape(&x)[0], b.shape(&x)[1]);
    let d = m.cfg.head_dim;
    let rows = b.reshape(x, &[n * width / d, d])?;
    let normed = b.rmsnorm(&rows, w, m.cfg.rms_norm_eps as f32)?;
    Ok((rows, b.reshape(normed, &[n, width])?))
}

/// What the MLP block keeps for the backward.
pub(crate) struct MlpActs<T> {
    pub h2: T,   // [n, d] mlp_norm(x_mid)
    pub gate: T, // [n, F]
    pub up: T,   // [n, F]
    pub act: T,  // [n, F]
}

/// The MLP block of layer `l` on residual rows `x_mid [n, d]`: `h2 = rmsnorm(x_mid)`,
/// `act = swiglu(gate(h2), up(h2))`, `x_out = down(act) + x_mid`, `MlpOut(l)` hooked on
/// down's output. Returns its activations and `x_out`.
pub(crate) fn mlp_block<B: Backend>(
    m: &Parts<'_, B>,
    io: &mut impl LayerIo<B>,
    l: usize,
    x_mid: &B::Tensor,
) -> Result<(MlpActs<B::Tensor>, B::Tensor)> {
    let b = m.backend;
    let eps = m.cfg.rms_norm_eps as f32;
    let h2 = b.rmsnorm(x_mid, &m.weights.layers[l].mlp_norm, eps)?;
    let gate = io.linear(l, LayerParam::Gate, &h2)?; // [n, F]
    let up = io.linear(l, LayerParam::Up, &h2)?;
    let act = b.swiglu(&gate, &up)?;
    let mut mlp_out = io.linear(l, LayerParam::Down, &act)?; // [n, d]
    io.hook(HookPoint::MlpOut(l), &mut mlp_out)?;
    let mut x_out = mlp_out;
    b.add_assign(&mut x_out, x_mid)?;
    Ok((MlpActs { h2, gate, up, act }, x_out))
}
