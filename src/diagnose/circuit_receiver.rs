//! What a circuit reads of the clean runs, and a receiving head's attention at the last
//! position recomputed on the host (f64) with one input channel replaced.
//!
//! Only the last position's residual moves when a sender's last-position output is patched,
//! so only the receiver's query, key and value at the last position t change; its z at t is
//! `softmax(scale * q_t . k_j) . v_j` over the visible keys j (causal, sliding window), with q
//! and k rotated by RoPE as the model does (`cos`, `sin` of `pos * inv_freq` in f32, times the
//! variant's attention factor).

use super::circuit_edge::Channel;
use super::metric::Metric;
use super::pairs::TokenPair;
use crate::backend::{Backend, SeqSpan};
use crate::heads::{HeadId, HookPoint, Positions, Taps};
use crate::transformer::Model;
use anyhow::{ensure, Result};
use std::collections::BTreeMap;

/// X_r's pre-RoPE query at t `[H*D]`, keys and values at 0..=t `[t+1][G*D]`, of one layer.
pub type CleanQkv = (Vec<f32>, Vec<Vec<f32>>, Vec<Vec<f32>>);

/// The clean runs of one pair, at the last position unless said otherwise.
#[derive(Debug, Clone)]
pub struct PairRun {
    /// X_r's last position t.
    pub last: usize,
    /// Residual entering layer l, l = 0..=L. `[L+1][d]`.
    pub resid_pre: Vec<Vec<f32>>,
    /// The same of X_c (at its last position), the end of EAP-IG's path.
    pub resid_cf: Vec<Vec<f32>>,
    /// o_proj output of X_r at layer l. `[L][d]`.
    pub attn_out: Vec<Vec<f32>>,
    /// MLP output of X_r and of X_c (at X_c's last position). `[L][d]`.
    pub mlp_ref: Vec<Vec<f32>>,
    pub mlp_cf: Vec<Vec<f32>>,
    /// z of X_r and X_c. `[L][H*D]`.
    pub z_ref: Vec<Vec<f32>>,
    pub z_cf: Vec<Vec<f32>>,
    /// X_r's pre-RoPE queries at t (`[H*D]`), keys and values at positions 0..=t
    /// (`[t+1][G*D]`), of the receivers' layers.
    pub qkv: BTreeMap<usize, CleanQkv>,
    /// Label logits (syc, anti) of X_r.
    pub ref_labels: (f64, f64),
}

/// Run X_r and X_c of every pair (`chunk` pairs per forward) and keep what the circuit reads;
/// `layers`: the receivers' layers.
pub fn pair_runs<B: Backend>(
    model: &Model<B>,
    pairs: &[TokenPair],
    metric: &Metric,
    layers: &[usize],
    chunk: usize,
) -> Result<Vec<PairRun>> {
    let l_n = model.n_layers();
    let mut taps = Taps::new();
    for l in 0..=l_n {
        taps = taps.capture(HookPoint::ResidPre(l), Positions::Last);
    }
    for l in 0..l_n {
        for p in [HookPoint::AttnOut(l), HookPoint::MlpOut(l), HookPoint::Z(l)] {
            taps = taps.capture(p, Positions::Last);
        }
    }
    for &l in layers {
        ensure!(l < l_n, "receiver layer {l}: the model has {l_n} layers");
        taps = taps
            .capture(HookPoint::Q(l), Positions::Last)
            .capture(HookPoint::K(l), Positions::All)
            .capture(HookPoint::V(l), Positions::All);
    }
    let mut runs = Vec::with_capacity(pairs.len());
    for group in pairs.chunks(chunk.max(1)) {
        let n = group.len();
        let mut seqs: Vec<Vec<u32>> = group.iter().map(|p| p.reference.clone()).collect();
        seqs.extend(group.iter().map(|p| p.counterfactual.clone()));
        let out = model.forward(&seqs, &taps)?;
        let last = |point: HookPoint, s: usize| -> Vec<f32> {
            out.captures[&point].last_of(s).expect("captured").to_vec()
        };
        let all = |point: HookPoint, s: usize| -> Vec<Vec<f32>> {
            let c = &out.captures[&point];
            (0..c.index.len())
                .filter(|&i| c.index[i].0 == s)
                .map(|i| c.row_at(i).to_vec())
                .collect()
        };
        for (i, p) in group.iter().enumerate() {
            let (r, c) = (i, n + i);
            let row = out.logits.last_of(r).expect("logits");
            let qkv = layers
                .iter()
                .map(|&l| {
                    let v = (
                        last(HookPoint::Q(l), r),
                        all(HookPoint::K(l), r),
                        all(HookPoint::V(l), r),
                    );
                    (l, v)
                })
                .collect();
            runs.push(PairRun {
                last: p.ref_last(),
                resid_pre: (0..=l_n).map(|l| last(HookPoint::ResidPre(l), r)).collect(),
                resid_cf: (0..=l_n).map(|l| last(HookPoint::ResidPre(l), c)).collect(),
                attn_out: (0..l_n).map(|l| last(HookPoint::AttnOut(l), r)).collect(),
                mlp_ref: (0..l_n).map(|l| last(HookPoint::MlpOut(l), r)).collect(),
                mlp_cf: (0..l_n).map(|l| last(HookPoint::MlpOut(l), c)).collect(),
                z_ref: (0..l_n).map(|l| last(HookPoint::Z(l), r)).collect(),
                z_cf: (0..l_n).map(|l| last(HookPoint::Z(l), c)).collect(),
                qkv,
                ref_labels: (
                    row[metric.syc as usize] as f64,
                    row[metric.anti as usize] as f64,
                ),
            });
        }
    }
    Ok(runs)
}

/// RoPE of one position: `(cos, sin)` `[D/2]` and the attention factor.
#[derive(Debug, Clone)]
struct Rotation {
    cos: Vec<f64>,
    sin: Vec<f64>,
    factor: f64,
}

impl Rotation {
    fn new(pos: usize, inv_freq: &[f32], factor: f32) -> Self {
        let p = pos as f32;
        let (cos, sin) = inv_freq
            .iter()
            .map(|f| {
                let a = (p * f) as f64;
                (a.cos() as f32 as f64, a.sin() as f32 as f64)
            })
            .unzip();
        Self {
            cos,
            sin,
            factor: factor as f64,
        }
    }

    /// Rotate-half: a' = a cos - b sin, b' = b cos + a sin (times the factor); `inverse`:
    /// the transpose (a backward).
    fn apply(&self, x: &[f64], inverse: bool) -> Vec<f64> {
        let half = x.len() / 2;
        let s = if inverse { -1.0 } else { 1.0 };
        let mut y = vec![0.0; x.len()];
        for i in 0..half {
            let (a, b, c, sn) = (x[i], x[i + half], self.cos[i], s * self.sin[i]);
            y[i] = self.factor * (a * c - b * sn);
            y[i + half] = self.factor * (b * c + a * sn);
        }
        y
    }
}

/// One receiving head on one pair: its rotated query at t and the keys and values it sees.
#[derive(Debug, Clone)]
pub struct HeadInputs {
    rot_last: Rotation,
    scale: f64,
    /// Rotated query at t `[D]`; visible keys (rotated) and values `[n_vis][D]`, the last
    /// of them at t.
    q: Vec<f64>,
    keys: Vec<Vec<f64>>,
    values: Vec<Vec<f64>>,
}

/// z at t `[D]` and the probabilities over the visible keys.
pub struct Attended {
    pub z: Vec<f64>,
    pub probs: Vec<f64>,
}

impl HeadInputs {
    pub fn new<B: Backend>(model: &Model<B>, run: &PairRun, head: HeadId) -> Result<Self> {
        let cfg = &model.cfg;
        let dh = cfg.head_dim;
        let group = head.head / (cfg.num_attention_heads / cfg.num_key_value_heads);
        let (q, k, v) = run
            .qkv
            .get(&head.layer)
            .ok_or_else(|| anyhow::anyhow!("no clean q/k/v of layer {}", head.layer))?;
        let t = run.last;
        ensure!(
            k.len() == t + 1,
            "keys of {} positions, want {}",
            k.len(),
            t + 1
        );
        let plan = cfg.rope.plan(&[SeqSpan {
            q_start: 0,
            q_len: t + 1,
            kv_start: 0,
            pos0: 0,
            kv_new: None,
        }]);
        let table = &plan.parts[0].1;
        let rot = |pos| Rotation::new(pos, &table.inv_freq, table.attention_factor);
        let first = cfg.sliding_window.map_or(0, |w| (t + 1).saturating_sub(w));
        let slice = |row: &[f32], i: usize| -> Vec<f64> {
            row[i * dh..(i + 1) * dh]
                .iter()
                .map(|&x| x as f64)
                .collect()
        };
        let rot_last = rot(t);
        Ok(Self {
            q: rot_last.apply(&slice(q, head.head), false),
            keys: (first..=t)
                .map(|j| rot(j).apply(&slice(&k[j], group), false))
                .collect(),
            values: (first..=t).map(|j| slice(&v[j], group)).collect(),
            rot_last,
            scale: (1.0 / (dh as f32).sqrt()) as f64,
        })
    }

    /// The channel's input at t as the attention sees it: rotated for q and k.
    pub fn place(&self, channel: Channel, pre_rope: &[f64]) -> Vec<f64> {
        match channel {
            Channel::Q | Channel::K => self.rot_last.apply(pre_rope, false),
            _ => pre_rope.to_vec(),
        }
    }

    /// z at t with `channel`'s input at t replaced by `new` (placed: [`Self::place`]).
    pub fn attend(&self, channel: Channel, new: &[f64]) -> Attended {
        let last = self.keys.len() - 1;
        let q = if channel == Channel::Q { new } else { &self.q };
        let key = |j: usize| {
            if channel == Channel::K && j == last {
                new
            } else {
                &self.keys[j]
            }
        };
        let s: Vec<f64> = (0..=last).map(|j| self.scale * dot(q, key(j))).collect();
        let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
        let sum: f64 = e.iter().sum();
        let probs: Vec<f64> = e.iter().map(|x| x / sum).collect();
        let mut z = vec![0.0; q.len()];
        for (j, p) in probs.iter().enumerate() {
            let v = if channel == Channel::V && j == last {
                new
            } else {
                &self.values[j]
            };
            z.iter_mut().zip(v).for_each(|(z, v)| *z += p * v);
        }
        Attended { z, probs }
    }

    /// The gradient of a scalar with gradient `dz` at z (of [`Self::attend`] at `new`) with
    /// respect to the channel's pre-RoPE input at t.
    pub fn attend_bwd(&self, channel: Channel, new: &[f64], at: &Attended, dz: &[f64]) -> Vec<f64> {
        let last = self.keys.len() - 1;
        if channel == Channel::V {
            return dz.iter().map(|g| at.probs[last] * g).collect();
        }
        let value = |j: usize| &self.values[j];
        let dp: Vec<f64> = (0..=last).map(|j| dot(value(j), dz)).collect();
        let mean: f64 = at.probs.iter().zip(&dp).map(|(p, d)| p * d).sum();
        let ds: Vec<f64> = at
            .probs
            .iter()
            .zip(&dp)
            .map(|(p, d)| self.scale * p * (d - mean))
            .collect();
        let d_rot: Vec<f64> = match channel {
            Channel::Q => {
                let mut g = vec![0.0; new.len()];
                for (dsj, k) in ds.iter().zip(&self.keys) {
                    g.iter_mut().zip(k).for_each(|(g, k)| *g += dsj * k);
                }
                g
            }
            _ => self.q.iter().map(|q| ds[last] * q).collect(),
        };
        self.rot_last.apply(&d_rot, true)
    }
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backward of the host attention against central differences, per channel.
    #[test]
    fn attend_bwd_matches_finite_differences() {
        let d = 4;
        let r = |i: usize| ((i * 7919) % 13) as f64 / 13.0 - 0.5;
        let rot_last = Rotation::new(3, &[1.0, 0.1], 1.0);
        let h = HeadInputs {
            rot_last,
            scale: 0.5,
            q: (0..d).map(r).collect(),
            keys: (0..4)
                .map(|j| (0..d).map(|i| r(i + 5 * j + 1)).collect())
                .collect(),
            values: (0..4)
                .map(|j| (0..d).map(|i| r(i + 3 * j + 2)).collect())
                .collect(),
        };
        let dz: Vec<f64> = (0..d).map(|i| r(i + 40)).collect();
        for c in Channel::QKV {
            let pre: Vec<f64> = (0..d).map(|i| r(i + 20)).collect();
            let f = |x: &[f64]| dot(&h.attend(c, &h.place(c, x)).z, &dz);
            let new = h.place(c, &pre);
            let g = h.attend_bwd(c, &new, &h.attend(c, &new), &dz);
            for i in 0..d {
                let (mut a, mut b) = (pre.clone(), pre.clone());
                a[i] += 1e-6;
                b[i] -= 1e-6;
                let fd = (f(&a) - f(&b)) / 2e-6;
                assert!((fd - g[i]).abs() < 1e-7, "{c:?} {i}: {fd} vs {}", g[i]);
            }
        }
    }
}
