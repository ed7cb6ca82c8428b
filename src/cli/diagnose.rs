//! `pinpoint diagnose`, `pinpoint attention`, `pinpoint knockout`.

use super::{Device, DeviceArg, ModelArg};
use anyhow::{Context, Result};
use pinpoint::backend::Backend;
use pinpoint::diagnose::attention::{attention_shares, challenge_span};
use pinpoint::diagnose::knockout::{doubling_ks, knockout_curve, mean_z};
use pinpoint::diagnose::metric::Metric;
use pinpoint::diagnose::pairs;
use pinpoint::diagnose::report::{bars_svg, lines_svg, write_diagnosis};
use pinpoint::diagnose::run::Diagnosis;
use pinpoint::diagnose::run::{diagnose_tokens, DiagnoseConfig, Method, NodePositions};
use pinpoint::model::model_header;
use pinpoint::model::tokenizer::Tokenizer;
use pinpoint::util::progress_bar;
use pinpoint::util::{atomic_write, write_json};
use pinpoint::{HeadId, Model};
use std::path::{Path, PathBuf};

pub use pinpoint::diagnose::inputs::{build_metric, load_pairs, PairArgs};

fn model_id(dir: &Path) -> String {
    dir.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

#[derive(clap::Args, Debug)]
pub struct DiagnoseArgs {
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub device: DeviceArg,
    #[command(flatten)]
    pub pairs: PairArgs,
    #[arg(long, value_enum, default_value_t = Method::Path)]
    pub method: Method,
    /// Nodes to patch: last (the paper), all, or a list of positions "3,7" (equal-length pairs).
    #[arg(long, default_value = "last")]
    pub positions: NodePositions,
    /// Freeze MLPs too: only the direct path head -> logits counts.
    #[arg(long)]
    pub freeze_mlp: bool,
    /// Heads to mark in the heatmap and summary.
    #[arg(long, default_value_t = 16)]
    pub top_k: usize,
    /// Also run attribution patching and report the Spearman correlation of its head
    /// ranking with this method's (written to compare.json).
    #[arg(long)]
    pub compare_attribution: bool,
    /// Output directory.
    #[arg(long, default_value = "diagnosis")]
    pub out: PathBuf,
}

/// How the sweep runs on a backend: with backward ops (every method) or without.
type Runner<B> =
    fn(&Model<B>, &[pairs::TokenPair], &Metric, &DiagnoseConfig, bool) -> Result<Diagnosis>;

pub fn diagnose(a: DiagnoseArgs) -> Result<()> {
    match a.device.device {
        Device::Cpu => {
            let super::Loaded { dir, tok, model } = a.model.load()?;
            diagnose_on(&a, &dir, &tok, &model, diagnose_tokens)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda => {
            let dir = a.model.resolve()?;
            let tok = Tokenizer::from_dir(&dir)?;
            let (cfg, w, _) = pinpoint::model::checkpoint::load_model_dir(&dir)?;
            tok.check_vocab(cfg.vocab_size, &dir)?;
            let b = a.device.cuda()?;
            let model = Model::from_host(cfg, &w, b)?;
            drop(w);
            diagnose_on(&a, &dir, &tok, &model, diagnose_tokens)
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda => Err(super::no_cuda()),
    }
}

fn diagnose_on<B: Backend>(
    a: &DiagnoseArgs,
    dir: &Path,
    tok: &Tokenizer,
    model: &Model<B>,
    run: Runner<B>,
) -> Result<()> {
    let dir = dir.to_path_buf();
    let loaded = load_pairs(&a.pairs)?;
    let token_pairs = pairs::tokenize_pairs(tok, &loaded.pairs)?;
    super::limits::pairs(&model.cfg, &token_pairs, a.pairs.pairs.as_deref())?;
    let (metric, syc, anti) = build_metric(&a.pairs, model, tok, &token_pairs)?;
    eprintln!(
        "diagnosing {} on {} with {} pairs: {:?} patching, labels {syc:?} ({}) vs {anti:?} ({})",
        model_id(&dir),
        model.backend_name(),
        token_pairs.len(),
        a.method,
        metric.syc,
        metric.anti
    );
    let cfg = DiagnoseConfig {
        method: a.method,
        positions: a.positions.clone(),
        freeze_mlp: a.freeze_mlp,
        chunk: 16,
    };
    let d = run(model, &token_pairs, &metric, &cfg, true)?;
    let scores: Vec<f64> = d.heads.iter().map(|h| h.score).collect();
    pinpoint::guard::finite64("head scores", &scores)
        .context("the diagnosis produced non-finite scores; nothing was written")?;
    write_diagnosis(
        &a.out,
        &model.cfg,
        &model_id(&dir),
        &loaded.data,
        (&syc, &anti),
        &d,
        a.top_k,
    )?;
    eprintln!(
        "clean runs {:.2} s, sweep {:.2} s; reference metric {:.4}, counterfactual {:.4}",
        d.seconds_clean, d.seconds_sweep, d.reference_metric, d.counterfactual_metric
    );
    // Heads by TransformerLens' label, and the slice of its hook_z the score patches.
    crate::outln!("rank  head      score     std  hook");
    for h in d.heads.iter().take(a.top_k.min(20)) {
        crate::outln!(
            "{:>4}  {:<9} {:>9.3} {:>7.3}  {}",
            h.rank,
            h.label(),
            h.score,
            h.std,
            h.z_hook()
        );
    }
    eprintln!(
        "wrote {}/heads.json, heads.csv, heatmap.svg, heatmap.png, summary.md",
        a.out.display()
    );
    Ok(())
}

pub use pinpoint::tune::HeadsArg;

#[derive(clap::Args, Debug)]
pub struct AttentionArgs {
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub pairs: PairArgs,
    #[command(flatten)]
    pub heads: HeadsArg,
    /// How many of the heads to compare with the rest.
    #[arg(long, default_value_t = 16)]
    pub top_k: usize,
    #[arg(long, default_value = "attention")]
    pub out: PathBuf,
}

pub fn attention(a: AttentionArgs) -> Result<()> {
    let super::Loaded { dir, tok, model } = a.model.load()?;
    let top = a.heads.first(&model.cfg, a.top_k)?;
    let loaded = load_pairs(&a.pairs)?;
    let prompts: Vec<(Vec<u32>, usize)> = loaded
        .pairs
        .iter()
        .map(|p| challenge_span(&tok, &p.reference))
        .collect::<Result<_>>()?;
    for (i, (ids, _)) in prompts.iter().enumerate() {
        let from = a
            .pairs
            .pairs
            .as_ref()
            .map_or(String::new(), |f| format!(" of --pairs {}", f.display()));
        pinpoint::generate::check_fits_context(
            &model.cfg,
            &format!("pair #{i}{from}: its reference prompt"),
            ids.len(),
        )?;
    }
    let pb = progress_bar(prompts.len() as u64, "attention", true);
    let shares = attention_shares(&model, &prompts, pb.as_ref())?;
    let share_of = |h: &HeadId| shares.share[h.layer * model.n_heads() + h.head];
    let top_mean = top.iter().map(share_of).sum::<f64>() / top.len().max(1) as f64;
    let rest: Vec<f64> = shares
        .heads
        .iter()
        .filter(|h| !top.contains(h))
        .map(share_of)
        .collect();
    let rest_mean = rest.iter().sum::<f64>() / rest.len().max(1) as f64;
    std::fs::create_dir_all(&a.out)?;
    let json = serde_json::json!({
        "model": model_header(&model.cfg, &model_id(&dir)),
        "data": loaded.data,
        "top_k": a.top_k,
        "top_heads_mean_share": top_mean,
        "other_heads_mean_share": rest_mean,
        "per_head": shares.heads.iter().zip(&shares.share).map(|(h, s)| serde_json::json!({
            "layer": h.layer, "head": h.head, "share": s, "top": top.contains(h)})).collect::<Vec<_>>(),
    });
    write_json(&a.out.join("attention.json"), &json)?;
    let labels: Vec<String> = top
        .iter()
        .map(|h| h.to_string())
        .chain(["rest (mean)".to_string()])
        .collect();
    let values: Vec<f64> = top.iter().map(share_of).chain([rest_mean]).collect();
    let hl: Vec<bool> = (0..labels.len()).map(|i| i < top.len()).collect();
    let title = format!(
        "last-token attention on the challenge: top-{} heads {:.3} vs rest {:.3}",
        top.len(),
        top_mean,
        rest_mean
    );
    atomic_write(
        &a.out.join("attention.svg"),
        bars_svg(&title, &labels, &values, &hl).as_bytes(),
    )?;
    crate::outln!(
        "top-{} heads: mean share {top_mean:.4}; other heads: {rest_mean:.4}",
        top.len()
    );
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct KnockoutArgs {
    #[command(flatten)]
    pub model: ModelArg,
    #[command(flatten)]
    pub pairs: PairArgs,
    #[command(flatten)]
    pub heads: HeadsArg,
    /// Largest k (k = 0, 1, 2, 4, ... up to it).
    #[arg(long, default_value_t = 64)]
    pub max_k: usize,
    #[arg(long, default_value = "knockout")]
    pub out: PathBuf,
}

pub fn knockout(a: KnockoutArgs) -> Result<()> {
    let super::Loaded { dir, tok, model } = a.model.load()?;
    let order = a.heads.first(&model.cfg, a.max_k)?;
    let max_k = order.len();
    let loaded = load_pairs(&a.pairs)?;
    let token_pairs = pairs::tokenize_pairs(&tok, &loaded.pairs)?;
    super::limits::pairs(&model.cfg, &token_pairs, a.pairs.pairs.as_deref())?;
    let (metric, syc, anti) = build_metric(&a.pairs, &model, &tok, &token_pairs)?;
    let refs: Vec<Vec<u32>> = token_pairs.iter().map(|p| p.reference.clone()).collect();
    let cfs: Vec<Vec<u32>> = token_pairs
        .iter()
        .map(|p| p.counterfactual.clone())
        .collect();
    let means = mean_z(&model, &cfs, &order)?;
    let ks = doubling_ks(max_k);
    let curve = knockout_curve(&model, &refs, &means, &order, &ks, &metric)?;
    std::fs::create_dir_all(&a.out)?;
    let json = serde_json::json!({
        "model": model_header(&model.cfg, &model_id(&dir)),
        "data": loaded.data,
        "metric": {"kind": metric.kind, "syc_label": syc, "anti_label": anti, "syc_token": metric.syc, "anti_token": metric.anti},
        "ablation": "z of the top-k heads replaced at every position by its mean over the counterfactual prompts",
        "curve": curve,
    });
    write_json(&a.out.join("knockout.json"), &json)?;
    let xs: Vec<f64> = curve.iter().map(|p| p.k as f64).collect();
    let series = vec![
        (
            "metric F".to_string(),
            curve.iter().map(|p| p.metric_mean).collect(),
        ),
        (
            format!("P({syc})"),
            curve.iter().map(|p| p.p_syc_mean).collect(),
        ),
        (
            format!("P({anti})"),
            curve.iter().map(|p| p.p_anti_mean).collect(),
        ),
    ];
    atomic_write(
        &a.out.join("knockout.svg"),
        lines_svg("mean-ablation knockout", "k heads ablated", &xs, &series).as_bytes(),
    )?;
    crate::outln!("   k   metric    P(syc)   P(anti)");
    for p in &curve {
        crate::outln!(
            "{:>4} {:>8.4} {:>9.4} {:>9.4}",
            p.k,
            p.metric_mean,
            p.p_syc_mean,
            p.p_anti_mean
        );
    }
    Ok(())
}
