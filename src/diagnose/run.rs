//! The whole diagnosis as one library call: pairs -> clean runs -> head scores -> ranking,
//! used by `pinpoint diagnose` and the pipeline.

use super::attribution::AttrPositions;
use super::metric::Metric;
use super::pairs::{self, PromptPair, TokenPair};
use super::path_patching::{self, CleanRun, HeadScores, Node};
use crate::backend::Backend;
use crate::backend::TrainBackend;
use crate::heads::{HeadId, Positions};
use crate::model::tokenizer::Tokenizer;
use crate::transformer::Model;
use crate::util::progress_bar;
use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Which effect to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Exact path patching heads -> logits (other heads frozen), the paper's method.
    Path,
    /// Activation patching: total effect, nothing frozen.
    Activation,
    /// The literal one-forward-per-head path patching (slow; the oracle).
    PathOracle,
    /// Attribution patching: first-order (z_c - z_r) . dF/dz, one forward + one backward.
    Attribution,
}

/// Where to patch: the last token (the paper), or aligned positions (equal-length pairs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodePositions {
    Last,
    All,
    At(Vec<usize>),
}

impl std::str::FromStr for NodePositions {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "last" => Self::Last,
            "all" => Self::All,
            list => Self::At(
                list.split(',')
                    .map(|x| {
                        x.trim()
                            .parse::<usize>()
                            .with_context(|| format!("bad position {x:?} in --positions"))
                    })
                    .collect::<Result<_>>()?,
            ),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiagnoseConfig {
    pub method: Method,
    pub positions: NodePositions,
    pub freeze_mlp: bool,
    /// Pairs per batched clean run / sweep chunk.
    pub chunk: usize,
}

impl Default for DiagnoseConfig {
    fn default() -> Self {
        Self {
            method: Method::Path,
            positions: NodePositions::Last,
            freeze_mlp: false,
            chunk: 16,
        }
    }
}

/// One scored node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScoredHead {
    pub layer: usize,
    pub head: usize,
    /// Position for per-position nodes; absent for last-position scores.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub position: Option<usize>,
    pub rank: usize,
    pub score: f64,
    pub std: f64,
    pub per_pair: Vec<f64>,
}

impl ScoredHead {
    pub fn id(&self) -> HeadId {
        HeadId::new(self.layer, self.head)
    }
    /// The TransformerLens label with the node's position, `L3H5` or `L3H5@17`.
    pub fn label(&self) -> String {
        let pos = self.position.map(|p| format!("@{p}")).unwrap_or_default();
        format!("{}{pos}", self.id())
    }
    /// The slice of TransformerLens' `hook_z` the score patches:
    /// `blocks.{l}.attn.hook_z[:, {position, or -1 for the last}, {h}]`.
    pub fn z_hook(&self) -> String {
        let pos = self.position.map_or("-1".into(), |p| p.to_string());
        self.id().z_hook(&pos)
    }
}

/// The diagnosis result (what heads.json holds, less the model/data header).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Diagnosis {
    pub config: DiagnoseConfig,
    pub metric: Metric,
    pub n_pairs: usize,
    /// Mean metric of the clean reference and counterfactual runs.
    pub reference_metric: f64,
    pub counterfactual_metric: f64,
    /// Sorted by rank (most negative score first).
    pub heads: Vec<ScoredHead>,
    pub seconds_clean: f64,
    pub seconds_sweep: f64,
}

impl Diagnosis {
    pub fn top(&self, k: usize) -> Vec<HeadId> {
        self.heads.iter().take(k).map(ScoredHead::id).collect()
    }
}

/// Tokenize pairs, run the clean passes and score every head (or node).
pub fn diagnose<B: TrainBackend>(
    model: &Model<B>,
    tok: &Tokenizer,
    prompt_pairs: &[PromptPair],
    metric: &Metric,
    cfg: &DiagnoseConfig,
    show_progress: bool,
) -> Result<Diagnosis> {
    let token_pairs = pairs::tokenize_pairs(tok, prompt_pairs)?;
    diagnose_tokens(model, &token_pairs, metric, cfg, show_progress)
}

/// [`diagnose`] on already tokenized pairs.
pub fn diagnose_tokens<B: TrainBackend>(
    model: &Model<B>,
    token_pairs: &[TokenPair],
    metric: &Metric,
    cfg: &DiagnoseConfig,
    show_progress: bool,
) -> Result<Diagnosis> {
    let attribution = |runs: &[CleanRun], ap, pb: Option<&ProgressBar>| {
        super::attribution::attribution_patching(model, token_pairs, runs, metric, ap, pb)
    };
    diagnose_with(
        model,
        token_pairs,
        metric,
        cfg,
        show_progress,
        Some(&attribution),
    )
}

/// [`diagnose_tokens`] on a backend without backward ops: every method but attribution
/// patching (which then fails with a clear error).
pub fn diagnose_tokens_forward<B: Backend>(
    model: &Model<B>,
    token_pairs: &[TokenPair],
    metric: &Metric,
    cfg: &DiagnoseConfig,
    show_progress: bool,
) -> Result<Diagnosis> {
    diagnose_with(model, token_pairs, metric, cfg, show_progress, None)
}

/// Attribution patching of the clean runs (needs a backward pass).
type AttributionFn<'a> =
    dyn Fn(&[CleanRun], AttrPositions, Option<&ProgressBar>) -> Result<HeadScores> + 'a;

fn diagnose_with<B: Backend>(
    model: &Model<B>,
    token_pairs: &[TokenPair],
    metric: &Metric,
    cfg: &DiagnoseConfig,
    show_progress: bool,
    attribution: Option<&AttributionFn<'_>>,
) -> Result<Diagnosis> {
    if token_pairs.is_empty() {
        bail!("no prompt pairs to diagnose with");
    }
    let n_heads = model.all_heads().len() as u64;
    let t0 = Instant::now();
    let pb = progress_bar(token_pairs.len() as u64, "clean runs", show_progress);
    let runs = path_patching::clean_runs(model, token_pairs, metric, cfg.chunk, pb.as_ref())?;
    if let Some(pb) = pb {
        pb.finish();
    }
    let seconds_clean = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let p_n = token_pairs.len() as u64;
    let (scores, positions): (HeadScores, Option<Vec<usize>>) = match (cfg.method, &cfg.positions) {
        (Method::Path, NodePositions::Last) => {
            let pb = progress_bar(n_heads * p_n, "path patching", show_progress);
            (
                path_patching::path_patching_fast(
                    model,
                    &runs,
                    metric,
                    cfg.freeze_mlp,
                    cfg.chunk,
                    pb.as_ref(),
                )?,
                None,
            )
        }
        (Method::PathOracle, NodePositions::Last) => {
            let pb = progress_bar(n_heads * p_n, "oracle", show_progress);
            (
                path_patching::path_patching_oracle(
                    model,
                    token_pairs,
                    &runs,
                    metric,
                    cfg.freeze_mlp,
                    pb.as_ref(),
                )?,
                None,
            )
        }
        (Method::Path | Method::PathOracle, pos) => {
            path_patching_at(model, token_pairs, &runs, metric, cfg, pos, show_progress)?
        }
        (Method::Attribution, pos) => {
            let ap = match pos {
                NodePositions::Last => AttrPositions::Last,
                NodePositions::All => AttrPositions::All,
                NodePositions::At(v) => AttrPositions::At(v.clone()),
            };
            let Some(attribution) = attribution else {
                bail!(
                    "attribution patching needs backward ops, which {} does not have",
                    model.backend_name()
                );
            };
            let pb = progress_bar(n_heads * p_n, "attribution", show_progress);
            (attribution(&runs, ap, pb.as_ref())?, None)
        }
        (Method::Activation, NodePositions::Last) => {
            let pb = progress_bar(n_heads * p_n, "activation", show_progress);
            (
                path_patching::activation_patching_last(
                    model,
                    token_pairs,
                    &runs,
                    metric,
                    pb.as_ref(),
                )?,
                None,
            )
        }
        (Method::Activation, pos) => {
            let p = match pos {
                NodePositions::All => Positions::All,
                NodePositions::At(v) => Positions::At(v.clone()),
                NodePositions::Last => unreachable!(),
            };
            let pb = progress_bar(n_heads * p_n, "activation", show_progress);
            let s = path_patching::activation_patching_positions(
                model,
                token_pairs,
                &runs,
                metric,
                &p,
                pb.as_ref(),
            )?;
            (s, None)
        }
    };
    let seconds_sweep = t1.elapsed().as_secs_f64();
    Ok(rank_heads(
        cfg,
        metric,
        token_pairs.len(),
        &runs,
        scores,
        positions,
        (seconds_clean, seconds_sweep),
    ))
}

/// The diagnosis from the sweep's scores: heads ranked (most sycophancy-reducing first),
/// with the clean runs' mean metrics and the timings `(clean runs, sweep)` in seconds.
fn rank_heads(
    cfg: &DiagnoseConfig,
    metric: &Metric,
    n_pairs: usize,
    runs: &[CleanRun],
    scores: HeadScores,
    positions: Option<Vec<usize>>,
    (seconds_clean, seconds_sweep): (f64, f64),
) -> Diagnosis {
    let order = scores.ranking();
    let heads = order
        .iter()
        .enumerate()
        .map(|(rank, &i)| ScoredHead {
            layer: scores.heads[i].layer,
            head: scores.heads[i].head,
            position: positions.as_ref().map(|p| p[i]),
            rank: rank + 1,
            score: scores.mean(i),
            std: scores.std(i),
            per_pair: scores.per_pair[i].clone(),
        })
        .collect();
    let mean = |v: Vec<f64>| v.iter().sum::<f64>() / v.len() as f64;
    Diagnosis {
        config: cfg.clone(),
        metric: *metric,
        n_pairs,
        reference_metric: mean(
            runs.iter()
                .map(|r| metric.value(r.ref_labels.0 as f64, r.ref_labels.1 as f64))
                .collect(),
        ),
        counterfactual_metric: mean(
            runs.iter()
                .map(|r| metric.value(r.cf_labels.0 as f64, r.cf_labels.1 as f64))
                .collect(),
        ),
        heads,
        seconds_clean,
        seconds_sweep,
    }
}

/// Literal path patching at positions other than only the last (`--positions all|i,j`):
/// one node per (position, head), the last position written as `None`. Returns the scores
/// and each node's position.
#[allow(clippy::too_many_arguments)]
fn path_patching_at<B: Backend>(
    model: &Model<B>,
    token_pairs: &[TokenPair],
    runs: &[CleanRun],
    metric: &Metric,
    cfg: &DiagnoseConfig,
    pos: &NodePositions,
    show_progress: bool,
) -> Result<(HeadScores, Option<Vec<usize>>)> {
    let p_n = token_pairs.len() as u64;
    pairs::require_equal_lengths(
        token_pairs,
        "path patching at positions other than the last",
    )?;
    let t = token_pairs[0].reference.len();
    let ps: Vec<usize> = match pos {
        NodePositions::All => (0..t).collect(),
        NodePositions::At(v) => v.clone(),
        NodePositions::Last => unreachable!(),
    };
    if let Some(bad) = ps.iter().find(|&&p| p >= t) {
        bail!("--positions {bad} is past the prompts' length {t}");
    }
    let mut nodes = vec![];
    for &p in &ps {
        for head in model.all_heads() {
            nodes.push(Node {
                head,
                pos: if p + 1 == t { None } else { Some(p) },
            });
        }
    }
    let pb = progress_bar(nodes.len() as u64 * p_n, "path patching", show_progress);
    let per_pair = path_patching::path_patching_literal(
        model,
        token_pairs,
        runs,
        &nodes,
        metric,
        cfg.freeze_mlp,
        16,
        pb.as_ref(),
    )?;
    let heads = nodes.iter().map(|n| n.head).collect();
    let reference = runs
        .iter()
        .map(|r| metric.value(r.ref_labels.0 as f64, r.ref_labels.1 as f64))
        .collect();
    let node_pos = nodes.iter().map(|n| n.pos.unwrap_or(t - 1)).collect();
    Ok((
        HeadScores {
            heads,
            per_pair,
            reference,
        },
        Some(node_pos),
    ))
}

/// `--labels auto`: the most common greedy first token of the model's reply to the
/// reference prompts (the argmax of their last-position logits).
pub fn auto_syc_label<B: Backend>(model: &Model<B>, token_pairs: &[TokenPair]) -> Result<u32> {
    let refs: Vec<Vec<u32>> = token_pairs.iter().map(|p| p.reference.clone()).collect();
    let mut counts = std::collections::BTreeMap::new();
    for chunk in refs.chunks(16) {
        let out = model.forward(chunk, &crate::heads::Taps::new())?;
        for i in 0..chunk.len() {
            *counts
                .entry(crate::generate::argmax(out.logits.row_at(i)))
                .or_insert(0usize) += 1;
        }
    }
    counts
        .into_iter()
        .max_by_key(|&(t, c)| (c, std::cmp::Reverse(t)))
        .map(|(t, _)| t)
        .context("no prompts")
}
