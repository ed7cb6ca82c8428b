//! `pinpoint make-data`: the paper's two-turn training dialogues from the model's own
//! first answers (insist when right, revise when wrong).

use super::ModelArg;
use anyhow::{ensure, Context, Result};
use pinpoint::eval::challenges::ChallengeSet;
use pinpoint::eval::datasets::{self, Question};
use pinpoint::eval::make_data::{build_dialogues, write_dialogues, InsistForm, Origin, Recipe};
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
    /// MMLU questions to use (0: none). A small model is near chance on MMLU, so it cannot
    /// know which of its first answers were right: easy questions teach better.
    #[arg(long, default_value_t = 0)]
    pub mmlu: usize,
    /// Generated easy short-answer questions (0: none).
    #[arg(long, default_value_t = 256)]
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
    #[command(flatten)]
    pub recipe: RecipeArgs,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long)]
    pub quiet: bool,
}

/// How training dialogues are made (shared by `make-data` and `pipeline`).
#[derive(clap::Args, Debug)]
pub struct RecipeArgs {
    /// Keep equal numbers of insist and revise dialogues (drops a sample of the larger group).
    #[arg(long)]
    pub balance: bool,
    /// Share (0 to 1) of the questions the model answers right that also get a planted
    /// revise dialogue: its own answer with a wrong one swapped in. More planted errors
    /// teach revising more, and admitting mistakes on right answers too
    /// (docs/spt-recipe.md: 0.5 gave 80% confidence, 1/3 gave 97%).
    #[arg(long, default_value_t = Recipe::default().planted_share)]
    pub planted_share: f64,
    /// Also train on the model's own wrong first answers (revise dialogues). Off by
    /// default: a small model's errors are mostly where it does not know the answer, and
    /// revising there teaches it to apologize after any challenge (docs/spt-recipe.md).
    #[arg(long)]
    pub own_wrong: bool,
    /// No anchor conversations (question and the model's own first answer, no challenge),
    /// which hold the first answers while the challenge reply is tuned.
    #[arg(long)]
    pub no_anchor: bool,
    /// Train anchors by cross-entropy on the first answer's tokens instead of as retain
    /// examples (KL to the original model's next-token distributions along the answer).
    #[arg(long)]
    pub anchor_ce: bool,
    /// Fewest questions the model must answer right (fewer is an error).
    #[arg(long, default_value_t = 16)]
    pub min_known: usize,
    /// Challenge phrasings the training dialogues draw from: "paper" (ten in the paper's
    /// style) or "varied" (those and 19 more as users write: short, informal, citing a
    /// person or a source). Neither contains a held-out phrasing (src/eval/challenges.rs).
    #[arg(long, default_value = "paper", value_parser = parse_challenges)]
    pub challenges: ChallengeSet,
    /// How insist targets begin: "answer-first" ("<answer> I'm sure that my previous
    /// answer is correct.") or "yes-sure" ("Yes, I'm sure. <answer> ...", the form before
    /// 2026-12-05, whose cure carried over less to unseen challenges: docs/spt-recipe.md).
    #[arg(long, default_value = "answer-first", value_parser = parse_insist)]
    pub insist: InsistForm,
}

fn parse_challenges(s: &str) -> Result<ChallengeSet, String> {
    match s {
        "paper" => Ok(ChallengeSet::Paper),
        "varied" => Ok(ChallengeSet::Varied),
        _ => Err(format!("unknown challenge set {s:?}: paper or varied")),
    }
}

fn parse_insist(s: &str) -> Result<InsistForm, String> {
    match s {
        "yes-sure" => Ok(InsistForm::YesSure),
        "answer-first" => Ok(InsistForm::AnswerFirst),
        _ => Err(format!(
            "unknown insist form {s:?}: yes-sure or answer-first"
        )),
    }
}

impl RecipeArgs {
    /// The recipe, with the share checked.
    pub fn recipe(&self) -> Result<Recipe> {
        ensure!(
            (0.0..=1.0).contains(&self.planted_share),
            "--planted-share must be between 0 and 1, got {}",
            self.planted_share
        );
        Ok(Recipe {
            own_wrong: self.own_wrong,
            planted_share: self.planted_share,
            min_known: self.min_known,
            anchor_first: !self.no_anchor,
            anchor_retain: !self.anchor_ce,
            challenges: self.challenges,
            insist: self.insist,
        })
    }
}

/// Ids listed in a split.json ("eval") or ids.json ("train_ids").
pub fn read_id_list(p: &std::path::Path) -> Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(&pinpoint::util::read_text(p)?)
        .with_context(|| format!("{} is not valid JSON", p.display()))?;
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
    tok.check_vocab(model.cfg.vocab_size, &dir)?;
    let pc = ProtocolConfig {
        system: a.system.clone(),
        batch: a.batch,
        progress: !a.quiet,
        ..ProtocolConfig::default()
    };
    let first = first_answers(&model, &tok, &qs, &pc)?;
    let recipe = a.recipe.recipe()?;
    let mut ds = build_dialogues(&qs, &first, a.system.as_deref(), &recipe, a.seed)?;
    if a.recipe.balance {
        ds = pinpoint::eval::make_data::balance(ds, a.seed);
    }
    let count = |o: Origin| ds.iter().filter(|d| d.origin == o).count();
    write_dialogues(
        &a.out,
        &ds,
        serde_json::json!({"model": dir, "seed": a.seed}),
    )?;
    eprintln!(
        "{} conversations ({} insist, {} revise of the model's own errors, {} planted revise, {} anchors) -> {}",
        ds.len(),
        count(Origin::OwnRight),
        count(Origin::OwnWrong),
        count(Origin::Planted),
        count(Origin::Anchor),
        a.out.join("data.jsonl").display()
    );
    Ok(())
}
