//! Up-front checks of each command's flags and output locations, run before any work: a
//! bad value is an error naming its flag, and outputs never overlap the input model.

use super::ModelArg;
use anyhow::{bail, Result};
use pinpoint::guard::{self, flag};
use std::path::{Path, PathBuf};

/// The model folder when given (`None` = the default model, checked once resolved).
fn model_dir(m: &ModelArg) -> Option<&Path> {
    m.model.as_deref()
}

/// `--model` names an existing folder.
fn model_arg(m: &ModelArg) -> Result<()> {
    if let Some(d) = model_dir(m) {
        model_folder("--model", d)?;
    }
    Ok(())
}

fn model_folder(name: &str, d: &Path) -> Result<()> {
    match std::fs::metadata(d) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!("{name} {} is a file; give a model folder", d.display()),
        Err(e) => bail!("{name} {}: {e}", d.display()),
    }
}

fn inputs(m: &ModelArg) -> Vec<&Path> {
    model_dir(m).into_iter().collect()
}

fn files(paths: &[PathBuf], what: &str) -> Result<()> {
    paths.iter().try_for_each(|p| guard::input_file(p, what))
}

pub fn tune(a: &super::tune::TuneArgs) -> Result<()> {
    flag::positive("--lr", a.lr)?;
    flag::non_negative("--lr-end", a.lr_end)?;
    flag::positive("--power", a.power)?;
    flag::non_negative("--weight-decay", a.weight_decay)?;
    flag::non_negative("--max-grad-norm", a.max_grad_norm)?;
    flag::at_least("--steps", a.steps, 1)?;
    flag::at_least("--batch", a.batch, 1)?;
    flag::at_least("--keep-checkpoints", a.keep_checkpoints, 1)?;
    flag::at_least("--lora-rank", a.lora_rank, 1)?;
    flag::positive("--lora-alpha", a.lora_alpha)?;
    if a.warmup > 0 && a.warmup >= a.steps {
        bail!(
            "--warmup {} must be below --steps {} (the learning rate would never reach --lr)",
            a.warmup,
            a.steps
        );
    }
    if a.micro_batch > a.batch {
        bail!(
            "--micro-batch {} is larger than --batch {}",
            a.micro_batch,
            a.batch
        );
    }
    if let Some(k) = a.top_k {
        flag::at_least("--top-k", k, 1)?;
    }
    if let Some(m) = a.max_len {
        flag::at_least("--max-len", m, 2)?;
    }
    if let Some(g) = a.mem_cap_gib {
        flag::positive("--mem-cap-gib", g)?;
    }
    model_arg(&a.model)?;
    guard::input_file(&a.data, "--data file")?;
    if let Some(h) = &a.heads {
        guard::input_file(h, "--heads file")?;
        if a.top_k.is_some() {
            heads_scores(h)?;
        }
    }
    out_dir(&a.out, &inputs(&a.model), "tune")
}

/// A heads file whose scores are all zero ranks nothing (e.g. pairs whose reference and
/// counterfactual are the same): refuse to pick "top" heads from it.
fn heads_scores(p: &Path) -> Result<()> {
    let Ok(text) = pinpoint::util::read_text(p) else {
        return Ok(()); // the reader names the problem
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Ok(());
    };
    let scores: Vec<f64> = v
        .get("heads")
        .and_then(|h| h.as_array())
        .map(|hs| {
            hs.iter()
                .filter_map(|h| h.get("score").and_then(|s| s.as_f64()))
                .collect()
        })
        .unwrap_or_default();
    if !scores.is_empty() && scores.iter().all(|s| *s == 0.0) {
        bail!(
            "--heads {}: every head's score is 0, so the ranking is arbitrary (were the diagnosis pairs' reference and counterfactual identical?)",
            p.display()
        );
    }
    Ok(())
}

pub fn pipeline(a: &super::pipeline::PipelineArgs) -> Result<()> {
    super::pipeline::parse_ks(&a.k)?;
    flag::at_least("--steps", a.steps, 1)?;
    flag::at_least("--batch", a.batch, 1)?;
    if a.micro_batch > a.batch {
        bail!(
            "--micro-batch {} is larger than --batch {}",
            a.micro_batch,
            a.batch
        );
    }
    flag::positive("--lr", a.lr)?;
    flag::positive("--lr-sft", a.lr_sft)?;
    flag::positive("--lr-lora", a.lr_lora)?;
    flag::at_least("--pairs", a.pairs, 1)?;
    flag::at_least("--max-reply-tokens", a.max_reply_tokens, 1)?;
    flag::at_least("--max-answer-tokens", a.max_answer_tokens, 1)?;
    flag::at_least("--kl-texts", a.kl_texts, 1)?;
    flag::at_least("--kl-len", a.kl_len, 2)?;
    flag::at_least("--train-short + --train-mc", a.train_short + a.train_mc, 1)?;
    flag::at_least("--eval-short + --eval-mc", a.eval_short + a.eval_mc, 1)?;
    if a.knockout > 0 {
        flag::at_least("--knockout-max-k", a.knockout_max_k, 1)?;
    }
    flag::within("--planted-share", a.recipe.planted_share, 0.0, 1.0)?;
    model_arg(&a.model)?;
    out_dir(&a.out, &inputs(&a.model), "pipeline")
}

pub fn diagnose(a: &super::diagnose::DiagnoseArgs) -> Result<()> {
    pairs(&a.pairs)?;
    flag::at_least("--top-k", a.top_k, 1)?;
    model_arg(&a.model)?;
    out_dir(&a.out, &inputs(&a.model), "diagnose")
}

fn pairs(p: &super::diagnose::PairArgs) -> Result<()> {
    p.check()
}

pub fn attention(a: &super::diagnose::AttentionArgs) -> Result<()> {
    pairs(&a.pairs)?;
    flag::at_least("--top-k", a.top_k, 1)?;
    model_arg(&a.model)?;
    heads_arg(&a.heads)?;
    out_dir(&a.out, &inputs(&a.model), "attention")
}

pub fn knockout(a: &super::diagnose::KnockoutArgs) -> Result<()> {
    pairs(&a.pairs)?;
    flag::at_least("--max-k", a.max_k, 1)?;
    model_arg(&a.model)?;
    heads_arg(&a.heads)?;
    out_dir(&a.out, &inputs(&a.model), "knockout")
}

fn heads_arg(h: &super::diagnose::HeadsArg) -> Result<()> {
    match &h.heads {
        Some(p) => guard::input_file(p, "--heads file"),
        None => Ok(()),
    }
}

pub fn eval(a: &super::eval::EvalArgs) -> Result<()> {
    flag::at_least("--max-reply-tokens", a.max_reply_tokens, 1)?;
    flag::at_least("--max-answer-tokens", a.max_answer_tokens, 1)?;
    flag::at_least("--batch", a.batch, 1)?;
    files(&a.questions, "--questions file")?;
    if let Some(t) = &a.train_ids {
        guard::input_file(t, "--train-ids file")?;
    }
    if let Some(j) = &a.judge_model {
        model_folder("--judge-model", j)?;
    }
    model_arg(&a.model)?;
    let mut ins = inputs(&a.model);
    ins.extend(a.judge_model.as_deref());
    out_dir(&a.out, &ins, "eval")
}

pub fn make_data(a: &super::make_data::MakeDataArgs) -> Result<()> {
    flag::at_least("--batch", a.batch, 1)?;
    flag::within("--planted-share", a.recipe.planted_share, 0.0, 1.0)?;
    files(&a.questions, "--questions file")?;
    if let Some(e) = &a.exclude {
        guard::input_file(e, "--exclude file")?;
    }
    model_arg(&a.model)?;
    out_dir(&a.out, &inputs(&a.model), "make-data")
}

pub fn logits(a: &super::logits::LogitsArgs) -> Result<()> {
    model_arg(&a.model)?;
    guard::output_file(&a.out, "--out", &inputs(&a.model))
}

pub fn kl(a: &super::kl::KlArgs) -> Result<()> {
    flag::at_least("--n", a.n, 1)?;
    flag::at_least("--len", a.len, 2)?;
    flag::at_least("--batch", a.batch, 1)?;
    model_folder("--base", &a.base)?;
    model_folder("--tuned", &a.tuned)?;
    match &a.out {
        Some(o) => guard::output_file(o, "--out", &[&a.base, &a.tuned]),
        None => Ok(()),
    }
}

pub fn sampling(s: &super::chat::SamplingArgs, m: &ModelArg) -> Result<()> {
    flag::non_negative("--temperature", s.temperature)?;
    if !(s.top_p.is_finite() && s.top_p > 0.0 && s.top_p <= 1.0) {
        bail!("--top-p {}: must be above 0 and at most 1", s.top_p);
    }
    flag::at_least("--max-new-tokens", s.max_new_tokens, 1)?;
    model_arg(m)
}

pub fn bench(a: &super::bench::BenchArgs) -> Result<()> {
    flag::at_least("--reps", a.reps, 1)?;
    flag::at_least("--batch", a.batch, 1)?;
    flag::at_least("--seq", a.seq, 1)?;
    model_arg(&a.model)?;
    match &a.out {
        Some(o) => guard::output_file(o, "--out", &inputs(&a.model)),
        None => Ok(()),
    }
}

/// `profile`: sizes that make a workload, and an output folder that can be written.
pub fn profile(a: &super::profile::ProfileArgs) -> Result<()> {
    flag::at_least("--batch", a.batch, 1)?;
    flag::at_least("--seq", a.seq, if a.what == "train" { 2 } else { 1 })?;
    flag::at_least("--k", a.k, 1)?;
    flag::at_least("--pairs", a.pairs, 1)?;
    flag::at_least("--new-tokens", a.new_tokens, 1)?;
    if a.shape.is_none() {
        model_arg(&a.model)?;
    }
    out_dir(&a.out, &inputs(&a.model), "profile")
}

/// `import GGUF OUT`: a GGUF file, and an output folder that is missing, empty or an
/// earlier import.
pub fn import(gguf: &Path, out: &Path) -> Result<()> {
    guard::input_file(gguf, "GGUF file")?;
    guard::output_dir(out, "the output folder", &[])?;
    guard::check_owned(out, "the output folder", "import")
}

/// An output folder (`--out`): the right kind, not the input, writable, and pinpoint's to
/// write ([`guard::check_owned`]: new, empty, or an earlier output of `command`).
fn out_dir(out: &Path, inputs: &[&Path], command: &str) -> Result<()> {
    guard::output_dir(out, "--out", inputs)?;
    guard::check_owned(out, "--out", command)
}
