//! RoPE variants: which one a `config.json` asks for, and the one place their inverse
//! frequencies are computed, as HF transformers' `modeling_rope_utils.py` computes them (f32
//! tensor arithmetic, in the same order).
//!
//! Both backends rotate with the precomputed `inv_freq` ([`crate::backend::Backend::rope`]):
//! a variant changes the kernel's input, never the kernel. Two variants need more than a
//! table:
//! - `dynamic` (NTK) depends on the sequence length: HF recomputes `inv_freq` when
//!   `max(position_ids) + 1` exceeds `max_position_embeddings`. pinpoint gives each sequence
//!   of a call the table of its own length (its last position + 1; [`Rope::plan`]), which is
//!   what HF computes for that sequence alone on a freshly loaded model, so a result does not
//!   depend on how sequences were batched (HF takes the longest of a padded batch, and keeps
//!   the largest length it has seen: a state pinpoint does not keep; in generation both grow
//!   with the sequence, so they agree).
//! - `yarn` multiplies HF's cos and sin by an attention factor (mscale). The rotation is
//!   linear, so pinpoint rotates q and k with the plain cos/sin and then scales them by the
//!   factor ([`rope_qk`]); the backward scales dq and dk before the inverse rotation
//!   ([`rope_qk_bwd`]). The attention logits carry the factor squared, as in HF.

use crate::backend::{rope_inv_freq, Backend, SeqSpan, TrainBackend};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// A RoPE variant with its parameters (from `rope_scaling` or `rope_parameters`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Positions divided by `factor` (`inv_freq / factor`).
    Linear { factor: f64 },
    /// NTK: the base grows with the sequence length past `max_position_embeddings`.
    Dynamic {
        factor: f64,
        max_position_embeddings: usize,
    },
    /// YaRN: a per-frequency blend of the original and the interpolated frequencies, and an
    /// attention factor on cos/sin.
    Yarn {
        factor: f64,
        original_max_position_embeddings: usize,
        beta_fast: f64,
        beta_slow: f64,
        truncate: bool,
        attention_factor: f64,
    },
    /// Llama 3: low frequencies divided by `factor`, high ones kept, a smooth blend between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// RoPE of a model: base, head dimension and variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rope {
    pub theta: f64,
    pub head_dim: usize,
    pub scaling: RopeScaling,
}

/// What one forward's rotation uses: `inv_freq [head_dim / 2]` and the factor on cos/sin.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeTable {
    pub inv_freq: Vec<f32>,
    pub attention_factor: f32,
}

fn num(spec: &serde_json::Value, key: &str) -> Option<f64> {
    spec.get(key).and_then(|x| x.as_f64())
}

impl RopeScaling {
    /// Its `rope_type` name.
    pub fn name(&self) -> &'static str {
        match self {
            RopeScaling::Default => "default",
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Dynamic { .. } => "dynamic",
            RopeScaling::Yarn { .. } => "yarn",
            RopeScaling::Llama3 { .. } => "llama3",
        }
    }
}

impl Rope {
    /// Read the variant from a config: `rope_scaling` (the older key, which HF prefers when
    /// both are set) or `rope_parameters`; `rope_theta` from there or the top level. Errors
    /// name the config key.
    pub fn from_config(v: &serde_json::Value, head_dim: usize) -> Result<Self> {
        let (key, spec) = match v.get("rope_scaling").filter(|x| !x.is_null()) {
            Some(s) => ("rope_scaling", Some(s)),
            None => (
                "rope_parameters",
                v.get("rope_parameters").filter(|x| !x.is_null()),
            ),
        };
        let top_theta = v.get("rope_theta").and_then(|x| x.as_f64());
        let Some(spec) = spec else {
            return Ok(Self {
                theta: top_theta.unwrap_or(10000.0),
                head_dim,
                scaling: RopeScaling::Default,
            });
        };
        if !spec.is_object() {
            bail!("config key `{key}` is {spec}, not an object");
        }
        let theta = match (num(spec, "rope_theta"), top_theta) {
            (Some(a), Some(b)) if a != b => {
                bail!("config keys `rope_theta` ({b}) and `{key}.rope_theta` ({a}) disagree")
            }
            (a, b) => a.or(b).unwrap_or(10000.0),
        };
        let kind = spec
            .get("rope_type")
            .or_else(|| spec.get("type"))
            .and_then(|s| s.as_str())
            .unwrap_or("default");
        let prf = num(spec, "partial_rotary_factor")
            .or_else(|| num(v, "partial_rotary_factor"))
            .unwrap_or(1.0);
        if prf != 1.0 {
            bail!("config key `partial_rotary_factor` is {prf}: pinpoint rotates whole heads only (1.0)");
        }
        let max_pos = v
            .get("max_position_embeddings")
            .and_then(|x| x.as_u64())
            .unwrap_or(4096) as usize;
        let s = Spec {
            v,
            spec,
            key,
            kind,
            max_pos,
        };
        let scaling = match kind {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear {
                factor: s.positive("factor", s.need("factor")?)?,
            },
            "dynamic" => RopeScaling::Dynamic {
                factor: s.positive("factor", s.need("factor")?)?,
                max_position_embeddings: max_pos,
            },
            "llama3" => {
                let (lo, hi) = (s.need("low_freq_factor")?, s.need("high_freq_factor")?);
                if !(lo > 0.0 && hi > lo) {
                    bail!("config key `{key}`: low_freq_factor {lo} and high_freq_factor {hi} must satisfy 0 < low < high");
                }
                RopeScaling::Llama3 {
                    factor: s.positive("factor", s.need("factor")?)?,
                    low_freq_factor: lo,
                    high_freq_factor: hi,
                    original_max_position_embeddings: s.original_max(),
                }
            }
            "yarn" => s.yarn()?,
            other => bail!(
                "config key `{key}` has rope_type {other:?}, which pinpoint does not run (it runs default, linear, dynamic, yarn, llama3)"
            ),
        };
        Ok(Self {
            theta,
            head_dim,
            scaling,
        })
    }

    /// Inverse frequencies and attention factor for a sequence whose last position is
    /// `max_pos` (only `dynamic` looks at it).
    pub fn table(&self, max_pos: usize) -> RopeTable {
        let d = self.head_dim;
        let base = rope_inv_freq(d, self.theta);
        let plain = |inv_freq| RopeTable {
            inv_freq,
            attention_factor: 1.0,
        };
        match self.scaling {
            RopeScaling::Default => plain(base),
            RopeScaling::Linear { factor } => {
                plain(base.iter().map(|f| f / factor as f32).collect())
            }
            RopeScaling::Dynamic {
                factor,
                max_position_embeddings: mp,
            } => {
                let seq_len = max_pos + 1;
                if seq_len <= mp {
                    return plain(base);
                }
                // f32 as HF's tensor arithmetic (seq_len is a tensor there).
                let (f, s, m) = (factor as f32, seq_len as f32, mp as f32);
                let grow =
                    (f * s / m - (factor - 1.0) as f32).powf((d as f64 / (d - 2) as f64) as f32);
                let new_base = self.theta as f32 * grow;
                plain(
                    (0..d / 2)
                        .map(|i| 1.0 / new_base.powf((2 * i) as f32 / d as f32))
                        .collect(),
                )
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor: lo,
                high_freq_factor: hi,
                original_max_position_embeddings: omax,
            } => {
                let old = omax as f64;
                let (low_wl, high_wl) = (old / lo, old / hi);
                let (fac, lo32, den) = (factor as f32, lo as f32, (hi - lo) as f32);
                let two_pi = (2.0 * std::f64::consts::PI) as f32;
                let inv = base
                    .iter()
                    .map(|&f| {
                        // `2 * math.pi / inv_freq` is `inv_freq.reciprocal() * (2 pi)` in torch.
                        let wavelen = (1.0 / f) * two_pi;
                        let w = wavelen as f64;
                        let llama = if w > low_wl { f / fac } else { f };
                        let smooth = ((1.0 / wavelen) * old as f32 - lo32) / den;
                        let smoothed = (1.0 - smooth) * llama / fac + smooth * llama;
                        // HF: `~(wavelen < high) * ~(wavelen > low)` (wavelengths are finite here).
                        let medium = (high_wl..=low_wl).contains(&w);
                        if medium {
                            smoothed
                        } else {
                            llama
                        }
                    })
                    .collect();
                plain(inv)
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: omax,
                beta_fast,
                beta_slow,
                truncate,
                attention_factor,
            } => {
                let dim = d as f64;
                let corr = |rot: f64| {
                    (dim * (omax as f64 / (rot * 2.0 * std::f64::consts::PI)).ln())
                        / (2.0 * self.theta.ln())
                };
                let (mut low, mut high) = (corr(beta_fast), corr(beta_slow));
                if truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
                if low == high {
                    high += 0.001;
                }
                let (fac, lo32, span) = (factor as f32, low as f32, (high - low) as f32);
                let inv = (0..d / 2)
                    .map(|i| {
                        let pos_freq = (self.theta as f32).powf((2 * i) as f32 / d as f32);
                        let extra = 1.0 / pos_freq;
                        let inter = 1.0 / (fac * pos_freq);
                        let ramp = ((i as f32 - lo32) / span).clamp(0.0, 1.0);
                        let ef = 1.0 - ramp;
                        inter * (1.0 - ef) + extra * ef
                    })
                    .collect();
                RopeTable {
                    inv_freq: inv,
                    attention_factor: attention_factor as f32,
                }
            }
        }
    }

    /// Do a sequence's frequencies depend on its length (dynamic NTK)? Then keys computed
    /// at a shorter length (a KV-cached prefix) are rotated otherwise than in one forward of
    /// the whole sequence, as in HF.
    pub fn length_dependent(&self) -> bool {
        matches!(self.scaling, RopeScaling::Dynamic { .. })
    }

    /// How a call over the sequences `spans` rotates its rows: one table for every row,
    /// except under dynamic NTK where sequences of different lengths past
    /// `max_position_embeddings` get their own tables.
    pub fn plan(&self, spans: &[SeqSpan]) -> RopePlan {
        let RopeScaling::Dynamic {
            max_position_embeddings: mp,
            ..
        } = self.scaling
        else {
            return RopePlan {
                head_dim: self.head_dim,
                parts: vec![(None, self.table(0))],
            };
        };
        // Sequences at or below the context share the plain table (length `mp`).
        let mut groups: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for s in spans {
            let len = (s.pos0 + s.q_len).max(mp);
            groups
                .entry(len)
                .or_default()
                .extend(s.q_start..s.q_start + s.q_len);
        }
        let parts = if groups.len() <= 1 {
            let len = groups.keys().next().copied().unwrap_or(mp);
            vec![(None, self.table(len - 1))]
        } else {
            groups
                .into_iter()
                .map(|(len, rows)| (Some(rows), self.table(len - 1)))
                .collect()
        };
        RopePlan {
            head_dim: self.head_dim,
            parts,
        }
    }

    /// One line for `inspect`: the variant and its parameters.
    pub fn describe(&self) -> String {
        let p = match &self.scaling {
            RopeScaling::Default => String::new(),
            RopeScaling::Linear { factor } => format!(", factor {factor}"),
            RopeScaling::Dynamic {
                factor,
                max_position_embeddings,
            } => format!(", factor {factor}, past {max_position_embeddings} positions"),
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                ..
            } => format!(
                ", factor {factor}, original context {original_max_position_embeddings}, beta {beta_fast}/{beta_slow}, attention factor {attention_factor:.6}"
            ),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => format!(
                ", factor {factor}, low/high freq factor {low_freq_factor}/{high_freq_factor}, original context {original_max_position_embeddings}"
            ),
        };
        format!("{} (theta {}{p})", self.scaling.name(), self.theta)
    }
}

/// The RoPE spec object of a config (`rope_scaling` or `rope_parameters`, named `key`) of
/// rope_type `kind`, with the config `v` it came from.
struct Spec<'a> {
    v: &'a serde_json::Value,
    spec: &'a serde_json::Value,
    key: &'static str,
    kind: &'a str,
    max_pos: usize,
}

impl Spec<'_> {
    /// A number the rope_type needs.
    fn need(&self, k: &str) -> Result<f64> {
        num(self.spec, k).with_context(|| {
            format!(
                "config key `{}` (rope_type {:?}) lacks the number `{k}`",
                self.key, self.kind
            )
        })
    }
    fn positive(&self, k: &str, x: f64) -> Result<f64> {
        if !(x.is_finite() && x > 0.0) {
            bail!(
                "config key `{}`: `{k}` is {x}; it must be above 0",
                self.key
            );
        }
        Ok(x)
    }
    /// HF: `original_max_position_embeddings` inside the spec, else a top-level one, else
    /// max_position_embeddings.
    fn original_max(&self) -> usize {
        self.spec
            .get("original_max_position_embeddings")
            .or_else(|| self.v.get("original_max_position_embeddings"))
            .and_then(|x| x.as_u64())
            .map(|x| x as usize)
            .unwrap_or(self.max_pos)
    }
    /// yarn's parameters, HF's defaults where the spec has none.
    fn yarn(&self) -> Result<RopeScaling> {
        let spec = self.spec;
        let omax = self.original_max();
        let factor = match num(spec, "factor") {
            Some(f) => f,
            None if spec.get("original_max_position_embeddings").is_some() => {
                self.max_pos as f64 / omax as f64
            }
            None => self.need("factor")?,
        };
        let factor = self.positive("factor", factor)?;
        let get_mscale = |scale: f64, m: f64| {
            if scale <= 1.0 {
                1.0
            } else {
                0.1 * m * scale.ln() + 1.0
            }
        };
        let attention_factor = match num(spec, "attention_factor") {
            Some(a) => self.positive("attention_factor", a)?,
            None => match (num(spec, "mscale"), num(spec, "mscale_all_dim")) {
                (Some(m), Some(ma)) if m != 0.0 && ma != 0.0 => {
                    get_mscale(factor, m) / get_mscale(factor, ma)
                }
                _ => get_mscale(factor, 1.0),
            },
        };
        // HF: `get("beta_fast") or 32` (a 0 also falls back).
        let or = |k: &str, d: f64| num(spec, k).filter(|x| *x != 0.0).unwrap_or(d);
        Ok(RopeScaling::Yarn {
            factor,
            original_max_position_embeddings: omax,
            beta_fast: or("beta_fast", 32.0),
            beta_slow: or("beta_slow", 1.0),
            truncate: spec
                .get("truncate")
                .and_then(|x| x.as_bool())
                .unwrap_or(true),
            attention_factor,
        })
    }
}

/// The tables of one call ([`Rope::plan`]): `(rows, table)` parts, `None` for every row.
#[derive(Debug, Clone, PartialEq)]
pub struct RopePlan {
    pub head_dim: usize,
    pub parts: Vec<(Option<Vec<usize>>, RopeTable)>,
}

impl RopePlan {
    /// Apply `f(x, positions, table)` to the rows of each part of `x` (gathered and scattered
    /// back where a part is not every row).
    fn each<B: Backend, F>(&self, b: &B, x: &mut B::Tensor, positions: &[usize], f: F) -> Result<()>
    where
        F: Fn(&mut B::Tensor, &[usize], &RopeTable) -> Result<()>,
    {
        for (rows, t) in &self.parts {
            match rows {
                None => f(x, positions, t)?,
                Some(rows) => {
                    let pos: Vec<usize> = rows.iter().map(|&r| positions[r]).collect();
                    let mut sub = b.gather_rows(x, rows)?;
                    f(&mut sub, &pos, t)?;
                    b.scatter_rows(x, rows, &sub)?;
                }
            }
        }
        Ok(())
    }
}

/// Rotate `q` and `k` (rows at `positions`) as the model's RoPE does: the inverse frequencies
/// of the plan, then the attention factor (yarn) on both.
pub(crate) fn rope_qk<B: Backend>(
    b: &B,
    plan: &RopePlan,
    q: &mut B::Tensor,
    k: &mut B::Tensor,
    positions: &[usize],
) -> Result<()> {
    let d = plan.head_dim;
    let f = |x: &mut B::Tensor, pos: &[usize], t: &RopeTable| -> Result<()> {
        b.rope(x, d, pos, &t.inv_freq)?;
        if t.attention_factor != 1.0 {
            b.scale(x, t.attention_factor)?;
        }
        Ok(())
    };
    plan.each(b, q, positions, f)?;
    plan.each(b, k, positions, f)
}

/// Backward of [`rope_qk`], in place on the gradients of the rotated q and k.
pub(crate) fn rope_qk_bwd<B: TrainBackend>(
    b: &B,
    plan: &RopePlan,
    dq: &mut B::Tensor,
    dk: &mut B::Tensor,
    positions: &[usize],
) -> Result<()> {
    let d = plan.head_dim;
    let f = |x: &mut B::Tensor, pos: &[usize], t: &RopeTable| -> Result<()> {
        if t.attention_factor != 1.0 {
            b.scale(x, t.attention_factor)?;
        }
        b.rope_bwd(x, d, pos, &t.inv_freq)
    };
    plan.each(b, dq, positions, f)?;
    plan.each(b, dk, positions, f)
}
