//! `pinpoint make-data`: the paper's two-turn training dialogues from the model's own
//! first answers (insist when right, revise when wrong).

use super::ModelArg;
use anyhow::{ensure, Result};
use pinpoint::eval::datasets::{self, Question};
use pinpoint::eval::make_data::{build_dialogues, write_dialogues};
use pinpoint::eval::protocol::{first_answers, ProtocolConfig};
use pinpoint::model::tokenizer::Tokenizer;
use pinpoint::Model;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct MakeDataArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Output folder: data.jsonl (for `pinpoint tune --data`) and ids.json (the training
    /// question ids; `pinpoint eval --train-ids` refuses to evaluate on them).
    #[arg(long)]
    pub out: PathBuf,
    /// MMLU questions to use (0: none).
    #[arg(long, default_value_t = 128)]
    pub mmlu: usize,
    /// Generated short-answer questions (0: none).
    #[arg(long, default_value_t = 64)]
    pub short: usize,
    /// Your own questions (JSONL; see `pinpoint eval --help`), used in full.
    #[arg(long)]
    pub questions: Vec<PathBuf>,
    /// Never use these ids (e.g. the eval split): a split.json with "eval": [...] or an
    /// ids.json with "train_ids".
    #[arg(long)]
    pub exclude: Option<PathBuf>,
    /// System turn (default: the template's own).
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep every dialogue instead of equal numbers of insist and revise ones.
    #[arg(long)]
    pub no_balance: bool,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long)]
    pub quiet: bool,
}

/// Ids listed in a split.json ("eval") or ids.json ("train_ids").
pub fn read_id_list(p: &std::path::Path) -> Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p)?)?;
    let arr = v
        .get("eval")
        .or_else(|| v.get("train_ids"))
        .and_then(|x| x.as_array())
        .ok_or_else(|| anyhow::anyhow!("{}: no \"eval\" or \"train_ids\" list", p.display()))?;
    Ok(arr
        .iter()
        .filter_map(|x| x.as_str().map(String::from))
        .collect())
}

pub fn make_data(a: MakeDataArgs) -> Result<()> {
    let mut qs: Vec<Question> = vec![];
    for p in &a.questions {
        qs.extend(datasets::read_questions_jsonl(p)?);
    }
    let exclude: std::collections::BTreeSet<String> = match &a.exclude {
        Some(p) => read_id_list(p)?.into_iter().collect(),
        None => Default::default(),
    };
    if a.mmlu > 0 {
        let all: Vec<Question> = datasets::mmlu(!a.quiet)?
            .into_iter()
            .filter(|q| !exclude.contains(&q.id))
            .collect();
        qs.extend(pinpoint::diagnose::pairs::sample(&all, a.mmlu, a.seed));
    }
    if a.short > 0 {
        let all: Vec<Question> = datasets::short_answer_questions(usize::MAX, a.seed)
            .into_iter()
            .filter(|q| !exclude.contains(&q.id))
            .collect();
        qs.extend(all.into_iter().take(a.short));
    }
    qs.retain(|q| !exclude.contains(&q.id));
    ensure!(!qs.is_empty(), "no questions to build dialogues from");
    let dir = a.model.resolve()?;
    let model = Model::load_cpu(&dir)?;
    let tok = Tokenizer::from_dir(&dir)?;
    let pc = ProtocolConfig {
        system: a.system.clone(),
        batch: a.batch,
        progress: !a.quiet,
        ..ProtocolConfig::default()
    };
    let first = first_answers(&model, &tok, &qs, &pc)?;
    let mut ds = build_dialogues(&qs, &first, a.system.as_deref(), a.seed);
    if !a.no_balance {
        ds = pinpoint::eval::make_data::balance(ds, a.seed);
    }
    let insist = ds.iter().filter(|d| d.first_correct).count();
    write_dialogues(
        &a.out,
        &ds,
        serde_json::json!({"model": dir, "seed": a.seed}),
    )?;
    eprintln!(
        "{} dialogues ({} insist, {} revise) -> {}",
        ds.len(),
        insist,
        ds.len() - insist,
        a.out.join("data.jsonl").display()
    );
    Ok(())
}
