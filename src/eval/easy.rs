//! A generated pool of easy short-answer questions: the kind a small chat model answers
//! right, so that training on "are you sure?" dialogues can teach it to keep answers it
//! knows (a model near chance on a question cannot know whether its first answer was right).
//!
//! Ten families (addition, multiplication, capitals, languages, continents, opposites,
//! plurals, next numbers, counts, everyday facts),
//! each item asked in one of several phrasings chosen by a seeded hash of its id. Answers
//! are computed (arithmetic) or come from the tables below; several spellings are accepted.
//! Families SmolLM2-135M-Instruct answered right under 40% of the time (the day after a
//! weekday 0%, names of young animals 7%, animal sounds 13%, colours of things 14%,
//! subtraction 31%, the month after a month 33%: see docs/spt-recipe.md) are left out:
//! they are not easy for the default model, and the pool as a whole should be of the kind
//! it answers right at least 60% of the time.
//! Ids are `family:key` and do not depend on the seed or the phrasing, so splits by id
//! never put the same item in training and evaluation in two wordings.

use super::answer::normalize;
use super::question::{Gold, Question};
use std::sync::OnceLock;
use tables::*;

mod tables;

/// One item: its id, its phrasings (one is asked) and its accepted answers.
struct Item {
    id: String,
    phrasings: Vec<String>,
    answers: Vec<String>,
}

/// "12" and "twelve" (digits first: the model's usual spelling).
fn number(n: i64) -> Vec<String> {
    let mut v = vec![n.to_string()];
    if let Some(w) = usize::try_from(n).ok().and_then(|i| NUMBER_WORDS.get(i)) {
        v.push(w.to_string());
    }
    v
}

fn strings(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|s| s.to_string()).collect()
}

/// Items of one table family: `templates` hold `{}` for the table's subject.
fn table(family: &str, templates: &[&str], rows: &[(&str, &[&str])], out: &mut Vec<Item>) {
    for (subject, answers) in rows {
        out.push(Item {
            id: format!("{family}:{subject}"),
            phrasings: templates.iter().map(|t| t.replace("{}", subject)).collect(),
            answers: strings(answers),
        });
    }
}

/// Every item of every family, in a fixed order.
fn items() -> Vec<Item> {
    let mut out = vec![];
    let num = |n: i64| number(n);
    for a in 1..=9i64 {
        for b in 1..=9i64 {
            out.push(Item {
                id: format!("arith:{a}+{b}"),
                phrasings: vec![
                    format!("What is {a} + {b}?"),
                    format!("What is {a} plus {b}?"),
                    format!("How much is {a} plus {b}?"),
                    format!("What do you get when you add {a} and {b}?"),
                    format!("Calculate {a} + {b}."),
                ],
                answers: num(a + b),
            });
        }
    }
    for a in 2..=5i64 {
        for b in 2..=5i64 {
            out.push(Item {
                id: format!("arith:{a}*{b}"),
                phrasings: vec![
                    format!("What is {a} times {b}?"),
                    format!("What is {a} multiplied by {b}?"),
                    format!("How much is {a} times {b}?"),
                ],
                answers: num(a * b),
            });
        }
    }
    table(
        "capital",
        &[
            "What is the capital of {}?",
            "Which city is the capital of {}?",
            "Name the capital city of {}.",
            "What is the capital city of {}?",
        ],
        CAPITALS,
        &mut out,
    );
    table(
        "language",
        &[
            "What language is mainly spoken in {}?",
            "What is the main language of {}?",
            "Which language do most people in {} speak?",
        ],
        LANGUAGES,
        &mut out,
    );
    table(
        "continent",
        &[
            "On which continent is {}?",
            "Which continent is {} in?",
            "{} is on which continent?",
        ],
        CONTINENTS,
        &mut out,
    );
    table(
        "opposite",
        &[
            "What is the opposite of \"{}\"?",
            "What is the opposite of the word {}?",
            "Give the opposite of \"{}\".",
            "What word means the opposite of {}?",
        ],
        OPPOSITES,
        &mut out,
    );
    table(
        "plural",
        &[
            "What is the plural of \"{}\"?",
            "What is the plural form of the word {}?",
            "How do you say more than one {}?",
        ],
        PLURALS,
        &mut out,
    );
    for n in 1..=40i64 {
        out.push(Item {
            id: format!("next:{n}"),
            phrasings: vec![
                format!("What number comes after {n}?"),
                format!("What is the next number after {n}?"),
                format!("Which number follows {n} when counting?"),
            ],
            answers: num(n + 1),
        });
    }
    for (key, ph, n) in COUNTS {
        out.push(Item {
            id: format!("count:{key}"),
            phrasings: strings(ph),
            answers: num(*n),
        });
    }
    for (key, ph, ans) in FACTS {
        out.push(Item {
            id: format!("fact:{key}"),
            phrasings: strings(ph),
            answers: strings(ans),
        });
    }
    out
}

/// FNV-1a of the id, mixed with the seed: which phrasing an item gets.
fn pick(id: &str, seed: u64, n: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in id.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % n as u64) as usize
}

/// Every item as a question, each in the phrasing `seed` picks, in a fixed order.
pub fn pool(seed: u64) -> Vec<Question> {
    items()
        .into_iter()
        .map(|it| {
            let q = it.phrasings[pick(&it.id, seed, it.phrasings.len())].clone();
            Question {
                id: it.id,
                question: q,
                choices: vec![],
                gold: Gold::Texts(it.answers),
            }
        })
        .collect()
}

/// [`pool`] with seed 0, built once: what the judge and the data builder look families up in.
pub fn default_pool() -> &'static [Question] {
    static POOL: OnceLock<Vec<Question>> = OnceLock::new();
    POOL.get_or_init(|| pool(0))
}

/// The family of an id ("capital" of "capital:France"; arithmetic splits by operation).
pub fn family(id: &str) -> &str {
    let f = id.split(':').next().unwrap_or(id);
    if f == "arith" {
        if id.contains('*') {
            return "times";
        }
        if id[6..].contains('-') {
            return "minus";
        }
        return "plus";
    }
    f
}

/// A wrong answer for `q` in its family's terms: another item's first answer from the same
/// family in `pool` (chosen by `salt`), never one of `q`'s accepted answers. None when the
/// family has no other answer.
pub fn wrong_answer(q: &Question, pool: &[Question], salt: u64) -> Option<String> {
    let Gold::Texts(right) = &q.gold else {
        return None;
    };
    let fam = family(&q.id);
    let same: Vec<&str> = right.iter().map(|s| s.as_str()).collect();
    let mut cands: Vec<String> = pool
        .iter()
        .filter(|o| o.id != q.id && family(&o.id) == fam)
        .filter_map(|o| match &o.gold {
            Gold::Texts(t) => t.first().cloned(),
            _ => None,
        })
        .filter(|a| !same.iter().any(|r| normalize(r) == normalize(a)))
        .collect();
    cands.sort();
    cands.dedup();
    if cands.is_empty() {
        return None;
    }
    Some(cands[pick(&q.id, salt, cands.len())].clone())
}
