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

/// TransformerLens' head label (`HookedTransformer.all_head_labels()`): `L{layer}H{head}`.
impl std::fmt::Display for HeadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "L{}H{}", self.layer, self.head)
    }
}

/// The ways to name a head, for error messages.
pub const HEAD_FORMS: &str = "write a head as L{layer}H{head} (TransformerLens' head label, \
     e.g. L3H5), blocks.{layer}.attn.hook_z[:, :, {head}] (a position in the middle slot is \
     allowed and names the same head) or blocks.{layer}.attn.hook_pattern[:, {head}]";

impl HeadId {
    /// The head's slice of TransformerLens' `hook_z` (`[batch, pos, head_index, d_head]`):
    /// `blocks.{l}.attn.hook_z[:, {pos}, {h}]`, `pos` an index in TransformerLens' terms:
    /// `:` (every position), `-1` (the last), `17`.
    pub fn z_hook(self, pos: &str) -> String {
        format!(
            "{}[:, {pos}, {}]",
            HookPoint::Z(self.layer).tl_name(),
            self.head
        )
    }

    /// The head's slice of TransformerLens' `hook_pattern` (`[batch, head_index, query_pos,
    /// key_pos]`): `blocks.{l}.attn.hook_pattern[:, {h}]`.
    pub fn pattern_hook(self) -> String {
        format!("{}[:, {}]", pattern_tl_name(self.layer), self.head)
    }

    /// Heads separated by commas (commas inside `[...]` belong to a hook's index).
    pub fn parse_list(s: &str) -> anyhow::Result<Vec<HeadId>> {
        let (mut parts, mut depth, mut start) = (vec![], 0i32, 0);
        for (i, c) in s.char_indices() {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&s[start..]);
        parts
            .into_iter()
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::parse)
            .collect()
    }
}

/// TransformerLens' name of layer l's attention probabilities (`Taps::pattern`).
pub fn pattern_tl_name(layer: usize) -> String {
    format!("blocks.{layer}.attn.hook_pattern")
}

impl std::str::FromStr for HeadId {
    type Err = anyhow::Error;
    /// `L3H5` (any case), `blocks.3.attn.hook_z[:, :, 5]` (or `[:, 17, 5]`, `[:, -1, 5]`) or
    /// `blocks.3.attn.hook_pattern[:, 5]`; anything else is an error listing these forms.
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let bad = || anyhow::anyhow!("bad head {s:?}: {HEAD_FORMS}");
        let t = s.trim();
        let Some((hook, index)) = t.strip_suffix(']').and_then(|t| t.split_once('[')) else {
            let up = t.to_ascii_uppercase();
            let (l, h) = up
                .strip_prefix('L')
                .and_then(|r| r.split_once('H'))
                .ok_or_else(bad)?;
            return Ok(HeadId::new(
                l.parse().map_err(|_| bad())?,
                h.parse().map_err(|_| bad())?,
            ));
        };
        let idx: Vec<&str> = index.split(',').map(str::trim).collect();
        let layer = |name: &str, want: &str| {
            let l = name.strip_prefix("blocks.")?.strip_suffix(want)?;
            l.parse::<usize>().ok()
        };
        let head = match (hook.parse::<HookPoint>(), idx.as_slice()) {
            (Ok(HookPoint::Z(l)), [":", p, h]) if *p == ":" || p.parse::<i64>().is_ok() => {
                h.parse().ok().map(|h| HeadId::new(l, h))
            }
            (_, [":", h]) => layer(hook, ".attn.hook_pattern")
                .and_then(|l| Some(HeadId::new(l, h.parse().ok()?))),
            _ => None,
        };
        head.ok_or_else(bad)
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
    /// Queries of layer l after the linear (and bias), before RoPE, `[rows, H * D]`
    /// (TransformerLens' `hook_q`, `[batch, pos, head_index, d_head]`): a patch here is
    /// rotated as the clean query is.
    Q(usize),
    /// Keys of layer l after the linear (and bias), before RoPE, `[rows, G * D]` (`hook_k`).
    K(usize),
    /// Values of layer l after the linear (and bias), `[rows, G * D]` (`hook_v`).
    V(usize),
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
            | HookPoint::Q(l)
            | HookPoint::K(l)
            | HookPoint::V(l)
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
            HookPoint::Q(l) => format!("blocks.{l}.attn.hook_q"),
            HookPoint::K(l) => format!("blocks.{l}.attn.hook_k"),
            HookPoint::V(l) => format!("blocks.{l}.attn.hook_v"),
            HookPoint::Z(l) => format!("blocks.{l}.attn.hook_z"),
            HookPoint::AttnOut(l) => format!("blocks.{l}.hook_attn_out"),
            HookPoint::MlpOut(l) => format!("blocks.{l}.hook_mlp_out"),
        }
    }
}

/// The hook names [`HookPoint`]'s parser takes, for error messages.
pub const HOOK_FORMS: &str = "accepted: blocks.{l}.hook_resid_pre, blocks.{l}.hook_resid_post \
     (= blocks.{l+1}.hook_resid_pre), blocks.{l}.ln1.hook_normalized, blocks.{l}.attn.hook_q \
     (hook_k, hook_v: before RoPE), blocks.{l}.attn.hook_z, \
     blocks.{l}.hook_attn_out, blocks.{l}.hook_mlp_out";

impl std::str::FromStr for HookPoint {
    type Err = anyhow::Error;
    /// TransformerLens' names ([`HookPoint::tl_name`]), and `blocks.{l}.hook_resid_post`
    /// (the residual after layer l, which is `resid_pre` of layer l + 1).
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let bad = || anyhow::anyhow!("unknown hook point {s:?}; {HOOK_FORMS}");
        let (l, name) = s
            .trim()
            .strip_prefix("blocks.")
            .and_then(|r| r.split_once('.'))
            .ok_or_else(bad)?;
        let l: usize = l.parse().map_err(|_| bad())?;
        Ok(match name {
            "hook_resid_pre" => HookPoint::ResidPre(l),
            "hook_resid_post" => HookPoint::ResidPre(l + 1),
            "ln1.hook_normalized" => HookPoint::AttnIn(l),
            "attn.hook_q" => HookPoint::Q(l),
            "attn.hook_k" => HookPoint::K(l),
            "attn.hook_v" => HookPoint::V(l),
            "attn.hook_z" => HookPoint::Z(l),
            "hook_attn_out" => HookPoint::AttnOut(l),
            "hook_mlp_out" => HookPoint::MlpOut(l),
            _ => return Err(bad()),
        })
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

/// A function run at a hook point on the host: it sees the activation `[rows, width]`
/// (packed rows; `index[i] = (seq, pos)` names row i) and may edit it in place, returning
/// `true` when it did (so a device copy is written back). Front ends (the Python package's
/// `run_with_hooks`) put their hooks here; the engine knows nothing of them.
pub type HookFn = std::sync::Arc<
    dyn Fn(HookPoint, &[(usize, usize)], &mut HostTensor) -> anyhow::Result<bool> + Send + Sync,
>;

/// A [`HookFn`] at one hook point. Run after ablations and patches, before captures.
#[derive(Clone)]
pub struct Callback {
    pub point: HookPoint,
    pub f: HookFn,
}

impl std::fmt::Debug for Callback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Callback({:?})", self.point)
    }
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
    /// Host functions at hook points, in order.
    pub callbacks: Vec<Callback>,
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
            || self.callbacks.iter().any(|c| c.point == point)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every hook point's TransformerLens name parses back to it; `hook_resid_post` is the
    /// next layer's `hook_resid_pre`; a bad name lists the accepted forms.
    #[test]
    fn hook_names_round_trip() {
        for l in [0, 1, 31] {
            for p in [
                HookPoint::ResidPre(l),
                HookPoint::AttnIn(l),
                HookPoint::Q(l),
                HookPoint::K(l),
                HookPoint::V(l),
                HookPoint::Z(l),
                HookPoint::AttnOut(l),
                HookPoint::MlpOut(l),
            ] {
                assert_eq!(p.tl_name().parse::<HookPoint>().unwrap(), p, "{p:?}");
            }
        }
        let post: HookPoint = "blocks.4.hook_resid_post".parse().unwrap();
        assert_eq!(post, HookPoint::ResidPre(5));
        for bad in [
            "blocks.x.attn.hook_z",
            "blocks.3.attn.hook_query",
            "resid_pre.3",
            "",
        ] {
            let e = bad.parse::<HookPoint>().unwrap_err().to_string();
            assert!(e.contains("blocks.{l}.attn.hook_z"), "{bad}: {e}");
        }
    }

    /// A head's label, z hook (with and without a position) and pattern hook parse back
    /// to it; lists split outside brackets; bad names list the accepted forms.
    #[test]
    fn head_names_round_trip() {
        for h in [HeadId::new(0, 0), HeadId::new(3, 5), HeadId::new(31, 12)] {
            assert_eq!(h.to_string().parse::<HeadId>().unwrap(), h);
            assert_eq!(h.to_string().to_lowercase().parse::<HeadId>().unwrap(), h);
            for pos in [":", "17", "-1"] {
                assert_eq!(h.z_hook(pos).parse::<HeadId>().unwrap(), h);
            }
            assert_eq!(h.pattern_hook().parse::<HeadId>().unwrap(), h);
        }
        assert_eq!(
            HeadId::new(3, 5).z_hook(":"),
            "blocks.3.attn.hook_z[:, :, 5]"
        );
        assert_eq!(
            HeadId::new(3, 5).z_hook("-1"),
            "blocks.3.attn.hook_z[:, -1, 5]"
        );
        assert_eq!(
            HeadId::new(3, 5).pattern_hook(),
            "blocks.3.attn.hook_pattern[:, 5]"
        );
        assert_eq!(
            HeadId::parse_list(
                "L2H3, blocks.0.attn.hook_z[:,:,1],blocks.4.attn.hook_pattern[:, 2],"
            )
            .unwrap(),
            [HeadId::new(2, 3), HeadId::new(0, 1), HeadId::new(4, 2)]
        );
        for bad in [
            "2.3",
            "L3",
            "blocks.3.attn.hook_z",
            "blocks.3.attn.hook_z[5]",
            "blocks.3.hook_resid_pre[:, :, 5]",
            "blocks.3.attn.hook_pattern[:, :, 5]",
            "blocks.3.attn.hook_z[:, x, 5]",
        ] {
            let e = bad.parse::<HeadId>().unwrap_err().to_string();
            assert!(
                e.contains("L3H5") && e.contains("hook_pattern[:, {head}]"),
                "{bad}: {e}"
            );
        }
    }
}
