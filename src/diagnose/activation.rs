//! Activation patching (total effect, nothing frozen): a head's z at the patched positions
//! set to the counterfactual's value, everything downstream recomputed.

use super::metric::Metric;
use super::pairs::TokenPair;
use super::path_patching::{metric_of, CleanRun, HeadScores, LabelHead};
use crate::backend::Backend;
use crate::heads::{HookPoint, Patch, Positions, Taps};
use crate::model::HostTensor;
use crate::transformer::Model;
use anyhow::{ensure, Result};
use indicatif::ProgressBar;

/// Activation patching (total effect, nothing frozen) of every head at the last position:
/// X_r's prefix is cached once per pair; for each layer l, every (head, pair) continues
/// that prefix with the last token only, starting at layer l from X_r's residual, with
/// z[l][h] at the last position set to X_c's value.
pub fn activation_patching_last<B: Backend>(
    model: &Model<B>,
    pairs: &[TokenPair],
    runs: &[CleanRun],
    metric: &Metric,
    progress: Option<&ProgressBar>,
) -> Result<HeadScores> {
    let (l_n, h_n, dh, d) = (
        model.n_layers(),
        model.n_heads(),
        model.head_dim(),
        model.cfg.hidden_size,
    );
    ensure!(
        !model.cfg.rope.length_dependent(),
        "activation patching at the last position continues a KV-cached prefix, which dynamic NTK RoPE \
         (config key rope_scaling, rope_type \"dynamic\") rotates with the prefix's own length, not the \
         prompt's: use --method path (exact), or --positions with explicit positions (whole forwards)"
    );
    let heads = model.all_heads();
    let label = LabelHead::new(model, metric)?;
    let mut per_pair = vec![vec![0.0; pairs.len()]; heads.len()];
    let longest = pairs.iter().map(|p| p.reference.len()).max().unwrap_or(1);
    let mut cache = model.new_cache(pairs.len(), longest)?;
    let mut prefixes: Vec<(usize, &[u32])> = vec![];
    for (i, p) in pairs.iter().enumerate() {
        if p.reference.len() > 1 {
            prefixes.push((i, &p.reference[..p.reference.len() - 1]));
        }
    }
    if !prefixes.is_empty() {
        model.forward_cached(
            &prefixes,
            &mut cache,
            &Taps::new().with_logits(Positions::None),
        )?;
    }
    for l in 0..l_n {
        let mut inputs: Vec<(usize, &[u32])> = vec![];
        let mut resid = Vec::with_capacity(h_n * pairs.len() * d);
        let mut patches = vec![];
        for h in 0..h_n {
            for (p, pair) in pairs.iter().enumerate() {
                let run = &runs[p];
                let s = inputs.len();
                inputs.push((p, &pair.reference[run.ref_last..]));
                resid.extend_from_slice(&run.resid_pre[l]);
                let values = run.z_cf[l][h * dh..(h + 1) * dh].to_vec();
                patches.push(Patch {
                    point: HookPoint::Z(l),
                    seq: s,
                    pos: run.ref_last,
                    col0: h * dh,
                    values,
                });
            }
        }
        let resid = HostTensor::new(vec![inputs.len(), d], resid);
        // Keep the final residual (one row per input) rather than all-vocabulary logits:
        // only the two label logits are needed.
        let out = model.forward_on_prefix(
            &inputs,
            &cache,
            &Taps {
                patches,
                ..Taps::new()
                    .with_logits(Positions::None)
                    .capture(HookPoint::ResidPre(l_n), Positions::Last)
            },
            Some((l, &resid)),
        )?;
        let fin = &out.captures[&HookPoint::ResidPre(l_n)];
        ensure!(
            fin.index.len() == inputs.len(),
            "activation patching: {} final rows for {} inputs",
            fin.index.len(),
            inputs.len()
        );
        let y = label.logits_host(&fin.data)?;
        for (s, &(p, _)) in inputs.iter().enumerate() {
            let h = s / pairs.len();
            let f = metric.value(y[s].0, y[s].1);
            per_pair[l * h_n + h][p] = metric.score(f, metric_of(metric, runs[p].ref_labels));
        }
        if let Some(pb) = progress {
            pb.inc((h_n * pairs.len()) as u64);
        }
    }
    Ok(HeadScores::new(heads, per_pair, runs, metric))
}

/// Activation patching at chosen positions (or all), recomputing every position from layer
/// l on; pairs must be of equal length. Each head's patched copies run together.
pub fn activation_patching_positions<B: Backend>(
    model: &Model<B>,
    pairs: &[TokenPair],
    runs: &[CleanRun],
    metric: &Metric,
    positions: &Positions,
    progress: Option<&ProgressBar>,
) -> Result<HeadScores> {
    super::pairs::require_equal_lengths(
        pairs,
        "activation patching at positions other than the last",
    )?;
    let (l_n, h_n, dh) = (model.n_layers(), model.n_heads(), model.head_dim());
    let heads = model.all_heads();
    let mut per_pair = vec![vec![0.0; pairs.len()]; heads.len()];
    let refs: Vec<Vec<u32>> = pairs.iter().map(|p| p.reference.clone()).collect();
    let cfs: Vec<Vec<u32>> = pairs.iter().map(|p| p.counterfactual.clone()).collect();
    let mut cap = Taps::new().with_logits(Positions::None);
    for l in 0..l_n {
        cap = cap.capture(HookPoint::ResidPre(l), Positions::All);
    }
    let clean = model.forward(&refs, &cap)?;
    let cf = model.forward(
        &cfs,
        &Taps::new()
            .with_logits(Positions::None)
            .capture_all_z(l_n, positions.clone()),
    )?;
    for (p, pair) in pairs.iter().enumerate() {
        let t = pair.reference.len();
        for l in 0..l_n {
            let resid = &clean.captures[&HookPoint::ResidPre(l)];
            let rows: Vec<f32> = (0..t)
                .flat_map(|pos| resid.row(p, pos).expect("resid").to_vec())
                .collect();
            let zc = cf.z(l).expect("z");
            let seqs: Vec<Vec<u32>> = vec![pair.reference.clone(); h_n];
            let mut patches = vec![];
            for h in 0..h_n {
                for (i, &(s, pos)) in zc.index.iter().enumerate() {
                    if s == p {
                        let values = zc.row_at(i)[h * dh..(h + 1) * dh].to_vec();
                        patches.push(Patch {
                            point: HookPoint::Z(l),
                            seq: h,
                            pos,
                            col0: h * dh,
                            values,
                        });
                    }
                }
            }
            let all: Vec<f32> = (0..h_n).flat_map(|_| rows.iter().copied()).collect();
            let resid_all = HostTensor::new(vec![h_n * t, model.cfg.hidden_size], all);
            let out = model.forward_from(
                l,
                &seqs,
                &resid_all,
                &Taps {
                    patches,
                    ..Taps::new()
                },
            )?;
            for h in 0..h_n {
                let f = metric.of_logits(out.logits.last_of(h).expect("logits"));
                per_pair[l * h_n + h][p] = metric.score(f, metric_of(metric, runs[p].ref_labels));
            }
            if let Some(pb) = progress {
                pb.inc(h_n as u64);
            }
        }
    }
    Ok(HeadScores::new(heads, per_pair, runs, metric))
}
