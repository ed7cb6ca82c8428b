//! From heads to a circuit: exact edge scores for every sender -> receiver pair through q,
//! k and v, batched, with EAP and EAP-IG beside them (`docs/circuit.md`).
//!
//! Receivers are heads (or the logits); senders are every head and MLP of an earlier layer.
//! Only the last position is patched (the paper's pairs differ in length and align there).
//! The pieces: names and edges (`circuit_edge.rs`), the clean runs and a receiver's
//! attention on the host (`circuit_receiver.rs`), the exact batched sweep
//! (`circuit_exact.rs`), the gradients (`circuit_grad.rs`), agreement and circuit.json
//! (`circuit_report.rs`), the picture (`circuit_chart.rs`).

pub use super::circuit_edge::{edges_of, Channel, Edge, Receiver, Sender};
pub use super::circuit_exact::{exact_scores, sender_deltas, ExactScores};
use super::circuit_receiver::dot;
pub use super::circuit_receiver::{pair_runs, PairRun};
pub use super::circuit_report::{agreement, Agreement};
use super::metric::Metric;
use super::pairs::TokenPair;
use crate::backend::TrainBackend;
use crate::transformer::Model;
use anyhow::{ensure, Result};
use indicatif::ProgressBar;

/// What to score.
#[derive(Debug, Clone)]
pub struct CircuitOptions {
    pub receivers: Vec<Receiver>,
    /// EAP-IG's points on the path (m); 0 skips EAP-IG.
    pub ig_steps: usize,
    /// Pairs per batch.
    pub chunk: usize,
}

/// Every edge's exact and approximate scores.
#[derive(Debug, Clone)]
pub struct Circuit {
    pub n_layers: usize,
    pub n_heads: usize,
    pub metric: Metric,
    pub exact: ExactScores,
    /// `[edge][pair]` first-order (EAP) and integrated-gradient (EAP-IG) scores.
    pub eap: Vec<Vec<f64>>,
    pub eap_ig: Option<Vec<Vec<f64>>>,
    pub ig_steps: usize,
    /// F of each pair's clean X_r.
    pub reference: Vec<f64>,
}

impl Circuit {
    pub fn edges(&self) -> &[Edge] {
        &self.exact.edges
    }
    fn mean(v: &[Vec<f64>], e: usize) -> f64 {
        v[e].iter().sum::<f64>() / v[e].len().max(1) as f64
    }
    pub fn exact_mean(&self, e: usize) -> f64 {
        self.exact.mean(e)
    }
    pub fn eap_mean(&self, e: usize) -> f64 {
        Self::mean(&self.eap, e)
    }
    pub fn eap_ig_mean(&self, e: usize) -> Option<f64> {
        self.eap_ig.as_ref().map(|v| Self::mean(v, e))
    }
    /// Edges with a path, ranked by |mean exact score| (largest first).
    pub fn ranking(&self) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.edges().len())
            .filter(|&e| self.edges()[e].has_path(self.n_layers))
            .collect();
        idx.sort_by(|&a, &b| {
            self.exact_mean(b)
                .abs()
                .total_cmp(&self.exact_mean(a).abs())
                .then(a.cmp(&b))
        });
        idx
    }
}

/// Score every edge into `opts.receivers` from every earlier head and MLP on `pairs`.
/// `progress` counts (receiver, pair) steps: `2 * receivers * pairs` in all (exact, then
/// the gradients).
pub fn circuit<B: TrainBackend>(
    model: &Model<B>,
    pairs: &[TokenPair],
    metric: &Metric,
    opts: &CircuitOptions,
    progress: Option<&ProgressBar>,
) -> Result<Circuit> {
    ensure!(!pairs.is_empty(), "a circuit needs at least one pair");
    ensure!(
        !opts.receivers.is_empty(),
        "a circuit needs at least one receiver"
    );
    let (l_n, h_n) = (model.n_layers(), model.n_heads());
    for r in &opts.receivers {
        if let Receiver::Head(h) = r {
            ensure!(
                h.layer < l_n && h.head < h_n,
                "receiver {h}: the model has {l_n} layers of {h_n} heads"
            );
        }
    }
    let layers: Vec<usize> = {
        let mut v: Vec<usize> = opts.receivers.iter().map(|r| r.layer(l_n)).collect();
        v.retain(|&l| l < l_n);
        v.sort_unstable();
        v.dedup();
        v
    };
    let runs = pair_runs(model, pairs, metric, &layers, opts.chunk)?;
    let senders = Sender::all(l_n, h_n);
    let edges = edges_of(&opts.receivers, &senders);
    let exact = exact_scores(model, &runs, metric, &senders, &edges, opts.chunk, progress)?;
    let eap = approx_scores(model, &runs, metric, &senders, &exact.edges, None, opts)?;
    let eap_ig = (opts.ig_steps > 0)
        .then(|| {
            approx_scores(
                model,
                &runs,
                metric,
                &senders,
                &exact.edges,
                Some(opts.ig_steps),
                opts,
            )
        })
        .transpose()?;
    if let Some(pb) = progress {
        pb.inc((opts.receivers.len() * pairs.len()) as u64);
    }
    Ok(Circuit {
        n_layers: l_n,
        n_heads: h_n,
        metric: *metric,
        exact,
        eap,
        eap_ig,
        ig_steps: opts.ig_steps,
        reference: runs
            .iter()
            .map(|r| metric.value(r.ref_labels.0, r.ref_labels.1))
            .collect(),
    })
}

/// EAP (`steps = None`) or EAP-IG scores `[edge][pair]`: the receiver channel's averaged
/// gradient dotted with each sender's delta; 0 without a path.
pub fn approx_scores<B: TrainBackend>(
    model: &Model<B>,
    runs: &[PairRun],
    metric: &Metric,
    senders: &[Sender],
    edges: &[Edge],
    steps: Option<usize>,
    opts: &CircuitOptions,
) -> Result<Vec<Vec<f64>>> {
    let l_n = model.n_layers();
    let mut out = vec![vec![0.0; runs.len()]; edges.len()];
    let mut receivers: Vec<Receiver> = edges.iter().map(|e| e.receiver).collect();
    receivers.dedup();
    let chunk = opts.chunk.max(1);
    for (c, group) in runs.chunks(chunk).enumerate() {
        let deltas = sender_deltas(model, group, senders)?;
        for &r in &receivers {
            let grads = super::circuit_grad::receiver_grads(model, group, metric, r, steps)?;
            for (ei, e) in edges.iter().enumerate() {
                if e.receiver != r || !e.has_path(l_n) {
                    continue;
                }
                let ci = r.channels().iter().position(|&x| x == e.channel);
                let si = senders.iter().position(|&s| s == e.sender);
                let (Some(ci), Some(si)) = (ci, si) else {
                    continue;
                };
                for (p, delta) in deltas.iter().enumerate() {
                    let d64: Vec<f64> = delta[si].iter().map(|&x| x as f64).collect();
                    out[ei][c * chunk + p] = dot(&grads[ci][p], &d64);
                }
            }
        }
    }
    Ok(out)
}
