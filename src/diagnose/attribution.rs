//! Attribution patching (METHOD.md section 1, "first order"): the score of head (l, h) is
//! the first-order change of the metric when its z moves from the reference value to the
//! counterfactual one,
//!
//! ```text
//!     s(l, h) = dscore/dF * sum over chosen positions of (z_c - z_r)[l][h] . dF/dz[l][h]
//! ```
//!
//! with dF/dz from ONE forward and ONE backward of X_r per batch of pairs
//! ([`backward_to_z`]), instead of one patched forward per head. F is the metric of the
//! last-position logits; its gradient there is non-zero only at the two label logits:
//!
//! | kind       | F                    | dF/dy_syc      | dF/dy_anti      |
//! |------------|----------------------|----------------|-----------------|
//! | Ratio      | s / (s + a)          | a / (s + a)^2  | -s / (s + a)^2  |
//! | LogitDiff  | s - a                | 1              | -1              |
//! | ProbRatio  | sigmoid(s - a)       | F (1 - F)      | -F (1 - F)      |
//!
//! and the score units follow `Metric::score(F + dF, F)` to first order: `100 dF / F` for
//! Ratio and ProbRatio, `dF` for LogitDiff. The linear term is the total effect's
//! (activation patching's) first-order term: nothing is frozen.

use super::metric::{Metric, MetricKind};
use super::pairs::{require_equal_lengths, TokenPair};
use super::path_patching::{CleanRun, HeadScores};
use crate::backend::TrainBackend;
use crate::heads::{Positions, Taps};
use crate::model::HostTensor;
use crate::train::backward_to_z;
use crate::transformer::Model;
use anyhow::{bail, ensure, Result};
use indicatif::ProgressBar;

/// Pairs per forward/backward.
const CHUNK: usize = 8;

/// Where the heads' z is (virtually) patched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrPositions {
    /// The last token of each prompt (pairs may differ in length; aligned at the last
    /// token, as the paper).
    Last,
    /// Every position, summed (first order of patching the head at all positions at once);
    /// pairs of equal length only.
    All,
    /// These positions, summed; pairs of equal length only.
    At(Vec<usize>),
}

/// `(dF/dy_syc, dF/dy_anti)` at the label logits `(y_syc, y_anti)`.
pub fn metric_grad(metric: &Metric, y_syc: f64, y_anti: f64) -> (f64, f64) {
    match metric.kind {
        MetricKind::Ratio => {
            let t = y_syc + y_anti;
            (y_anti / (t * t), -y_syc / (t * t))
        }
        MetricKind::LogitDiff => (1.0, -1.0),
        MetricKind::ProbRatio => {
            let f = metric.value(y_syc, y_anti);
            let g = f * (1.0 - f);
            (g, -g)
        }
    }
}

/// `d score(F', F) / dF'` at `F' = F`: the factor from a change of F to score units.
pub fn score_per_unit(metric: &Metric, f_ref: f64) -> f64 {
    match metric.kind {
        MetricKind::LogitDiff => 1.0,
        MetricKind::Ratio | MetricKind::ProbRatio => 100.0 / f_ref,
    }
}

/// The checks of [`attribution_patching`]'s inputs (pairs and their clean runs, label tokens,
/// positions) and the positions to sum over, shared by every pair (None: the last one of
/// each, from the clean runs).
fn attribution_positions<B: TrainBackend>(
    model: &Model<B>,
    pairs: &[TokenPair],
    runs: &[CleanRun],
    metric: &Metric,
    positions: &AttrPositions,
) -> Result<Option<Vec<usize>>> {
    ensure!(
        !pairs.is_empty(),
        "attribution patching needs at least one pair"
    );
    ensure!(
        pairs.len() == runs.len(),
        "{} pairs but {} clean runs",
        pairs.len(),
        runs.len()
    );
    for (i, (p, r)) in pairs.iter().zip(runs).enumerate() {
        ensure!(
            !p.reference.is_empty() && !p.counterfactual.is_empty(),
            "pair #{} ({}): empty prompt",
            p.index,
            p.source
        );
        ensure!(
            r.ref_last == p.ref_last() && r.cf_last == p.cf_last(),
            "clean run {i} does not belong to pair #{} (last positions {}/{} vs {}/{})",
            p.index,
            r.ref_last,
            r.cf_last,
            p.ref_last(),
            p.cf_last()
        );
    }
    let vocab = model.cfg.vocab_size;
    for (what, t) in [
        ("sycophantic", metric.syc),
        ("non-sycophantic", metric.anti),
    ] {
        ensure!(
            (t as usize) < vocab,
            "{what} label token {t} is outside the vocabulary ({vocab})"
        );
    }
    // Positions to sum over, per pair (None: the last one, via the clean runs).
    let at: Option<Vec<usize>> = match positions {
        AttrPositions::Last => None,
        AttrPositions::All => {
            require_equal_lengths(pairs, "attribution patching at all positions")?;
            Some((0..pairs[0].reference.len()).collect())
        }
        AttrPositions::At(v) => {
            require_equal_lengths(
                pairs,
                "attribution patching at positions other than the last",
            )?;
            ensure!(!v.is_empty(), "no positions to attribute");
            let t = pairs[0].reference.len();
            if let Some(bad) = v.iter().find(|&&p| p >= t) {
                bail!("position {bad} is past the prompts' length {t}");
            }
            let mut v = v.clone();
            v.sort_unstable();
            v.dedup();
            Some(v)
        }
    };
    if at.is_some() {
        // require_equal_lengths only compares within a pair; the positions are shared.
        let t = pairs[0].reference.len();
        if let Some(p) = pairs.iter().find(|p| p.reference.len() != t) {
            bail!(
                "attribution patching at chosen positions needs every prompt of the same length; pair #{} ({}) has {} tokens, pair #{} has {t}",
                p.index,
                p.source,
                p.reference.len(),
                pairs[0].index
            );
        }
    }
    Ok(at)
}

/// Attribution patching of every head: see the module docs. `runs` are the pairs' clean
/// runs ([`super::path_patching::clean_runs`]): their label logits give F and its gradient
/// at the reference, and (for [`AttrPositions::Last`]) their z give `z_c - z_r`. The other
/// modes capture z of X_r and X_c at the chosen positions in one extra forward per batch.
/// `progress` advances by (heads x pairs) of each batch.
pub fn attribution_patching<B: TrainBackend>(
    model: &Model<B>,
    pairs: &[TokenPair],
    runs: &[CleanRun],
    metric: &Metric,
    positions: AttrPositions,
    progress: Option<&ProgressBar>,
) -> Result<HeadScores> {
    let at = attribution_positions(model, pairs, runs, metric, &positions)?;
    let (l_n, h_n, dh, vocab) = (
        model.n_layers(),
        model.n_heads(),
        model.head_dim(),
        model.cfg.vocab_size,
    );
    let heads = model.all_heads();
    let mut per_pair = vec![vec![0.0; pairs.len()]; heads.len()];
    let reference: Vec<f64> = runs
        .iter()
        .map(|r| metric.value(r.ref_labels.0 as f64, r.ref_labels.1 as f64))
        .collect();
    let b = &model.backend;
    for (c, (group, group_runs)) in pairs.chunks(CHUNK).zip(runs.chunks(CHUNK)).enumerate() {
        let n = group.len();
        let base = c * CHUNK;
        let refs: Vec<Vec<u32>> = group.iter().map(|p| p.reference.clone()).collect();
        // dscore/dlogits at the last position of each reference prompt.
        let mut dl = vec![0.0f32; n * vocab];
        for (i, r) in group_runs.iter().enumerate() {
            let (ys, ya) = (r.ref_labels.0 as f64, r.ref_labels.1 as f64);
            let (gs, ga) = metric_grad(metric, ys, ya);
            let k = score_per_unit(metric, reference[base + i]);
            ensure!(
                (gs * k).is_finite() && (ga * k).is_finite(),
                "pair #{} ({}): the metric has no finite gradient at the reference (label logits {ys}, {ya}, F = {})",
                group[i].index,
                group[i].source,
                reference[base + i]
            );
            dl[i * vocab + metric.syc as usize] += (gs * k) as f32;
            dl[i * vocab + metric.anti as usize] += (ga * k) as f32;
        }
        let dzs = backward_to_z(model, &refs, &HostTensor::new(vec![n, vocab], dl))?;
        ensure!(dzs.len() == l_n, "backward gave {} layers of dz", dzs.len());
        // Packed row offsets of the references.
        let mut off = Vec::with_capacity(n);
        let mut o = 0;
        for s in &refs {
            off.push(o);
            o += s.len();
        }
        // z of X_r and X_c at the chosen positions (modes other than Last).
        let captured = match &at {
            None => None,
            Some(ps) => {
                let mut seqs = refs.clone();
                seqs.extend(group.iter().map(|p| p.counterfactual.clone()));
                Some(
                    model.forward(
                        &seqs,
                        &Taps::new()
                            .with_logits(Positions::None)
                            .capture_all_z(l_n, Positions::At(ps.clone())),
                    )?,
                )
            }
        };
        for (l, dz) in dzs.iter().enumerate() {
            let dz = b.download(dz)?;
            let w = h_n * dh;
            ensure!(
                dz.shape == [o, w],
                "dz of layer {l} has shape {:?}, expected [{o}, {w}]",
                dz.shape
            );
            for (i, run) in group_runs.iter().enumerate() {
                // (row of dz, z_r, z_c) for each position.
                let rows: Vec<(usize, &[f32], &[f32])> = match (&at, &captured) {
                    (Some(ps), Some(out)) => {
                        let cap = out.z(l).expect("z captured");
                        ps.iter()
                            .map(|&pos| {
                                let zr = cap.row(i, pos).expect("z_r captured");
                                let zc = cap.row(n + i, pos).expect("z_c captured");
                                (off[i] + pos, zr, zc)
                            })
                            .collect()
                    }
                    _ => vec![(
                        off[i] + run.ref_last,
                        run.z_ref[l].as_slice(),
                        run.z_cf[l].as_slice(),
                    )],
                };
                for h in 0..h_n {
                    let mut s = 0.0f64;
                    for &(row, zr, zc) in &rows {
                        let g = &dz.data[row * w + h * dh..row * w + (h + 1) * dh];
                        for k in 0..dh {
                            let d = zc[h * dh + k] as f64 - zr[h * dh + k] as f64;
                            s += d * g[k] as f64;
                        }
                    }
                    per_pair[l * h_n + h][base + i] = s;
                }
            }
        }
        if let Some(pb) = progress {
            pb.inc((heads.len() * n) as u64);
        }
    }
    Ok(HeadScores {
        heads,
        per_pair,
        reference,
    })
}

/// Spearman's rank correlation of `a` and `b` (tied values get their average rank): the
/// Pearson correlation of the ranks. NaN when fewer than two values, when either side has
/// no spread (all tied), or when a value is NaN. Panics if the lengths differ.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(
        a.len(),
        b.len(),
        "spearman: {} vs {} values",
        a.len(),
        b.len()
    );
    if a.len() < 2 || a.iter().chain(b).any(|x| x.is_nan()) {
        return f64::NAN;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    if saa == 0.0 || sbb == 0.0 {
        return f64::NAN;
    }
    sab / (saa * sbb).sqrt()
}

/// 1-based ranks, ties sharing the average of the ranks they span.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&i, &j| v[i].total_cmp(&v[j]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}
