//! `pinpoint kl`: KL(original || tuned) of next-token distributions on OpenWebText.

use anyhow::{Context, Result};
use pinpoint::eval::{datasets, kl};
use pinpoint::model::tokenizer::Tokenizer;
use pinpoint::Model;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct KlArgs {
    /// The original model directory.
    #[arg(long)]
    pub base: PathBuf,
    /// The tuned model directory (a tuned copy of --base).
    #[arg(long)]
    pub tuned: PathBuf,
    /// Texts (the paper: 1000 OpenWebText texts).
    #[arg(long, default_value_t = 1000)]
    pub n: usize,
    /// Tokens per text.
    #[arg(long, default_value_t = 128)]
    pub len: usize,
    /// Texts per forward batch.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Also write the result (with per-text values) as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub quiet: bool,
}

pub fn kl(a: KlArgs) -> Result<()> {
    let base = Model::load_cpu(&a.base).with_context(|| format!("loading {}", a.base.display()))?;
    let tuned =
        Model::load_cpu(&a.tuned).with_context(|| format!("loading {}", a.tuned.display()))?;
    kl::check_same_base(&base.cfg, &tuned.cfg)
        .with_context(|| format!("{} vs {}", a.base.display(), a.tuned.display()))?;
    let tok = Tokenizer::from_dir(&a.base)?;
    tok.check_vocab(base.cfg.vocab_size, &a.base)?;
    // An explicit --len past the context is refused; the default is clamped to it.
    if super::args::given("len") {
        super::limits::new_tokens("--len", a.len, &base.cfg, &a.base)?;
    }
    let len = pinpoint::generate::context_limit(&base.cfg).map_or(a.len, |c| a.len.min(c));
    let texts: Vec<String> = datasets::owt_texts(!a.quiet)?
        .into_iter()
        .take(a.n)
        .collect();
    let seqs = kl::tokenize_texts(&tok, &texts, len)?;
    let r = kl::kl_divergence(&base, &tuned, &seqs, a.batch, !a.quiet)?;
    pinpoint::guard::finite64("KL per text", &r.per_text)?;
    pinpoint::guard::finite64("KL mean", &[r.mean, r.sem])?;
    crate::outln!(
        "{}",
        serde_json::json!({"kl": r.mean, "sem": r.sem, "n_texts": r.n_texts, "len": len})
    );
    if let Some(p) = &a.out {
        pinpoint::util::write_json(p, &r)?;
    }
    Ok(())
}
