//! Mean-ablation knockout on the metric (METHOD.md section 2): z of the top-k heads is
//! replaced, at every position, by its mean over the counterfactual prompts.

use super::metric::Metric;
use crate::backend::Backend;
use crate::heads::{HeadId, HookPoint, Positions, Taps};
use crate::transformer::Model;
use anyhow::{ensure, Result};
use serde::Serialize;
use std::collections::BTreeMap;

/// Mean of z over every position of every prompt, for each head: `[head_dim]`.
pub fn mean_z<B: Backend>(
    model: &Model<B>,
    prompts: &[Vec<u32>],
    heads: &[HeadId],
) -> Result<BTreeMap<HeadId, Vec<f32>>> {
    ensure!(
        !prompts.is_empty(),
        "mean ablation needs at least one prompt"
    );
    let d = model.head_dim();
    let mut layers: Vec<usize> = heads.iter().map(|h| h.layer).collect();
    layers.sort_unstable();
    layers.dedup();
    let mut sums: BTreeMap<HeadId, (Vec<f64>, usize)> = BTreeMap::new();
    for chunk in prompts.chunks(8) {
        let mut taps = Taps::new().with_logits(Positions::None);
        for &l in &layers {
            taps = taps.capture(HookPoint::Z(l), Positions::All);
        }
        let out = model.forward(chunk, &taps)?;
        for h in heads {
            let cap = out.z(h.layer).expect("captured");
            let e = sums.entry(*h).or_insert_with(|| (vec![0.0; d], 0));
            for i in 0..cap.index.len() {
                for (s, v) in
                    e.0.iter_mut()
                        .zip(&cap.row_at(i)[h.head * d..(h.head + 1) * d])
                {
                    *s += *v as f64;
                }
            }
            e.1 += cap.index.len();
        }
    }
    Ok(sums
        .into_iter()
        .map(|(h, (s, n))| (h, s.iter().map(|x| (x / n as f64) as f32).collect()))
        .collect())
}

/// One point of the knockout curve.
#[derive(Debug, Clone, Serialize)]
pub struct KnockoutPoint {
    pub k: usize,
    pub heads: Vec<HeadId>,
    /// Mean metric F over the prompts.
    pub metric_mean: f64,
    /// Mean probability of the sycophantic label token (full softmax).
    pub p_syc_mean: f64,
    pub p_anti_mean: f64,
}

/// Taps that mean-ablate `heads`.
pub fn ablation_taps(
    heads: &[HeadId],
    means: &BTreeMap<HeadId, Vec<f32>>,
    head_dim: usize,
) -> Result<Taps> {
    let mut taps = Taps::new();
    for h in heads {
        let m = means
            .get(h)
            .ok_or_else(|| anyhow::anyhow!("no mean activation for head {h}"))?;
        taps = taps.ablate_z(*h, head_dim, m.clone());
    }
    Ok(taps)
}

/// F and label probabilities of `prompts` with the first k of `order` ablated, per k.
pub fn knockout_curve<B: Backend>(
    model: &Model<B>,
    prompts: &[Vec<u32>],
    means: &BTreeMap<HeadId, Vec<f32>>,
    order: &[HeadId],
    ks: &[usize],
    metric: &Metric,
) -> Result<Vec<KnockoutPoint>> {
    ensure!(!prompts.is_empty(), "knockout needs at least one prompt");
    let mut out = vec![];
    for &k in ks {
        ensure!(
            k <= order.len(),
            "knockout k = {k} exceeds the {} ranked heads",
            order.len()
        );
        let heads = order[..k].to_vec();
        let taps = ablation_taps(&heads, means, model.head_dim())?;
        let (mut f, mut ps, mut pa) = (0.0, 0.0, 0.0);
        for chunk in prompts.chunks(8) {
            let res = model.forward(chunk, &taps)?;
            for i in 0..chunk.len() {
                let row = res.logits.row_at(i);
                f += metric.of_logits(row);
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                let z: f64 = row.iter().map(|&y| (y as f64 - max).exp()).sum();
                ps += (row[metric.syc as usize] as f64 - max).exp() / z;
                pa += (row[metric.anti as usize] as f64 - max).exp() / z;
            }
        }
        let n = prompts.len() as f64;
        out.push(KnockoutPoint {
            k,
            heads,
            metric_mean: f / n,
            p_syc_mean: ps / n,
            p_anti_mean: pa / n,
        });
    }
    Ok(out)
}

/// k = 0, 1, 2, 4, ... up to `max_k` (and `max_k` itself).
pub fn doubling_ks(max_k: usize) -> Vec<usize> {
    let mut ks = vec![0];
    let mut k = 1;
    while k < max_k {
        ks.push(k);
        k *= 2;
    }
    if max_k > 0 {
        ks.push(max_k);
    }
    ks
}
