//! Heads and taps: where a forward pass can be read (capture) or written (patch, ablate).
//!
//! Names follow TransformerLens: `z` (`hook_z`) is a head's attention output before
//! `o_proj`, `[rows, H * D]` with head h in columns `[h*D, (h+1)*D)`; `pattern` is a head's
//! attention probabilities; `resid_pre(l)` is the residual stream entering layer l
//! (`resid_pre(L)` is the stream after the last layer, before the final norm).

use crate::model::HostTensor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One attention head: `layer` in `0..L`, `head` in `0..H` (a query head).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HeadId {
    pub layer: usize,
    pub head: usize,
}

impl HeadId {
    pub fn new(layer: usize, head: usize) -> Self {
        Self { layer, head }
    }
}

impl std::fmt::Display for HeadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "L{}H{}", self.layer, self.head)
    }
}

/// A place in the forward pass where activations can be captured or overwritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum HookPoint {
    /// Residual stream entering layer l, `[rows, d_model]`; l = L is the final residual.
    ResidPre(usize),
    /// Input of layer l's attention (after its RMSNorm), `[rows, d_model]`: path patching
    /// resets it to the reference run's value to freeze a layer's heads.
    AttnIn(usize),
    /// Per-head attention output of layer l before `o_proj`, `[rows, H * D]`.
    Z(usize),
    /// Output of `o_proj` of layer l, `[rows, d_model]`.
    AttnOut(usize),
    /// Output of the MLP of layer l, `[rows, d_model]`.
    MlpOut(usize),
}

impl HookPoint {
    pub fn layer(self) -> usize {
        match self {
            HookPoint::ResidPre(l)
            | HookPoint::AttnIn(l)
            | HookPoint::Z(l)
            | HookPoint::AttnOut(l)
            | HookPoint::MlpOut(l) => l,
        }
    }

    /// The TransformerLens name of the point, for users who know those:
    /// `blocks.{l}.hook_resid_pre` (for l = L, the final residual, TransformerLens says
    /// `blocks.{L-1}.hook_resid_post`), `blocks.{l}.ln1.hook_normalized` (TransformerLens takes
    /// it before the norm's weight, which it folds into W_Q/W_K/W_V; here it is after),
    /// `blocks.{l}.attn.hook_z`, `blocks.{l}.hook_attn_out`, `blocks.{l}.hook_mlp_out`.
    pub fn tl_name(self) -> String {
        match self {
            HookPoint::ResidPre(l) => format!("blocks.{l}.hook_resid_pre"),
            HookPoint::AttnIn(l) => format!("blocks.{l}.ln1.hook_normalized"),
            HookPoint::Z(l) => format!("blocks.{l}.attn.hook_z"),
            HookPoint::AttnOut(l) => format!("blocks.{l}.hook_attn_out"),
            HookPoint::MlpOut(l) => format!("blocks.{l}.hook_mlp_out"),
        }
    }
}

/// Which positions of each sequence a capture (or the logits) covers. Positions are
/// absolute token positions within a sequence (those fed in this call).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Positions {
    /// No rows.
    None,
    /// Every token of this call.
    All,
    /// The last token of each sequence in this call.
    #[default]
    Last,
    /// These absolute positions, where present in this call.
    At(Vec<usize>),
}

/// Overwrite `values.len()` columns from `col0` of one token's row at `point`.
#[derive(Debug, Clone, PartialEq)]
pub struct Patch {
    pub point: HookPoint,
    pub seq: usize,
    pub pos: usize,
    pub col0: usize,
    pub values: Vec<f32>,
}

/// Overwrite `values.len()` columns from `col0` at `point` for every token of every sequence
/// (mean-ablation). Applied before patches, so a patch wins where both apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Ablation {
    pub point: HookPoint,
    pub col0: usize,
    pub values: Vec<f32>,
}

/// What a forward pass should capture and overwrite. Empty by default, with logits at the
/// last position of each sequence.
#[derive(Debug, Clone, Default)]
pub struct Taps {
    pub capture: Vec<(HookPoint, Positions)>,
    /// Heads whose attention probabilities to return (for every sequence).
    pub patterns: Vec<HeadId>,
    pub patches: Vec<Patch>,
    pub ablations: Vec<Ablation>,
    pub logits: Positions,
}

impl Taps {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn with_logits(mut self, p: Positions) -> Self {
        self.logits = p;
        self
    }
    pub fn capture(mut self, point: HookPoint, p: Positions) -> Self {
        self.capture.push((point, p));
        self
    }
    /// Capture `z` of every layer at `p`.
    pub fn capture_all_z(mut self, n_layers: usize, p: Positions) -> Self {
        for l in 0..n_layers {
            self.capture.push((HookPoint::Z(l), p.clone()));
        }
        self
    }
    pub fn pattern(mut self, head: HeadId) -> Self {
        self.patterns.push(head);
        self
    }
    /// Set `z` of `head` at (`seq`, `pos`) to `values` (`[head_dim]`).
    pub fn patch_z(
        mut self,
        head: HeadId,
        head_dim: usize,
        seq: usize,
        pos: usize,
        values: Vec<f32>,
    ) -> Self {
        self.patches.push(Patch {
            point: HookPoint::Z(head.layer),
            seq,
            pos,
            col0: head.head * head_dim,
            values,
        });
        self
    }
    /// Set `z` of `head` to `values` (`[head_dim]`) at every token (mean-ablation).
    pub fn ablate_z(mut self, head: HeadId, head_dim: usize, values: Vec<f32>) -> Self {
        self.ablations.push(Ablation {
            point: HookPoint::Z(head.layer),
            col0: head.head * head_dim,
            values,
        });
        self
    }
    /// Does this call touch `point` at all?
    pub(crate) fn touches(&self, point: HookPoint) -> bool {
        self.capture.iter().any(|(p, _)| *p == point)
            || self.patches.iter().any(|p| p.point == point)
            || self.ablations.iter().any(|a| a.point == point)
    }
}

/// Captured rows: `index[i] = (seq, pos)` names row i of `data` `[rows, width]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Capture {
    pub index: Vec<(usize, usize)>,
    pub data: HostTensor,
}

impl Default for HostTensor {
    fn default() -> Self {
        HostTensor::zeros(vec![0, 0])
    }
}

impl Capture {
    pub fn width(&self) -> usize {
        self.data.shape.get(1).copied().unwrap_or(0)
    }
    /// The row of (`seq`, `pos`), if captured.
    pub fn row(&self, seq: usize, pos: usize) -> Option<&[f32]> {
        let i = self.index.iter().position(|&k| k == (seq, pos))?;
        let w = self.width();
        Some(&self.data.data[i * w..(i + 1) * w])
    }
    /// Row i.
    pub fn row_at(&self, i: usize) -> &[f32] {
        let w = self.width();
        &self.data.data[i * w..(i + 1) * w]
    }
    /// The last captured row of `seq`.
    pub fn last_of(&self, seq: usize) -> Option<&[f32]> {
        let i = self.index.iter().rposition(|&(s, _)| s == seq)?;
        Some(self.row_at(i))
    }
}

/// Everything a forward pass returns.
#[derive(Debug, Clone, Default)]
pub struct ForwardOutput {
    /// Logits `[rows, vocab]` at the rows chosen by `Taps::logits`.
    pub logits: Capture,
    pub captures: BTreeMap<HookPoint, Capture>,
    /// `(head, seq) -> [q_len, kv_len]` probabilities.
    pub patterns: BTreeMap<(HeadId, usize), HostTensor>,
}

impl ForwardOutput {
    pub fn z(&self, layer: usize) -> Option<&Capture> {
        self.captures.get(&HookPoint::Z(layer))
    }
}
