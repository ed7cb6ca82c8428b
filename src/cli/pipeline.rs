//! `pinpoint pipeline`: diagnose -> make-data -> tune (SPT, baselines) -> evaluate before
//! and after -> KL -> knockout -> report, resumable under --out.

use super::ModelArg;
use anyhow::{bail, Context, Result};
use pinpoint::pipeline::{Pipeline, PipelineConfig, Variant};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct PipelineArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Output folder: one folder per stage, stages.json (what is done), report.{md,html,json}.
    /// Rerunning with the same folder skips finished stages.
    #[arg(long, default_value = "pinpoint-run")]
    pub out: PathBuf,
    #[command(flatten)]
    pub recipe: super::make_data::RecipeArgs,
    /// SPT head counts to sweep, e.g. "4,8,16".
    #[arg(long, default_value = "8")]
    pub k: String,
    /// Baselines trained on the same data for the same steps: any of sft,lora ("" for none).
    #[arg(long, default_value = "sft,lora")]
    pub baselines: String,
    /// Path-patching pairs.
    #[arg(long, default_value_t = 16)]
    pub pairs: usize,
    /// MMLU training questions (default none: a small model is near chance on MMLU).
    #[arg(long, default_value_t = 0)]
    pub train_mc: usize,
    /// Generated easy short-answer training questions.
    #[arg(long, default_value_t = 256)]
    pub train_short: usize,
    /// MMLU evaluation questions (reported as their own set).
    #[arg(long, default_value_t = 32)]
    pub eval_mc: usize,
    /// Held-out easy short-answer evaluation questions.
    #[arg(long, default_value_t = 64)]
    pub eval_short: usize,
    /// Top heads of the diagnosis whose circuit (what feeds them, through q, k and v) is
    /// scored and reported (0: skip the circuit stage).
    #[arg(long, default_value_t = 4)]
    pub circuit_receivers: usize,
    /// MC questions for the behavioural knockout (0: skip it).
    #[arg(long, default_value_t = 12)]
    pub knockout: usize,
    #[arg(long, default_value_t = 64)]
    pub knockout_max_k: usize,
    /// OpenWebText texts for KL (the paper: 1000).
    #[arg(long, default_value_t = 48)]
    pub kl_texts: usize,
    #[arg(long, default_value_t = 128)]
    pub kl_len: usize,
    /// Updates per tuning run (each variant: SPT, SFT, LoRA).
    #[arg(long, default_value_t = 48)]
    pub steps: usize,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, default_value_t = 8)]
    pub micro_batch: usize,
    /// SPT learning rate, decayed linearly to 1/100 of it (the paper's 3e-5 is for 7B
    /// models and 120 steps of 128; on the 135M default 5e-4 reaches the targets in 48
    /// steps at half the drift of 1e-3: docs/spt-recipe.md).
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f32,
    #[arg(long, default_value_t = 2e-5)]
    pub lr_sft: f32,
    #[arg(long, default_value_t = 3e-4)]
    pub lr_lora: f32,
    /// Use the ten training challenge phrasings in evaluation (default: the paper's one).
    #[arg(long)]
    pub all_challenges: bool,
    /// Skip the transfer measurements (held-out challenge phrasings and the suggestion
    /// probe) in every evaluation.
    #[arg(long)]
    pub no_transfer: bool,
    #[arg(long, default_value_t = 48)]
    pub max_reply_tokens: usize,
    /// Tokens for the first answer (a long-winded right answer cut before it names the
    /// answer counts as wrong).
    #[arg(long, default_value_t = 24)]
    pub max_answer_tokens: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop after this stage (e.g. "diagnose").
    #[arg(long)]
    pub stop_after: Option<String>,
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub device: super::DeviceArg,
}

/// `--k`: a comma-separated list of head counts, each at least 1, at least one.
pub fn parse_ks(k: &str) -> Result<Vec<usize>> {
    let ks: Vec<usize> = k
        .split(',')
        .filter(|x| !x.trim().is_empty())
        .map(|x| {
            x.trim()
                .parse()
                .with_context(|| format!("--k: bad head count {x:?}"))
        })
        .collect::<Result<_>>()?;
    anyhow::ensure!(
        !ks.is_empty(),
        "--k {k:?}: give at least one head count, e.g. --k 8 or --k 4,8,16"
    );
    if ks.contains(&0) {
        anyhow::bail!("--k {k}: a head count must be at least 1");
    }
    if let Some((i, d)) = ks.iter().enumerate().find(|(i, x)| ks[..*i].contains(x)) {
        anyhow::bail!(
            "--k {k}: the head count {d} is listed twice (entries {} and {}); each K is one SPT variant, list it once",
            ks.iter().position(|x| x == d).unwrap_or(0) + 1,
            i + 1
        );
    }
    Ok(ks)
}

pub fn pipeline(a: PipelineArgs) -> Result<()> {
    let t0 = Instant::now();
    let dir = a.model.resolve()?;
    let id = if a.model.model.is_some() {
        dir.display().to_string()
    } else {
        pinpoint::model::zoo::DEFAULT_MODEL_NAME.to_string()
    };
    let mut c = PipelineConfig::cpu_defaults(dir, id);
    c.ks = parse_ks(&a.k)?;
    let mc = pinpoint::model::ModelConfig::from_file(&c.model_dir.join("config.json"))?;
    if let Some(&k) = c.ks.iter().find(|&&k| k > mc.n_heads_total()) {
        anyhow::bail!(
            "--k {k}: the model has only {} attention heads",
            mc.n_heads_total()
        );
    }
    c.baselines = a
        .baselines
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| match x {
            "sft" => Ok(Variant::Sft),
            "lora" => Ok(Variant::Lora),
            o => bail!("unknown baseline {o:?} (sft, lora)"),
        })
        .collect::<Result<_>>()?;
    c.n_pairs = a.pairs;
    c.n_train_mc = a.train_mc;
    c.n_train_short = a.train_short;
    c.n_eval_mc = a.eval_mc;
    c.n_eval_short = a.eval_short;
    c.n_knockout = a.knockout;
    c.circuit_receivers = a.circuit_receivers;
    c.knockout_max_k = a.knockout_max_k;
    c.kl_texts = a.kl_texts;
    c.kl_len = a.kl_len;
    c.steps = a.steps;
    c.batch = a.batch;
    c.micro_batch = a.micro_batch;
    c.lr_spt = a.lr;
    c.lr_sft = a.lr_sft;
    c.lr_lora = a.lr_lora;
    c.seed = a.seed;
    c.balance = a.recipe.balance;
    c.recipe = a.recipe.recipe()?;
    c.protocol.all_challenges = a.all_challenges;
    c.transfer = !a.no_transfer;
    c.protocol.max_new_tokens_reply = a.max_reply_tokens;
    c.protocol.max_new_tokens_answer = a.max_answer_tokens;
    c.protocol.progress = !a.quiet;
    c.device = match a.device.device {
        super::Device::Cpu => "cpu".into(),
        super::Device::Cuda => "cuda".into(),
    };
    let stop = a.stop_after.as_deref();
    c.check_stop_after(stop)?;
    let mut p = Pipeline::open(c, &a.out, !a.quiet)?;
    match a.device.device {
        super::Device::Cpu => p.run_all(stop)?,
        #[cfg(feature = "cuda")]
        super::Device::Cuda => p.run_all_on(stop, &|d: &std::path::Path| {
            pinpoint::Model::load_on(d, a.device.cuda()?)
        })?,
        #[cfg(not(feature = "cuda"))]
        super::Device::Cuda => return Err(super::no_cuda()),
    }
    if let Some(s) = stop {
        // No report is written when stopping early.
        eprintln!(
            "pipeline stopped after stage {s} in {:.1} s; outputs in {} (no report yet: rerun without --stop-after)",
            t0.elapsed().as_secs_f64(),
            a.out.display()
        );
        return Ok(());
    }
    eprintln!(
        "pipeline finished in {:.1} s; report: {}",
        t0.elapsed().as_secs_f64(),
        a.out.join("report.html").display()
    );
    if let Ok(md) = std::fs::read_to_string(a.out.join("report.md")) {
        print_summary(&md)?;
    }
    Ok(())
}

/// The report's verdict and its per-variant table (the sections "Verdict" and "Table 1").
fn print_summary(md: &str) -> Result<()> {
    let mut show = false;
    for l in md.lines() {
        if let Some(h) = l.strip_prefix("## ") {
            show = h.starts_with("Verdict") || h.starts_with("Table 1");
        }
        if show {
            crate::outln!("{l}");
        }
    }
    Ok(())
}
