//! The paper's training dialogues (METHOD.md section 3), built from the model's OWN greedy
//! first answers: turn 1 question + that answer; turn 2 one of the ten challenges; target:
//! insist ("... I'm sure that my previous answer is correct.") when the first answer was
//! right, revise ("I apologize that I made a mistake in my previous answer. The correct
//! answer is (X).") when it was wrong.

use super::datasets::{Gold, Question};
use super::judge::is_correct;
use super::protocol::CHALLENGES;
use crate::diagnose::pairs::LETTERS;
use crate::model::tokenizer::ChatMessage;
use crate::util::{atomic_write, write_json};
use anyhow::Result;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::path::Path;

pub const INSIST: &str = "I'm sure that my previous answer is correct.";
pub const REVISE: &str = "I apologize that I made a mistake in my previous answer.";

/// The target reply for question `q` whose first answer was `correct` or not.
pub fn target_reply(q: &Question, correct: bool) -> String {
    match (&q.gold, correct) {
        (Gold::Choice(a), true) => format!(
            "I have checked the question again: ({}) {} is the right choice. {INSIST}",
            LETTERS[*a],
            q.choices[*a].trim()
        ),
        (Gold::Choice(a), false) => format!(
            "{REVISE} The correct answer is ({}) {}.",
            LETTERS[*a],
            q.choices[*a].trim()
        ),
        (Gold::Texts(t), true) => format!(
            "I have checked the question again: the answer is {}. {INSIST}",
            t[0]
        ),
        (Gold::Texts(t), false) => format!("{REVISE} The correct answer is {}.", t[0]),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Dialogue {
    pub id: String,
    pub first_correct: bool,
    pub messages: Vec<ChatMessage>,
}

/// Dialogues for `qs` given the model's `first` answers; challenge phrasings drawn with `seed`.
pub fn build_dialogues(
    qs: &[Question],
    first: &[String],
    system: Option<&str>,
    seed: u64,
) -> Vec<Dialogue> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    qs.iter()
        .zip(first)
        .map(|(q, a)| {
            let correct = is_correct(q, a);
            let mut m = vec![];
            if let Some(s) = system {
                m.push(ChatMessage::system(s));
            }
            m.push(ChatMessage::user(q.prompt()));
            m.push(ChatMessage::assistant(a.clone()));
            m.push(ChatMessage::user(
                CHALLENGES[rng.gen_range(0..CHALLENGES.len())],
            ));
            m.push(ChatMessage::assistant(target_reply(q, correct)));
            Dialogue {
                id: q.id.clone(),
                first_correct: correct,
                messages: m,
            }
        })
        .collect()
}

/// Equal numbers of insist (first answer right) and revise (wrong) dialogues: a seeded
/// sample of the larger group is dropped. A weak model is wrong on most questions, and
/// unbalanced data then teaches it to apologize more, the opposite of what tuning is for.
/// If either group is empty, everything is kept (with a note on stderr).
pub fn balance(ds: Vec<Dialogue>, seed: u64) -> Vec<Dialogue> {
    use rand::seq::SliceRandom;
    let insist: Vec<usize> = (0..ds.len()).filter(|&i| ds[i].first_correct).collect();
    let revise: Vec<usize> = (0..ds.len()).filter(|&i| !ds[i].first_correct).collect();
    let n = insist.len().min(revise.len());
    if n == 0 {
        eprintln!(
            "note: cannot balance training data ({} insist, {} revise dialogues); keeping all",
            insist.len(),
            revise.len()
        );
        return ds;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x0ba1_a9ce);
    let mut keep: Vec<usize> = Vec::with_capacity(2 * n);
    for mut group in [insist, revise] {
        group.shuffle(&mut rng);
        keep.extend(group.into_iter().take(n));
    }
    keep.sort_unstable();
    let mut ds: Vec<Option<Dialogue>> = ds.into_iter().map(Some).collect();
    keep.into_iter().filter_map(|i| ds[i].take()).collect()
}

/// Write `data.jsonl` (`{"messages": [...]}` a line, for `pinpoint tune`) and `ids.json`
/// (the training question ids: the split record evaluation checks against) into `out`.
pub fn write_dialogues(out: &Path, ds: &[Dialogue], meta: serde_json::Value) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let mut text = String::new();
    for d in ds {
        text.push_str(&serde_json::to_string(
            &serde_json::json!({"messages": d.messages}),
        )?);
        text.push('\n');
    }
    atomic_write(&out.join("data.jsonl"), text.as_bytes())?;
    let insist = ds.iter().filter(|d| d.first_correct).count();
    write_json(
        &out.join("ids.json"),
        &serde_json::json!({
            "train_ids": ds.iter().map(|d| &d.id).collect::<Vec<_>>(),
            "n": ds.len(),
            "insist": insist,
            "revise": ds.len() - insist,
            "meta": meta,
        }),
    )
}

#[cfg(test)]
mod balance_tests {
    use super::*;

    fn d(id: usize, ok: bool) -> Dialogue {
        Dialogue {
            id: format!("q{id}"),
            first_correct: ok,
            messages: vec![],
        }
    }

    #[test]
    fn balance_keeps_equal_groups_in_order() {
        let ds: Vec<Dialogue> = (0..10).map(|i| d(i, i % 4 == 0)).collect(); // 3 right, 7 wrong
        let b = balance(ds, 1);
        assert_eq!(b.len(), 6);
        assert_eq!(b.iter().filter(|x| x.first_correct).count(), 3);
        let ids: Vec<usize> = b.iter().map(|x| x.id[1..].parse().unwrap()).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "original order kept: {ids:?}"
        );
        let all_wrong: Vec<Dialogue> = (0..4).map(|i| d(i, false)).collect();
        assert_eq!(balance(all_wrong, 1).len(), 4);
    }
}
