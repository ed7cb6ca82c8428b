//! Exact path patching (heads -> logits, METHOD.md section 1); activation patching is in
//! `activation.rs` (re-exported here).
//!
//! Path patching of head (l, h) on a pair: rerun the reference prompt X_r with z[l][h] at
//! the last position set to the counterfactual's value, every later layer's attention
//! input at the last position reset to its X_r value (all other heads frozen), MLPs
//! recomputed. Only the last position's residual moves, by O_l^h (z_c - z_r), and every
//! later attention output there is the frozen X_r value; so the fast form carries one row
//! per (head, pair) through the MLPs of layers >= l, the final norm and two label logits,
//! all heads of all pairs batched as GEMM rows. The literal form (one patched forward per
//! head, as the authors' script) is kept as the oracle.

use super::metric::Metric;
use super::pairs::TokenPair;
use crate::backend::Backend;
use crate::heads::{HeadId, HookPoint, Patch, Positions, Taps};
use crate::model::layer::{mlp_block, PlainIo};
use crate::model::mask::head;
use crate::model::HostTensor;
use crate::transformer::Model;
use anyhow::{ensure, Result};
use indicatif::ProgressBar;

pub use super::activation::{activation_patching_last, activation_patching_positions};

/// What the clean runs of one pair leave behind, all at the last position.
#[derive(Debug, Clone)]
pub struct CleanRun {
    pub ref_last: usize,
    pub cf_last: usize,
    /// Residual entering layer l, l = 0..=L (L: before the final norm). `[L+1][d]`.
    pub resid_pre: Vec<Vec<f32>>,
    /// Attention input (after RMSNorm) of layer l. `[L][d]`.
    pub attn_in: Vec<Vec<f32>>,
    /// o_proj output of layer l. `[L][d]`.
    pub attn_out: Vec<Vec<f32>>,
    /// MLP output of layer l. `[L][d]`.
    pub mlp_out: Vec<Vec<f32>>,
    /// z of X_r and X_c. `[L][H*D]`.
    pub z_ref: Vec<Vec<f32>>,
    pub z_cf: Vec<Vec<f32>>,
    /// Label logits (syc, anti) of X_r and X_c.
    pub ref_labels: (f32, f32),
    pub cf_labels: (f32, f32),
}

/// Run X_r and X_c of every pair (chunks of `chunk` pairs) and keep the last position's
/// activations.
pub fn clean_runs<B: Backend>(
    model: &Model<B>,
    pairs: &[TokenPair],
    metric: &Metric,
    chunk: usize,
    progress: Option<&ProgressBar>,
) -> Result<Vec<CleanRun>> {
    let l_n = model.n_layers();
    let mut taps = Taps::new();
    for l in 0..=l_n {
        taps = taps.capture(HookPoint::ResidPre(l), Positions::Last);
    }
    for l in 0..l_n {
        for p in [
            HookPoint::AttnIn(l),
            HookPoint::AttnOut(l),
            HookPoint::MlpOut(l),
            HookPoint::Z(l),
        ] {
            taps = taps.capture(p, Positions::Last);
        }
    }
    let mut runs = Vec::with_capacity(pairs.len());
    for group in pairs.chunks(chunk.max(1)) {
        let n = group.len();
        // The two prompts of a pair share everything before the challenge: run that common
        // prefix once into a KV cache, then both suffixes on top of it (seq i = X_r of
        // pair i, seq n + i = its X_c). Not under a RoPE whose frequencies depend on the
        // length (dynamic NTK): a prefix cached at its own length would be rotated otherwise
        // than in one forward of each prompt, so each prompt runs whole.
        let share = !model.cfg.rope.length_dependent();
        let common: Vec<usize> = group
            .iter()
            .map(|p| {
                if !share {
                    return 0;
                }
                let lcp = p
                    .reference
                    .iter()
                    .zip(&p.counterfactual)
                    .take_while(|(a, b)| a == b)
                    .count();
                lcp.min(p.reference.len() - 1)
                    .min(p.counterfactual.len() - 1)
            })
            .collect();
        let longest = common.iter().copied().max().unwrap_or(0).max(1);
        let mut cache = model.new_cache(n, longest)?;
        let prefixes: Vec<(usize, &[u32])> = group
            .iter()
            .zip(&common)
            .enumerate()
            .filter(|(_, (_, &c))| c > 0)
            .map(|(i, (p, &c))| (i, &p.reference[..c]))
            .collect();
        if !prefixes.is_empty() {
            model.forward_cached(
                &prefixes,
                &mut cache,
                &Taps::new().with_logits(Positions::None),
            )?;
        }
        let mut inputs: Vec<(usize, &[u32])> = group
            .iter()
            .zip(&common)
            .enumerate()
            .map(|(i, (p, &c))| (i, &p.reference[c..]))
            .collect();
        inputs.extend(
            group
                .iter()
                .zip(&common)
                .enumerate()
                .map(|(i, (p, &c))| (i, &p.counterfactual[c..])),
        );
        let out = model.forward_on_prefix(&inputs, &cache, &taps, None)?;
        let last = |point: HookPoint, s: usize| {
            out.captures[&point].last_of(s).expect("captured").to_vec()
        };
        for (i, p) in group.iter().enumerate() {
            let (r, c) = (i, n + i);
            let labels = |s: usize| {
                let row = out.logits.last_of(s).expect("logits");
                (row[metric.syc as usize], row[metric.anti as usize])
            };
            runs.push(CleanRun {
                ref_last: p.ref_last(),
                cf_last: p.cf_last(),
                resid_pre: (0..=l_n).map(|l| last(HookPoint::ResidPre(l), r)).collect(),
                attn_in: (0..l_n).map(|l| last(HookPoint::AttnIn(l), r)).collect(),
                attn_out: (0..l_n).map(|l| last(HookPoint::AttnOut(l), r)).collect(),
                mlp_out: (0..l_n).map(|l| last(HookPoint::MlpOut(l), r)).collect(),
                z_ref: (0..l_n).map(|l| last(HookPoint::Z(l), r)).collect(),
                z_cf: (0..l_n).map(|l| last(HookPoint::Z(l), c)).collect(),
                ref_labels: labels(r),
                cf_labels: labels(c),
            });
        }
        if let Some(pb) = progress {
            pb.inc(n as u64);
        }
    }
    Ok(runs)
}

/// Scores of every head on every pair.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadScores {
    /// Heads in layer-major order (`layer * H + head`).
    pub heads: Vec<HeadId>,
    /// `[head][pair]`.
    pub per_pair: Vec<Vec<f64>>,
    /// Metric of each pair's clean reference run.
    pub reference: Vec<f64>,
}

impl HeadScores {
    /// Scores with each pair's clean reference metric taken from `runs`.
    pub fn new(
        heads: Vec<HeadId>,
        per_pair: Vec<Vec<f64>>,
        runs: &[CleanRun],
        metric: &Metric,
    ) -> Self {
        let reference = runs
            .iter()
            .map(|r| metric_of(metric, r.ref_labels))
            .collect();
        Self {
            heads,
            per_pair,
            reference,
        }
    }

    pub fn mean(&self, i: usize) -> f64 {
        let v = &self.per_pair[i];
        v.iter().sum::<f64>() / v.len().max(1) as f64
    }
    /// Population standard deviation over pairs.
    pub fn std(&self, i: usize) -> f64 {
        let v = &self.per_pair[i];
        let m = self.mean(i);
        (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len().max(1) as f64).sqrt()
    }
    /// Head indices ranked ascending by mean score (most negative first).
    pub fn ranking(&self) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.heads.len()).collect();
        idx.sort_by(|&a, &b| self.mean(a).total_cmp(&self.mean(b)).then(a.cmp(&b)));
        idx
    }
}

pub(super) fn metric_of(metric: &Metric, labels: (f32, f32)) -> f64 {
    metric.value(labels.0 as f64, labels.1 as f64)
}

/// The fast exact sweep: every head of every pair as a row through the single-position
/// MLPs of later layers. `freeze_mlp` also freezes MLPs (the patch then reaches the final
/// residual unchanged). Pairs are processed `chunk` at a time to bound memory.
pub fn path_patching_fast<B: Backend>(
    model: &Model<B>,
    runs: &[CleanRun],
    metric: &Metric,
    freeze_mlp: bool,
    chunk: usize,
    progress: Option<&ProgressBar>,
) -> Result<HeadScores> {
    ensure!(!runs.is_empty(), "path patching needs at least one pair");
    let b = &model.backend;
    let w = &model.weights;
    let cfg = &model.cfg;
    let (l_n, h_n, dh, d) = (
        cfg.num_hidden_layers,
        cfg.num_attention_heads,
        cfg.head_dim,
        cfg.hidden_size,
    );
    let parts = model.parts();
    let label = LabelHead::new(model, metric)?;
    let heads = model.all_heads();
    let mut per_pair = vec![vec![0.0; runs.len()]; heads.len()];
    // Per layer, H blocks of P rows (head h patched) and one block of P null rows (nothing
    // patched, the same numerical path): a head's score is against its layer's null row,
    // so the rounding of a low-precision backend's row path cancels.
    for (c, group) in runs.chunks(chunk.max(1)).enumerate() {
        let p_n = group.len();
        // Per layer only per-pair tables go to the device ([P, d] and [H*P, D]); the
        // expansion to one row per (head, pair) is a row gather there. Rows are ordered
        // (layer, head, pair); `row_pair[r]` is row r's pair.
        let mut x: Option<B::Tensor> = None; // [active rows, d]
        let mut row_pair: Vec<usize> = vec![];
        let new_pairs: Vec<usize> = (0..=h_n).flat_map(|_| 0..p_n).collect(); // (head, pair) -> pair
        let table = |f: &dyn Fn(&CleanRun) -> Vec<f32>| -> Result<B::Tensor> {
            let data: Vec<f32> = group.iter().flat_map(f).collect();
            b.upload(&HostTensor::new(vec![p_n, d], data))
        };
        for l in 0..l_n {
            let attn_out = (!freeze_mlp)
                .then(|| table(&|r: &CleanRun| r.attn_out[l].clone()))
                .transpose()?;
            if let (Some(x), Some(a)) = (x.as_mut(), attn_out.as_ref()) {
                // Rows of earlier layers: this layer's attention output is the frozen X_r value.
                b.add_assign(x, &b.gather_rows(a, &row_pair)?)?;
            }
            // New rows (h, p): z delta with only head h's slice non-zero (written into a
            // zero [H*P, H*D] on the device), delta = dz @ W_o^T, plus the row's base.
            let mut dz_vals = Vec::with_capacity(h_n * p_n * dh);
            let (mut rows, mut col0) =
                (Vec::with_capacity(h_n * p_n), Vec::with_capacity(h_n * p_n));
            for h in 0..h_n {
                for run in group {
                    let (zc, zr) = (
                        &run.z_cf[l][h * dh..(h + 1) * dh],
                        &run.z_ref[l][h * dh..(h + 1) * dh],
                    );
                    dz_vals.extend(zc.iter().zip(zr).map(|(c, r)| c - r));
                    rows.push(rows.len());
                    col0.push(h * dh);
                }
            }
            let mut dz = b.zeros(&[(h_n + 1) * p_n, h_n * dh])?; // null rows stay 0
            b.write_slices(
                &mut dz,
                &rows,
                &col0,
                &HostTensor::new(vec![h_n * p_n, dh], dz_vals),
            )?;
            let mut delta = b.linear(&dz, &w.layers[l].wo)?;
            let base = if freeze_mlp {
                table(&|r: &CleanRun| r.resid_pre[l_n].clone())?
            } else {
                table(&|r: &CleanRun| {
                    r.resid_pre[l]
                        .iter()
                        .zip(&r.attn_out[l])
                        .map(|(x, a)| x + a)
                        .collect()
                })?
            };
            b.add_assign(&mut delta, &b.gather_rows(&base, &new_pairs)?)?;
            row_pair.extend_from_slice(&new_pairs);
            let mut xs = match x.take() {
                Some(prev) => model.concat_rows(&prev, &delta)?,
                None => delta,
            };
            if !freeze_mlp {
                // The layer's own MLP block (`model::layer::mlp_block`) on these rows.
                xs = mlp_block(&parts, &mut PlainIo(&parts), l, &xs)?.1;
            }
            x = Some(xs);
            if let Some(pb) = progress {
                pb.inc((h_n * p_n) as u64);
            }
        }
        let y = label.logits(&x.expect("at least one layer"))?; // per row (syc, anti)
        let block = (h_n + 1) * p_n;
        for (r, &p) in row_pair.iter().enumerate() {
            let (l, h) = (r / block, (r % block) / p_n);
            if h == h_n {
                continue; // a null row
            }
            let null = y[l * block + h_n * p_n + p];
            let f_null = metric.value(null.0, null.1);
            let f = metric.value(y[r].0, y[r].1);
            per_pair[l * h_n + h][c * chunk.max(1) + p] = metric.score(f, f_null);
        }
    }
    Ok(HeadScores::new(heads, per_pair, runs, metric))
}

/// `x += mlp_l(x)` for residual rows `x [n, d]` (single positions: the MLP is per row),
/// by the layer's own block. Shared with the circuit's carry (`circuit_exact.rs`).
pub(super) fn mlp_carry<B: Backend>(model: &Model<B>, l: usize, x: &mut B::Tensor) -> Result<()> {
    let parts = model.parts();
    *x = mlp_block(&parts, &mut PlainIo(&parts), l, x)?.1;
    Ok(())
}

/// The final norm and the lm_head rows of the two label tokens.
///
/// Path patching scores small differences of label logits that are themselves large
/// (|y| ~ 10): a bf16 output (a GPU backend's) would round them to 1/16, so this last step
/// never rounds ([`Backend::norm_dot`]).
pub(super) struct LabelHead<'m, B: Backend> {
    model: &'m Model<B>,
    /// `[2, d]`: syc, anti.
    rows: B::Tensor,
    /// Host copies of the final norm and of `rows`, for rows already on the host.
    host: (HostTensor, HostTensor),
}

impl<'m, B: Backend> LabelHead<'m, B> {
    pub(super) fn new(model: &'m Model<B>, metric: &Metric) -> Result<Self> {
        let w = &model.weights;
        let rows = model
            .backend
            .gather_rows(head(w).0, &[metric.syc as usize, metric.anti as usize])?;
        let b = &model.backend;
        let host = (b.download(&w.final_norm)?, b.download(&rows)?);
        Ok(Self { model, rows, host })
    }

    pub(super) fn pairs(y: HostTensor) -> Vec<(f64, f64)> {
        y.data
            .chunks(2)
            .map(|r| (r[0] as f64, r[1] as f64))
            .collect()
    }

    /// `(y_syc, y_anti)` of each final residual row of `x [n, d]` on the device.
    pub(super) fn logits(&self, x: &B::Tensor) -> Result<Vec<(f64, f64)>> {
        let m = self.model;
        let eps = m.cfg.rms_norm_eps as f32;
        Ok(Self::pairs(m.backend.norm_dot(
            x,
            &m.weights.final_norm,
            eps,
            &self.rows,
        )?))
    }

    /// The same for rows already on the host.
    pub(super) fn logits_host(&self, x: &HostTensor) -> Result<Vec<(f64, f64)>> {
        let eps = self.model.cfg.rms_norm_eps as f32;
        let (norm, rows) = &self.host;
        Ok(Self::pairs(crate::backend::norm_dot_host(
            x, norm, eps, rows,
        )?))
    }
}

/// A patched node: a head, at the last position (`None`) or at an aligned position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    pub head: HeadId,
    pub pos: Option<usize>,
}

/// The literal form, one patched forward of X_r per (node, pair), batched `batch` forwards
/// per call: z of the node set to X_c's value, every later layer's attention input at the
/// last position reset to X_r's, MLPs recomputed (or, with `freeze_mlp`, MLP outputs at
/// the last position reset too). Non-last positions need pairs of equal length and the
/// counterfactual's z at that position (`z_cf_at`).
#[allow(clippy::too_many_arguments)]
pub fn path_patching_literal<B: Backend>(
    model: &Model<B>,
    pairs: &[TokenPair],
    runs: &[CleanRun],
    nodes: &[Node],
    metric: &Metric,
    freeze_mlp: bool,
    batch: usize,
    progress: Option<&ProgressBar>,
) -> Result<Vec<Vec<f64>>> {
    let (l_n, dh) = (model.n_layers(), model.head_dim());
    // X_c's z at the non-last positions the nodes need, per pair.
    let positions: Vec<usize> = {
        let mut v: Vec<usize> = nodes.iter().filter_map(|n| n.pos).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let cf_z = if positions.is_empty() {
        None
    } else {
        super::pairs::require_equal_lengths(pairs, "patching positions other than the last")?;
        let cfs: Vec<Vec<u32>> = pairs.iter().map(|p| p.counterfactual.clone()).collect();
        Some(
            model.forward(
                &cfs,
                &Taps::new()
                    .with_logits(Positions::None)
                    .capture_all_z(l_n, Positions::At(positions.clone())),
            )?,
        )
    };
    let mut jobs: Vec<(usize, usize)> = vec![]; // (node, pair)
    for n in 0..nodes.len() {
        for p in 0..pairs.len() {
            jobs.push((n, p));
        }
    }
    let mut scores = vec![vec![0.0; pairs.len()]; nodes.len()];
    for group in jobs.chunks(batch.max(1)) {
        let mut seqs = vec![];
        let mut patches = vec![];
        for (s, &(n, p)) in group.iter().enumerate() {
            let node = nodes[n];
            let run = &runs[p];
            let (l, h) = (node.head.layer, node.head.head);
            seqs.push(pairs[p].reference.clone());
            let (pos, values) = match node.pos {
                None => (run.ref_last, run.z_cf[l][h * dh..(h + 1) * dh].to_vec()),
                Some(pos) => {
                    let z = cf_z
                        .as_ref()
                        .expect("captured")
                        .z(l)
                        .expect("z")
                        .row(p, pos);
                    let z = z.ok_or_else(|| anyhow::anyhow!("pair {p} has no position {pos}"))?;
                    (pos, z[h * dh..(h + 1) * dh].to_vec())
                }
            };
            patches.push(Patch {
                point: HookPoint::Z(l),
                seq: s,
                pos,
                col0: h * dh,
                values,
            });
            for later in l + 1..l_n {
                let values = run.attn_in[later].clone();
                patches.push(Patch {
                    point: HookPoint::AttnIn(later),
                    seq: s,
                    pos: run.ref_last,
                    col0: 0,
                    values,
                });
            }
            if freeze_mlp {
                for m in l..l_n {
                    let values = run.mlp_out[m].clone();
                    patches.push(Patch {
                        point: HookPoint::MlpOut(m),
                        seq: s,
                        pos: run.ref_last,
                        col0: 0,
                        values,
                    });
                }
            }
        }
        let taps = Taps {
            patches,
            ..Taps::new()
        };
        let out = model.forward(&seqs, &taps)?;
        for (s, &(n, p)) in group.iter().enumerate() {
            let f = metric.of_logits(out.logits.last_of(s).expect("logits"));
            scores[n][p] = metric.score(f, metric_of(metric, runs[p].ref_labels));
        }
        if let Some(pb) = progress {
            pb.inc(group.len() as u64);
        }
    }
    Ok(scores)
}

/// The literal oracle over every head at the last position, as [`HeadScores`].
pub fn path_patching_oracle<B: Backend>(
    model: &Model<B>,
    pairs: &[TokenPair],
    runs: &[CleanRun],
    metric: &Metric,
    freeze_mlp: bool,
    progress: Option<&ProgressBar>,
) -> Result<HeadScores> {
    let heads = model.all_heads();
    let nodes: Vec<Node> = heads.iter().map(|&head| Node { head, pos: None }).collect();
    let per_pair =
        path_patching_literal(model, pairs, runs, &nodes, metric, freeze_mlp, 16, progress)?;
    Ok(HeadScores::new(heads, per_pair, runs, metric))
}
