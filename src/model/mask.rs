//! Which parts of the weights train: a list of [`Slice`]s (a parameter and a [`Region`]).
//!
//! Head h of layer l owns q_proj rows `[h*D, (h+1)*D)`, o_proj columns `[h*D, (h+1)*D)` and
//! the k/v rows of its key/value group `g = h / (H/G)`: `[g*D, (g+1)*D)`. On a GQA model a
//! k/v group is shared by H/G heads, so k/v are tuned only when asked for explicitly.

use crate::backend::Region;
use crate::heads::HeadId;
use crate::model::family::{layer_tensor_name, EMBED_NAME, FINAL_NORM_NAME, LM_HEAD_NAME};
use crate::model::{ModelConfig, ModelWeights};
use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};
use std::fmt;

pub use crate::model::family::LayerParam;

/// One weight tensor of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ParamId {
    Embed,
    Layer(usize, LayerParam),
    FinalNorm,
    /// Only on untied models; a tied model's head is `Embed`.
    LmHead,
}

impl ParamId {
    pub fn hf_name(self) -> String {
        match self {
            ParamId::Embed => EMBED_NAME.into(),
            ParamId::Layer(l, p) => layer_tensor_name(l, p),
            ParamId::FinalNorm => FINAL_NORM_NAME.into(),
            ParamId::LmHead => LM_HEAD_NAME.into(),
        }
    }
    /// Shape as held (`[out, in]` for matrices, `[d]` for norms, `[1, out]` for biases;
    /// a checkpoint stores biases as `[out]`).
    pub fn shape(self, cfg: &ModelConfig) -> Vec<usize> {
        match self {
            ParamId::Embed | ParamId::LmHead => vec![cfg.vocab_size, cfg.hidden_size],
            ParamId::FinalNorm => vec![cfg.hidden_size],
            ParamId::Layer(_, p) => p.shape(&cfg.layer_dims()),
        }
    }
    /// Position in the backward chain: embed 0, attention of layer l `1 + 2l`, MLP of layer
    /// l `2 + 2l`, final norm and head `2L + 1`.
    pub fn stage(self, n_layers: usize) -> usize {
        match self {
            ParamId::Embed => 0,
            ParamId::Layer(l, p) if p.is_attn() => 1 + 2 * l,
            ParamId::Layer(l, _) => 2 + 2 * l,
            ParamId::FinalNorm | ParamId::LmHead => 2 * n_layers + 1,
        }
    }
}

impl fmt::Display for ParamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hf_name())
    }
}

/// The tensor of `p` in `w`.
pub fn param<T>(w: &ModelWeights<T>, p: ParamId) -> Result<&T> {
    Ok(match p {
        ParamId::Embed => &w.embed,
        ParamId::FinalNorm => &w.final_norm,
        ParamId::LmHead => match &w.lm_head {
            Some(h) => h,
            None => bail!("lm_head is tied to the embedding; train model.embed_tokens.weight"),
        },
        ParamId::Layer(l, lp) => {
            ensure!(l < w.layers.len(), "no layer {l}");
            match w.layers[l].get(lp) {
                Some(t) => t,
                None => bail!("{}", missing(l, lp)),
            }
        }
    })
}

/// Why layer `l` has no `p`.
fn missing(l: usize, p: LayerParam) -> String {
    match p {
        LayerParam::QBias | LayerParam::KBias | LayerParam::VBias => {
            format!("layer {l} has no q/k/v biases (only Qwen2 models have them)")
        }
        _ => format!("this model has no {}", layer_tensor_name(l, p)),
    }
}

/// The matrix of the unembedding and its parameter: lm_head, or the embedding when tied.
/// The one place this choice is made.
pub fn head<T>(w: &ModelWeights<T>) -> (&T, ParamId) {
    match &w.lm_head {
        Some(h) => (h, ParamId::LmHead),
        None => (&w.embed, ParamId::Embed),
    }
}

/// Mutable [`param`].
pub fn param_mut<T>(w: &mut ModelWeights<T>, p: ParamId) -> Result<&mut T> {
    Ok(match p {
        ParamId::Embed => &mut w.embed,
        ParamId::FinalNorm => &mut w.final_norm,
        ParamId::LmHead => match &mut w.lm_head {
            Some(h) => h,
            None => bail!("lm_head is tied to the embedding; train model.embed_tokens.weight"),
        },
        ParamId::Layer(l, lp) => {
            ensure!(l < w.layers.len(), "no layer {l}");
            match w.layers[l].get_mut(lp) {
                Some(t) => t,
                None => bail!("{}", missing(l, lp)),
            }
        }
    })
}

/// A trainable part of one parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Slice {
    pub param: ParamId,
    pub region: Region,
}

impl fmt::Display for Slice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.region {
            Region::Full => write!(f, "{}", self.param),
            Region::Rows { start, len } => write!(f, "{}[{start}..{}, :]", self.param, start + len),
            Region::Cols { start, len } => write!(f, "{}[:, {start}..{}]", self.param, start + len),
        }
    }
}

/// Which attention projections a head contributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadProjs {
    pub q: bool,
    pub k: bool,
    pub v: bool,
    pub o: bool,
    /// Also the head's part of the q/k/v biases of the projections above (Qwen2).
    #[serde(default)]
    pub bias: bool,
}

impl HeadProjs {
    /// The paper's default: q,k,v,o on MHA models, q,o on GQA models.
    pub fn default_for(cfg: &ModelConfig) -> Self {
        let mha = !cfg.is_gqa();
        Self {
            q: true,
            k: mha,
            v: mha,
            o: true,
            bias: false,
        }
    }
    /// Parse `q,k,v,o` (any subset, comma separated), plus `bias` for those projections'
    /// biases.
    pub fn parse(s: &str) -> Result<Self> {
        let mut p = Self {
            q: false,
            k: false,
            v: false,
            o: false,
            bias: false,
        };
        for part in s.split(',').filter(|x| !x.trim().is_empty()) {
            if part.trim().eq_ignore_ascii_case("bias") {
                p.bias = true;
                continue;
            }
            match LayerParam::parse_proj(part)? {
                LayerParam::Q => p.q = true,
                LayerParam::K => p.k = true,
                LayerParam::V => p.v = true,
                LayerParam::O => p.o = true,
                other => {
                    bail!("--proj takes attention projections q,k,v,o (and bias); got {other:?}")
                }
            }
        }
        ensure!(p.q || p.k || p.v || p.o, "--proj names no projection");
        ensure!(
            !p.bias || p.q || p.k || p.v,
            "--proj bias trains the biases of q, k or v: name at least one of them"
        );
        Ok(p)
    }
}

/// The trainable slices of a model. Sorted, without duplicates, no two slices of one
/// parameter overlap.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Mask {
    pub slices: Vec<Slice>,
}

impl Mask {
    /// Nothing trains.
    pub fn none() -> Self {
        Self::default()
    }

    /// Build from slices: sorts, removes duplicates, drops slices inside a `Full` slice of
    /// the same parameter, checks bounds and overlaps.
    pub fn from_slices(cfg: &ModelConfig, mut slices: Vec<Slice>) -> Result<Self> {
        slices.sort();
        slices.dedup();
        let full: Vec<ParamId> = slices
            .iter()
            .filter(|s| s.region == Region::Full)
            .map(|s| s.param)
            .collect();
        slices.retain(|s| s.region == Region::Full || !full.contains(&s.param));
        for s in &slices {
            let shape = s.param.shape(cfg);
            if shape.len() == 1 {
                ensure!(
                    s.region == Region::Full,
                    "{}: a 1-D weight trains whole",
                    s.param
                );
            }
            s.region.check(&shape)?;
        }
        for w in slices.windows(2) {
            let (a, b) = (w[0], w[1]);
            if a.param != b.param {
                continue;
            }
            match (a.region, b.region) {
                (Region::Rows { start: s0, len: l0 }, Region::Rows { start: s1, .. })
                | (Region::Cols { start: s0, len: l0 }, Region::Cols { start: s1, .. }) => {
                    ensure!(s0 + l0 <= s1, "overlapping slices {a} and {b}")
                }
                _ => bail!(
                    "{}: rows and columns of one matrix cannot both train",
                    a.param
                ),
            }
        }
        Ok(Self { slices })
    }

    /// The slices of `heads` for the projections `projs`.
    pub fn heads(cfg: &ModelConfig, heads: &[HeadId], projs: HeadProjs) -> Result<Self> {
        let (hn, g, d) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let group = hn / g;
        ensure!(
            !projs.bias || cfg.qkv_bias,
            "bias slices asked for, but this {} model has no q/k/v biases",
            cfg.architecture
        );
        let mut slices = vec![];
        for h in heads {
            ensure!(
                h.layer < cfg.num_hidden_layers && h.head < hn,
                "head {h} does not exist in a model of {} layers x {hn} heads",
                cfg.num_hidden_layers
            );
            let rows = |i: usize| Region::Rows {
                start: i * d,
                len: d,
            };
            let l = h.layer;
            if projs.bias {
                // Biases are [1, out] rows: a head's part is a column range.
                let cols = |i: usize| Region::Cols {
                    start: i * d,
                    len: d,
                };
                let gi = h.head / group;
                for (on, p, i) in [
                    (projs.q, LayerParam::QBias, h.head),
                    (projs.k, LayerParam::KBias, gi),
                    (projs.v, LayerParam::VBias, gi),
                ] {
                    if on {
                        slices.push(Slice {
                            param: ParamId::Layer(l, p),
                            region: cols(i),
                        });
                    }
                }
            }
            if projs.q {
                slices.push(Slice {
                    param: ParamId::Layer(l, LayerParam::Q),
                    region: rows(h.head),
                });
            }
            if projs.k {
                let gi = h.head / group;
                slices.push(Slice {
                    param: ParamId::Layer(l, LayerParam::K),
                    region: rows(gi),
                });
            }
            if projs.v {
                let gi = h.head / group;
                slices.push(Slice {
                    param: ParamId::Layer(l, LayerParam::V),
                    region: rows(gi),
                });
            }
            if projs.o {
                slices.push(Slice {
                    param: ParamId::Layer(l, LayerParam::O),
                    region: Region::Cols {
                        start: h.head * d,
                        len: d,
                    },
                });
            }
        }
        Self::from_slices(cfg, slices)
    }

    /// Full fine-tuning: every weight of the model's block (the head only where untied).
    pub fn all(cfg: &ModelConfig, tied: bool) -> Self {
        let mut slices = vec![Slice {
            param: ParamId::Embed,
            region: Region::Full,
        }];
        for l in 0..cfg.num_hidden_layers {
            for p in cfg.layer_params() {
                slices.push(Slice {
                    param: ParamId::Layer(l, p),
                    region: Region::Full,
                });
            }
        }
        slices.push(Slice {
            param: ParamId::FinalNorm,
            region: Region::Full,
        });
        if !tied {
            slices.push(Slice {
                param: ParamId::LmHead,
                region: Region::Full,
            });
        }
        slices.sort();
        Self { slices }
    }

    /// Every attention projection (q,k,v,o) of `layers` (all layers when `None`).
    pub fn attn(cfg: &ModelConfig, layers: Option<&[usize]>) -> Result<Self> {
        Self::layer_params(
            cfg,
            layers,
            &[LayerParam::Q, LayerParam::K, LayerParam::V, LayerParam::O],
        )
    }

    /// The MLP (gate, up, down) of `layers` (all layers when `None`).
    pub fn mlp(cfg: &ModelConfig, layers: Option<&[usize]>) -> Result<Self> {
        Self::layer_params(
            cfg,
            layers,
            &[LayerParam::Gate, LayerParam::Up, LayerParam::Down],
        )
    }

    fn layer_params(
        cfg: &ModelConfig,
        layers: Option<&[usize]>,
        ps: &[LayerParam],
    ) -> Result<Self> {
        let all: Vec<usize> = (0..cfg.num_hidden_layers).collect();
        let layers = layers.unwrap_or(&all);
        let mut slices = vec![];
        for &l in layers {
            ensure!(
                l < cfg.num_hidden_layers,
                "layer {l} out of {}",
                cfg.num_hidden_layers
            );
            for &p in ps {
                slices.push(Slice {
                    param: ParamId::Layer(l, p),
                    region: Region::Full,
                });
            }
        }
        Self::from_slices(cfg, slices)
    }

    /// Union of two masks.
    pub fn union(&self, other: &Mask, cfg: &ModelConfig) -> Result<Self> {
        let mut s = self.slices.clone();
        s.extend_from_slice(&other.slices);
        Self::from_slices(cfg, s)
    }

    pub fn is_empty(&self) -> bool {
        self.slices.is_empty()
    }

    /// Number of trainable scalars.
    pub fn numel(&self, cfg: &ModelConfig) -> usize {
        self.slices
            .iter()
            .map(|s| s.region.numel(&s.param.shape(cfg)))
            .sum()
    }

    /// `(index, region)` of every slice of `p`.
    pub fn slices_of(&self, p: ParamId) -> impl Iterator<Item = (usize, Region)> + '_ {
        self.slices
            .iter()
            .enumerate()
            .filter(move |(_, s)| s.param == p)
            .map(|(i, s)| (i, s.region))
    }

    pub fn trains(&self, p: ParamId) -> bool {
        self.slices.iter().any(|s| s.param == p)
    }

    /// Lowest backward stage (see [`ParamId::stage`]) with a trainable slice.
    pub fn lowest_stage(&self, n_layers: usize) -> Option<usize> {
        self.slices.iter().map(|s| s.param.stage(n_layers)).min()
    }

    /// Parameters trained only in part (their frozen remainder is what `authors_decay`
    /// shrinks).
    pub fn partial_params(&self) -> Vec<ParamId> {
        let mut ps: Vec<ParamId> = self
            .slices
            .iter()
            .filter(|s| s.region != Region::Full)
            .map(|s| s.param)
            .collect();
        ps.dedup();
        ps
    }
}
