//! The analyses from Python, through the code the CLI runs: diagnosis (path, activation,
//! attribution patching), knockout and attention share on a loaded model, returning JSON
//! the Python side turns into objects with numpy fields; evaluation, tuning and the
//! pipeline run the CLI's commands themselves (`cli`), flags and checks included.

use crate::blocking;
use crate::engine::Engine;
use crate::on_model;
use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use pinpoint::diagnose::attention::{attention_shares, challenge_span};
use pinpoint::diagnose::inputs::{build_metric, load_pairs, PairArgs};
use pinpoint::diagnose::knockout::{doubling_ks, knockout_curve, mean_z};
use pinpoint::diagnose::metric::MetricKind;
use pinpoint::diagnose::pairs;
use pinpoint::diagnose::report::write_diagnosis;
use pinpoint::diagnose::run::{diagnose_tokens, DiagnoseConfig, Method, NodePositions};
use pinpoint::tune::HeadsArg;
use pinpoint::util::progress_bar;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use serde_json::json;
use std::path::PathBuf;

/// The pair flags (`pinpoint diagnose --pairs --n --seed --system --syc-word --anti-word
/// --labels --metric`), checked as the CLI checks them.
#[allow(clippy::too_many_arguments)]
fn pair_args(
    pairs: Option<PathBuf>,
    n: usize,
    seed: u64,
    system: Option<String>,
    syc_word: String,
    anti_word: String,
    labels: String,
    metric: &str,
) -> anyhow::Result<PairArgs> {
    let metric = MetricKind::from_str(metric, true).map_err(|_| {
        anyhow::anyhow!("metric must be one of ratio, logit-diff, prob-diff; got {metric:?}")
    })?;
    if labels != "words" && labels != "auto" {
        bail!("labels must be \"words\" or \"auto\", got {labels:?}");
    }
    let a = PairArgs {
        pairs,
        n,
        seed,
        system: system.unwrap_or_else(|| pairs::DEFAULT_SYSTEM.to_string()),
        syc_word,
        anti_word,
        labels,
        metric,
    };
    a.check()?;
    Ok(a)
}

fn model_id(e: &Engine) -> String {
    e.dir()
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| e.dir().display().to_string())
}

/// Score every head (`pinpoint diagnose`): JSON {diagnosis, syc_label, anti_label, data}.
/// With `out`, also writes the CLI's files there.
#[pyfunction]
#[pyo3(signature = (engine, pairs, n, seed, system, syc_word, anti_word, labels, metric, method, positions, freeze_mlp, top_k, out, progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn diagnose(
    py: Python<'_>,
    engine: &Engine,
    pairs: Option<PathBuf>,
    n: usize,
    seed: u64,
    system: Option<String>,
    syc_word: String,
    anti_word: String,
    labels: String,
    metric: &str,
    method: &str,
    positions: &str,
    freeze_mlp: bool,
    top_k: usize,
    out: Option<PathBuf>,
    progress: Option<PyObject>,
) -> PyResult<String> {
    let tok = engine.tok()?;
    let method = method.to_string();
    let positions = positions.to_string();
    let metric = metric.to_string();
    let show = progress.is_some();
    blocking::run(py, progress.as_ref(), move || {
        let a = pair_args(pairs, n, seed, system, syc_word, anti_word, labels, &metric)?;
        let method = Method::from_str(&method, true).map_err(|_| {
            anyhow::anyhow!(
                "method must be path, activation, path-oracle or attribution; got {method:?}"
            )
        })?;
        let positions: NodePositions = positions.parse()?;
        pinpoint::guard::flag::at_least("--top-k", top_k, 1)?;
        if let Some(o) = &out {
            pinpoint::guard::output_dir(o, "--out", &[engine.dir()])?;
        }
        let loaded = load_pairs(&a)?;
        let token_pairs = pairs::tokenize_pairs(tok, &loaded.pairs)?;
        let cfg = DiagnoseConfig {
            method,
            positions,
            freeze_mlp,
            chunk: 16,
        };
        on_model!(engine, |m| {
            let (metric, syc, anti) = build_metric(&a, m, tok, &token_pairs)?;
            let d = diagnose_tokens(m, &token_pairs, &metric, &cfg, show)?;
            let scores: Vec<f64> = d.heads.iter().map(|h| h.score).collect();
            pinpoint::guard::finite64("head scores", &scores)
                .context("the diagnosis produced non-finite scores; nothing was written")?;
            if let Some(o) = &out {
                let id = model_id(engine);
                write_diagnosis(o, &m.cfg, &id, &loaded.data, (&syc, &anti), &d, top_k)?;
            }
            Ok(json!({"diagnosis": d, "syc_label": syc, "anti_label": anti,
                "data": loaded.data})
            .to_string())
        })
    })
}

/// Heads from a heads.json (`heads`) or a list (`heads_list`), as `--heads`/`--heads-list`.
fn heads_arg(heads: Option<PathBuf>, heads_list: Option<String>) -> anyhow::Result<HeadsArg> {
    if let Some(p) = &heads {
        pinpoint::guard::input_file(p, "--heads file")?;
    }
    if heads.is_some() && heads_list.is_some() {
        bail!("give heads as a heads.json path or as a list, not both");
    }
    Ok(HeadsArg { heads, heads_list })
}

/// Mean-ablation knockout (`pinpoint knockout`): JSON {curve, metric, syc_label,
/// anti_label}.
#[pyfunction]
#[pyo3(signature = (engine, heads, heads_list, max_k, pairs, n, seed, system, syc_word, anti_word, labels, metric, progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn knockout(
    py: Python<'_>,
    engine: &Engine,
    heads: Option<PathBuf>,
    heads_list: Option<String>,
    max_k: usize,
    pairs: Option<PathBuf>,
    n: usize,
    seed: u64,
    system: Option<String>,
    syc_word: String,
    anti_word: String,
    labels: String,
    metric: &str,
    progress: Option<PyObject>,
) -> PyResult<String> {
    let tok = engine.tok()?;
    let metric = metric.to_string();
    blocking::run(py, progress.as_ref(), move || {
        let a = pair_args(pairs, n, seed, system, syc_word, anti_word, labels, &metric)?;
        pinpoint::guard::flag::at_least("--max-k", max_k, 1)?;
        let order = heads_arg(heads, heads_list)?.first(engine.cfg(), max_k)?;
        let loaded = load_pairs(&a)?;
        let token_pairs = pairs::tokenize_pairs(tok, &loaded.pairs)?;
        on_model!(engine, |m| {
            let (metric, syc, anti) = build_metric(&a, m, tok, &token_pairs)?;
            let refs: Vec<Vec<u32>> = token_pairs.iter().map(|p| p.reference.clone()).collect();
            let cfs: Vec<Vec<u32>> = token_pairs
                .iter()
                .map(|p| p.counterfactual.clone())
                .collect();
            let means = mean_z(m, &cfs, &order)?;
            let ks = doubling_ks(order.len());
            let curve = knockout_curve(m, &refs, &means, &order, &ks, &metric)?;
            Ok(json!({"curve": curve, "metric": metric, "syc_label": syc,
                "anti_label": anti, "order": order})
            .to_string())
        })
    })
}

/// Attention share on the challenge (`pinpoint attention`): JSON {heads, share,
/// per_prompt, top}.
#[pyfunction]
#[pyo3(signature = (engine, heads, heads_list, top_k, pairs, n, seed, system, progress=None))]
#[allow(clippy::too_many_arguments)]
pub fn attention_share(
    py: Python<'_>,
    engine: &Engine,
    heads: Option<PathBuf>,
    heads_list: Option<String>,
    top_k: usize,
    pairs: Option<PathBuf>,
    n: usize,
    seed: u64,
    system: Option<String>,
    progress: Option<PyObject>,
) -> PyResult<String> {
    let tok = engine.tok()?;
    let show = progress.is_some();
    blocking::run(py, progress.as_ref(), move || {
        let a = pair_args(
            pairs,
            n,
            seed,
            system,
            "Apologies".into(),
            "Yes".into(),
            "words".into(),
            "ratio",
        )?;
        pinpoint::guard::flag::at_least("--top-k", top_k, 1)?;
        let top = match (&heads, &heads_list) {
            (None, None) => vec![],
            _ => heads_arg(heads, heads_list)?.first(engine.cfg(), top_k)?,
        };
        let loaded = load_pairs(&a)?;
        let prompts: Vec<(Vec<u32>, usize)> = loaded
            .pairs
            .iter()
            .map(|p| challenge_span(tok, &p.reference))
            .collect::<anyhow::Result<_>>()?;
        let pb = progress_bar(prompts.len() as u64, "attention", show);
        let s = on_model!(engine, |m| attention_shares(m, &prompts, pb.as_ref()))?;
        Ok(
            json!({"heads": s.heads, "share": s.share, "per_prompt": s.per_prompt,
            "top": top})
            .to_string(),
        )
    })
}

/// Run a `pinpoint` command (`args` after the program name) with the CLI's own parsing,
/// checks and outputs: what `evaluate`, `tune` and `pipeline` call.
fn cli(py: Python<'_>, args: Vec<String>, progress: Option<PyObject>) -> PyResult<()> {
    let argv = std::iter::once("pinpoint".to_string()).chain(args);
    let parsed = pinpoint::cli::Cli::try_parse_from(argv)
        .map_err(|e| PyValueError::new_err(e.render().to_string()))?;
    blocking::run(py, progress.as_ref(), move || pinpoint::cli::run(parsed))
}

/// `pinpoint eval ARGS`.
#[pyfunction]
#[pyo3(signature = (args, progress=None))]
pub fn evaluate(py: Python<'_>, args: Vec<String>, progress: Option<PyObject>) -> PyResult<()> {
    cli(py, [vec!["eval".to_string()], args].concat(), progress)
}

/// `pinpoint tune ARGS`.
#[pyfunction]
#[pyo3(signature = (args, progress=None))]
pub fn tune(py: Python<'_>, args: Vec<String>, progress: Option<PyObject>) -> PyResult<()> {
    cli(py, [vec!["tune".to_string()], args].concat(), progress)
}

/// `pinpoint pipeline ARGS`.
#[pyfunction]
#[pyo3(signature = (args, progress=None))]
pub fn pipeline(py: Python<'_>, args: Vec<String>, progress: Option<PyObject>) -> PyResult<()> {
    cli(py, [vec!["pipeline".to_string()], args].concat(), progress)
}

/// Every name `run_with_cache` takes for this model, in forward order.
#[pyfunction]
pub fn hook_names(engine: &Engine) -> Vec<String> {
    let nl = engine.cfg().num_hidden_layers;
    let mut names = vec![];
    for l in 0..nl {
        names.push(format!("blocks.{l}.hook_resid_pre"));
        names.push(format!("blocks.{l}.ln1.hook_normalized"));
        names.push(format!("blocks.{l}.attn.hook_pattern"));
        names.push(format!("blocks.{l}.attn.hook_z"));
        names.push(format!("blocks.{l}.hook_attn_out"));
        names.push(format!("blocks.{l}.hook_mlp_out"));
    }
    names.push(format!("blocks.{}.hook_resid_post", nl - 1));
    names
}
