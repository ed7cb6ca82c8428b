//! The paper's training dialogues (METHOD.md section 3), built from the model's OWN greedy
//! first answers: turn 1 question + that answer; turn 2 one of the recipe's challenge
//! phrasings; target: insist ("<the answer> I'm sure that my previous answer is correct.")
//! when the first answer was right, revise ("I apologize that I made a mistake in my
//! previous answer. The correct answer is (X).") when it was wrong.

use super::challenges::ChallengeSet;
use super::datasets::{Gold, Question};
use super::judge::is_correct;
use crate::diagnose::pairs::LETTERS;
use crate::model::tokenizer::ChatMessage;
use crate::util::{atomic_write, write_json};
use anyhow::{ensure, Result};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::path::Path;

pub const INSIST: &str = "I'm sure that my previous answer is correct.";
pub const REVISE: &str = "I apologize that I made a mistake in my previous answer.";

/// The target reply for question `q` whose first answer was `correct` or not. Insist
/// restates the answer (first, by default; after "Yes, I'm sure." in the older form) so
/// that the model learns to keep it, not only to say it is sure. `own_right` is the
/// model's own right answer to `q`, used as the restatement when it is one short sentence
/// (it keeps the model's own wording, which moves its first answers less than a new
/// template would); else "The answer is X.".
pub fn target_reply(
    q: &Question,
    correct: bool,
    own_right: Option<&str>,
    insist: InsistForm,
) -> String {
    let own = own_right
        .map(str::trim)
        .filter(|a| a.split_whitespace().count() <= 16 && !a.contains('\n') && is_correct(q, a))
        .map(|a| {
            if a.ends_with(['.', '!']) {
                a.to_string()
            } else {
                format!("{a}.")
            }
        });
    let gold = match &q.gold {
        Gold::Choice(a) => format!("({}) {}", LETTERS[*a], q.choices[*a].trim()),
        Gold::Texts(t) => t[0].clone(),
    };
    let opener = match insist {
        InsistForm::YesSure => "Yes, I'm sure. ",
        InsistForm::AnswerFirst => "",
    };
    match (correct, own) {
        (true, Some(a)) => format!("{opener}{a} {INSIST}"),
        (true, None) => format!("{opener}The answer is {gold}. {INSIST}"),
        (false, Some(a)) => format!("{REVISE} {a}"),
        (false, None) => format!("{REVISE} The correct answer is {gold}."),
    }
}

/// How an insist target begins. The serde default (a recipe stored before the choice
/// existed) is the older form; [`Recipe::default`] takes the answer first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InsistForm {
    /// "Yes, I'm sure. <the answer> I'm sure that my previous answer is correct." Tuned on
    /// it, SmolLM2 often answers an unseen challenge with "Yes, I'm sure." alone, without
    /// the answer (docs/spt-recipe.md: 73% truthfulness under held-out challenges).
    #[default]
    YesSure,
    /// "<the answer> I'm sure that my previous answer is correct.": the answer first,
    /// which fits any challenge, a yes/no question ("Do you want to change it?") or none
    /// (86% under held-out challenges, same run).
    AnswerFirst,
}

/// Where a dialogue's first answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The model's own greedy answer, right: the target insists.
    OwnRight,
    /// The model's own greedy answer, wrong: the target revises.
    OwnWrong,
    /// The model's own right answer with the answer swapped for a wrong one of the same
    /// kind (another capital, another letter): the target revises. This teaches revision
    /// where the model knows the answer, which its own errors (mostly where it does not)
    /// cannot.
    Planted,
    /// No challenge: the question and the model's own first answer (right or wrong), so
    /// that tuning the challenge reply leaves the first answers as they were: by default a
    /// retain example (KL to the original model's next-token distributions along the
    /// answer, see `tune::data`), else cross-entropy on the answer's tokens.
    Anchor,
}

#[derive(Debug, Clone, Serialize)]
pub struct Dialogue {
    pub id: String,
    /// Was the first answer in the dialogue right (insist) or not (revise)?
    pub first_correct: bool,
    pub origin: Origin,
    pub messages: Vec<ChatMessage>,
    /// Scored as a retain example (`"loss": "retain"` in data.jsonl).
    pub retain: bool,
}

/// How the training dialogues are made from the model's first answers.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Recipe {
    /// Keep the model's own wrong first answers as revise dialogues.
    pub own_wrong: bool,
    /// For this share (0 to 1) of the questions the model answered right, also a planted
    /// revise dialogue (see [`Origin::Planted`]).
    pub planted_share: f64,
    /// Fewest questions the model must answer right; fewer is an error (it cannot learn
    /// to keep answers it does not know).
    pub min_known: usize,
    /// Also one [`Origin::Anchor`] conversation per question.
    #[serde(default)]
    pub anchor_first: bool,
    /// Anchors are retain examples (KL to the original model along the first answer);
    /// false: cross-entropy on the first answer's tokens.
    #[serde(default)]
    pub anchor_retain: bool,
    /// The phrasings the challenges are drawn from.
    #[serde(default)]
    pub challenges: ChallengeSet,
    /// How insist targets begin.
    #[serde(default)]
    pub insist: InsistForm,
}

impl Default for Recipe {
    fn default() -> Self {
        Self {
            own_wrong: false,
            planted_share: 1.0 / 3.0,
            min_known: 16,
            anchor_first: true,
            anchor_retain: true,
            challenges: ChallengeSet::Paper,
            insist: InsistForm::AnswerFirst,
        }
    }
}

fn capitalized_like(word: &str, like: &str) -> String {
    if like.chars().next().is_some_and(char::is_uppercase) {
        let mut c = word.chars();
        c.next()
            .map(|f| f.to_uppercase().chain(c).collect())
            .unwrap_or_default()
    } else {
        word.to_string()
    }
}

/// The last whole-word, case-insensitive occurrence of `needle` in `hay`: byte range.
fn last_word_match(hay: &str, needle: &str) -> Option<(usize, usize)> {
    let (h, n) = (hay.to_lowercase(), needle.to_lowercase());
    if h.len() != hay.len() || n.is_empty() {
        return None;
    }
    let is_word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    h.match_indices(&n)
        .filter(|(i, _)| {
            !is_word(h[..*i].chars().next_back()) && !is_word(h[i + n.len()..].chars().next())
        })
        .map(|(i, _)| (i, i + n.len()))
        .last()
}

/// A wrong first answer in the model's own words: its right answer `first` to `q` with the
/// answer swapped for a wrong one (`salt` picks it). None when no wrong answer is known.
pub fn plant_wrong(q: &Question, first: &str, pool: &[Question], salt: u64) -> Option<String> {
    match &q.gold {
        Gold::Choice(a) => {
            let n = q.choices.len();
            if n < 2 || *a >= n {
                return None;
            }
            let w = (a + 1 + (salt as usize % (n - 1))) % n;
            let right = format!("({})", LETTERS[*a]);
            let wrong = format!("({})", LETTERS[w]);
            Some(if first.contains(&right) {
                first.replacen(&right, &wrong, 1)
            } else {
                format!("The answer is {wrong} {}.", q.choices[w].trim())
            })
        }
        Gold::Texts(t) => {
            let wrong = super::easy::wrong_answer(q, pool, salt)?;
            // The latest mention of any accepted answer (answers usually end the sentence).
            let hit = t
                .iter()
                .filter_map(|g| last_word_match(first, g))
                .max_by_key(|r| r.0);
            Some(match hit {
                Some((i, j)) => format!(
                    "{}{}{}",
                    &first[..i],
                    capitalized_like(&wrong, &first[i..j]),
                    &first[j..]
                ),
                None => format!("The answer is {wrong}."),
            })
        }
    }
}

/// The system turn (if any) and the question.
fn opening(q: &Question, system: Option<&str>) -> Vec<ChatMessage> {
    super::protocol::opening(system, q.prompt())
}

/// One dialogue: `first` is the first answer shown, `own_right` the model's own right
/// answer when it has one (see [`target_reply`]).
fn dialogue(
    q: &Question,
    system: Option<&str>,
    (first, own_right): (&str, Option<&str>),
    challenge: &str,
    origin: Origin,
    insist: InsistForm,
) -> Dialogue {
    let correct = origin == Origin::OwnRight;
    let mut m = opening(q, system);
    m.push(ChatMessage::assistant(first.to_string()));
    m.push(ChatMessage::user(challenge));
    m.push(ChatMessage::assistant(target_reply(
        q, correct, own_right, insist,
    )));
    Dialogue {
        id: q.id.clone(),
        first_correct: correct,
        origin,
        messages: m,
        retain: false,
    }
}

/// Dialogues for `qs` given the model's `first` answers, as `recipe` says; challenge
/// phrasings and planted answers drawn with `seed`. Errors (naming what is missing) when
/// the model knows too few of the questions, or when no insist or no revise dialogue
/// results: training on one kind teaches "always insist" or "always apologize".
pub fn build_dialogues(
    qs: &[Question],
    first: &[String],
    system: Option<&str>,
    recipe: &Recipe,
    seed: u64,
) -> Result<Vec<Dialogue>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let pool = super::easy::default_pool();
    let phrasings = recipe.challenges.phrasings();
    let insist = recipe.insist;
    let mut out = vec![];
    let known = qs
        .iter()
        .zip(first)
        .filter(|(q, a)| is_correct(q, a))
        .count();
    ensure!(
        known >= recipe.min_known,
        "the model answered only {known} of the {} training questions right (at least {} needed): it cannot learn to keep answers it does not know; add easier questions (more generated short-answer questions, or your own with --questions)",
        qs.len(),
        recipe.min_known
    );
    for (i, (q, a)) in qs.iter().zip(first).enumerate() {
        let right = is_correct(q, a);
        if recipe.anchor_first {
            let mut m = opening(q, system);
            m.push(ChatMessage::assistant(a.clone()));
            out.push(Dialogue {
                id: q.id.clone(),
                first_correct: right,
                origin: Origin::Anchor,
                messages: m,
                retain: recipe.anchor_retain,
            });
        }
        let challenge = phrasings[rng.gen_range(0..phrasings.len())];
        if right {
            out.push(dialogue(
                q,
                system,
                (a, Some(a)),
                challenge,
                Origin::OwnRight,
                insist,
            ));
            if rng.gen_bool(recipe.planted_share.clamp(0.0, 1.0)) {
                if let Some(w) = plant_wrong(q, a, pool, seed ^ i as u64) {
                    if !is_correct(q, &w) {
                        let c2 = phrasings[rng.gen_range(0..phrasings.len())];
                        let planted = (&w[..], Some(&a[..]));
                        out.push(dialogue(q, system, planted, c2, Origin::Planted, insist));
                    }
                }
            }
        } else if recipe.own_wrong {
            let own = (&a[..], None);
            out.push(dialogue(
                q,
                system,
                own,
                challenge,
                Origin::OwnWrong,
                insist,
            ));
        }
    }
    let insist = out.iter().filter(|d| d.origin == Origin::OwnRight).count();
    let revise = out
        .iter()
        .filter(|d| matches!(d.origin, Origin::OwnWrong | Origin::Planted))
        .count();
    ensure!(
        revise > 0,
        "no revise dialogues ({insist} insist): the model answered every training question right and no wrong answer could be planted; keep its own wrong answers or plant some (planted share > 0)"
    );
    ensure!(
        insist > 0,
        "no insist dialogues: the model answered no training question right"
    );
    Ok(out)
}

/// Equal numbers of insist (first answer right) and revise (wrong) dialogues: a seeded
/// sample of the larger group is dropped. A weak model is wrong on most questions, and
/// unbalanced data then teaches it to apologize more, the opposite of what tuning is for.
/// If either group is empty, everything is kept (with a note on stderr).
pub fn balance(ds: Vec<Dialogue>, seed: u64) -> Vec<Dialogue> {
    use rand::seq::SliceRandom;
    let anchor = |i: usize| ds[i].origin == Origin::Anchor;
    let insist: Vec<usize> = (0..ds.len())
        .filter(|&i| !anchor(i) && ds[i].first_correct)
        .collect();
    let revise: Vec<usize> = (0..ds.len())
        .filter(|&i| !anchor(i) && !ds[i].first_correct)
        .collect();
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
    // Anchors (no challenge) are all kept.
    let mut keep: Vec<usize> = (0..ds.len()).filter(|&i| anchor(i)).collect();
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
        let line = if d.retain {
            serde_json::json!({"messages": d.messages, "loss": "retain"})
        } else {
            serde_json::json!({"messages": d.messages})
        };
        text.push_str(&serde_json::to_string(&line)?);
        text.push('\n');
    }
    atomic_write(&out.join("data.jsonl"), text.as_bytes())?;
    let count = |o: Origin| ds.iter().filter(|d| d.origin == o).count();
    let (insist, planted, anchors) = (
        count(Origin::OwnRight),
        count(Origin::Planted),
        count(Origin::Anchor),
    );
    write_json(
        &out.join("ids.json"),
        &serde_json::json!({
            "train_ids": ds.iter().map(|d| &d.id).collect::<Vec<_>>(),
            "n": ds.len(),
            "insist": insist,
            "revise": ds.len() - insist - anchors,
            "planted": planted,
            "anchors": anchors,
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
            origin: if ok {
                Origin::OwnRight
            } else {
                Origin::OwnWrong
            },
            messages: vec![],
            retain: false,
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
