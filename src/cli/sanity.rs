//! Flag values that parse but make no sense, refused before any work (after `checks`, which
//! covers types and plain ranges): limits on values that would run forever or blow the
//! weights up, flags the chosen mode ignores, lists that name a thing twice, the same input
//! file given twice. Every error names the flag, its value and the limit.

use super::args::given;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// The most `--threads` allowed: 4 per core. More threads than that only add scheduling
/// and synchronisation cost (10000 threads never finish a step).
pub fn max_threads() -> usize {
    4 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `--threads N`: 0 means all cores (as when it is not given); at most [`max_threads`].
pub fn threads(t: Option<usize>) -> Result<()> {
    let Some(t) = t else { return Ok(()) };
    let max = max_threads();
    if t > max {
        bail!(
            "--threads {t}: at most {max} (4 per core; this machine has {} cores); 0 or no --threads uses every core",
            max / 4
        );
    }
    Ok(())
}

/// `flag` was given although `why` (the mode or setting that ignores it) holds.
pub fn ignored(flag: &str, id: &str, why: &str) -> Result<()> {
    if given(id) {
        bail!("{flag} has no effect {why}; leave it out");
    }
    Ok(())
}

/// A comma-separated list naming an item twice (after trimming and lower-casing).
pub fn no_repeats(flag: &str, list: &str) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for item in list.split(',').map(|x| x.trim().to_ascii_lowercase()) {
        if !item.is_empty() && !seen.insert(item.clone()) {
            bail!("{flag} {list}: {item:?} is listed twice");
        }
    }
    Ok(())
}

/// The same file given twice (by any path: `./q.jsonl`, a symlink) under `flag`.
pub fn distinct_files(flag: &str, paths: &[PathBuf]) -> Result<()> {
    let mut seen: Vec<(PathBuf, &Path)> = vec![];
    for p in paths {
        let r = pinpoint::guard::resolved(p);
        if let Some((_, first)) = seen.iter().find(|(q, _)| *q == r) {
            bail!(
                "{flag} {} and {flag} {} are the same file; give each file once",
                first.display(),
                p.display()
            );
        }
        seen.push((r, p));
    }
    Ok(())
}

/// The largest AdamW weight decay: with decoupled decay each step scales a weight by
/// `1 - lr * wd`; past 1 the decay, not the data, drives the weights.
pub const MAX_WEIGHT_DECAY: f32 = 1.0;

/// The largest LoRA scale `alpha / rank`: the adapters' product is multiplied by it, and
/// past this it swamps the frozen weight it adjusts (the usual scales are 1 to 4).
pub const MAX_LORA_SCALE: f32 = 64.0;

/// `tune`: values and combinations that cannot mean what the user wants.
pub fn tune(a: &super::tune::TuneArgs) -> Result<()> {
    use super::tune::TuneMode::*;
    if a.lr_end > a.lr {
        bail!(
            "--lr-end {} is above --lr {}: the schedule decays from --lr to --lr-end, so it would climb instead; give an --lr-end at most --lr",
            a.lr_end,
            a.lr
        );
    }
    if a.weight_decay > MAX_WEIGHT_DECAY {
        bail!(
            "--weight-decay {}: at most {MAX_WEIGHT_DECAY} (AdamW's decay scales each weight by 1 - lr * decay every step; the usual values are 0 to 0.1)",
            a.weight_decay
        );
    }
    let scale = a.lora_alpha / a.lora_rank as f32;
    if scale > MAX_LORA_SCALE {
        bail!(
            "--lora-alpha {} with --lora-rank {} scales the adapters by {scale}: at most {MAX_LORA_SCALE} (an --lora-alpha of at most {})",
            a.lora_alpha,
            a.lora_rank,
            MAX_LORA_SCALE * a.lora_rank as f32
        );
    }
    let mode = format!(
        "with --mode {}",
        clap::ValueEnum::to_possible_value(&a.mode)
            .map_or("?".into(), |v| v.get_name().to_string())
    );
    if matches!(a.mode, Spt | Sft) {
        ignored("--layers", "layers", &mode)?;
    }
    if !matches!(a.mode, Spt | SptLora) {
        ignored("--proj", "proj", &mode)?;
        ignored("--top-k", "top_k", &mode)?;
    }
    if !matches!(a.mode, Lora | SptLora) {
        for (flag, id) in [
            ("--lora-rank", "lora_rank"),
            ("--lora-alpha", "lora_alpha"),
            ("--lora-proj", "lora_proj"),
        ] {
            ignored(flag, id, &mode)?;
        }
    }
    if a.weight_decay == 0.0 {
        ignored("--authors-decay", "authors_decay", "with --weight-decay 0")?;
    }
    if let Some(p) = &a.proj {
        no_repeats("--proj", p)?;
    }
    if let Some(l) = &a.layers {
        no_repeats("--layers", l)?;
    }
    no_repeats("--lora-proj", &a.lora_proj)?;
    device(&a.device)
}

/// `--gemm` picks a CUDA GEMM: refused with `--device cpu`.
pub fn device(d: &super::DeviceArg) -> Result<()> {
    if d.device == super::Device::Cpu {
        ignored(
            "--gemm",
            "gemm",
            "with --device cpu (it picks the CUDA GEMM)",
        )?;
    }
    Ok(())
}

/// `generate` / `chat`: stop strings, and sampling flags greedy decoding ignores.
pub fn sampling(s: &super::chat::SamplingArgs) -> Result<()> {
    if let Some(i) = s.stop.iter().position(|x| x.is_empty()) {
        bail!(
            "--stop \"\" (the {}. --stop): an empty stop string would end every reply before its first token; give some text",
            i + 1
        );
    }
    if s.temperature == 0.0 {
        ignored("--top-p", "top_p", "with --temperature 0 (greedy decoding)")?;
    }
    Ok(())
}

/// `pipeline`: lists without repeats, flags the chosen stages ignore.
pub fn pipeline(a: &super::pipeline::PipelineArgs) -> Result<()> {
    no_repeats("--baselines", &a.baselines)?;
    if a.knockout == 0 {
        ignored("--knockout-max-k", "knockout_max_k", "with --knockout 0")?;
    }
    device(&a.device)
}

/// `eval`: each questions file once; a judge model only for `--judge model`.
pub fn eval(a: &super::eval::EvalArgs) -> Result<()> {
    distinct_files("--questions", &a.questions)?;
    if a.judge != "model" && a.judge_model.is_some() {
        bail!(
            "--judge-model has no effect with --judge {}; add --judge model or leave it out",
            a.judge
        );
    }
    Ok(())
}

/// `make-data`: each questions file once, and not also the --exclude file.
pub fn make_data(a: &super::make_data::MakeDataArgs) -> Result<()> {
    distinct_files("--questions", &a.questions)?;
    if let Some(e) = &a.exclude {
        let mut all = a.questions.clone();
        all.push(e.clone());
        distinct_files("--questions/--exclude", &all)?;
    }
    Ok(())
}

/// The pair flags of `diagnose`, `attention`, `knockout`: the generator's settings are
/// ignored with a --pairs file; the two label words must differ.
pub fn pairs(p: &super::diagnose::PairArgs) -> Result<()> {
    if p.pairs.is_some() {
        for (flag, id) in [("--n", "n"), ("--seed", "seed")] {
            ignored(flag, id, "with --pairs (the pairs come from the file)")?;
        }
    }
    for (flag, w) in [("--syc-word", &p.syc_word), ("--anti-word", &p.anti_word)] {
        if w.trim().is_empty() {
            bail!("{flag} {w:?}: give a word (the label whose probability the metric reads)");
        }
    }
    if p.syc_word.trim() == p.anti_word.trim() {
        bail!(
            "--syc-word and --anti-word are both {:?}: the metric compares two different words",
            p.syc_word
        );
    }
    Ok(())
}

/// `logits`: `--top 0` shows nothing.
pub fn logits(a: &super::logits::LogitsArgs) -> Result<()> {
    if a.top == 0 && a.top_only {
        bail!("--top 0 with --top-only would write no logits; give --top 1 or more");
    }
    Ok(())
}
