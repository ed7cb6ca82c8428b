//! Seeded inputs several tests share: random token pairs and two multiple-choice questions.

use pinpoint::diagnose::pairs::{McQuestion, TokenPair};

/// `n` pairs of seeded random ids below `vocab`: reference `i` has `len(i)` ids, and
/// `edit` turns a copy of it into the counterfactual, drawing any new ids from the same
/// stream (so a test's pairs depend only on its seed, lengths and edit).
pub fn random_pairs(
    seed: u64,
    n: usize,
    vocab: u32,
    len: impl Fn(usize) -> usize,
    edit: impl Fn(&mut Vec<u32>, &mut dyn FnMut() -> u32),
) -> Vec<TokenPair> {
    let mut s = seed;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 33) % vocab as u64) as u32
    };
    (0..n)
        .map(|i| {
            let reference: Vec<u32> = (0..len(i)).map(|_| next()).collect();
            let mut counterfactual = reference.clone();
            edit(&mut counterfactual, &mut next);
            TokenPair {
                index: i,
                source: format!("test:{i}"),
                reference,
                counterfactual,
            }
        })
        .collect()
}

/// Two easy MMLU-style questions SmolLM2 answers right (the Red Planet; water's boiling
/// point in Celsius).
pub fn two_mc_questions() -> Vec<McQuestion> {
    vec![
        McQuestion {
            id: "t1".into(),
            question: "Which planet is known as the Red Planet?".into(),
            choices: vec![
                "Venus".into(),
                "Mars".into(),
                "Jupiter".into(),
                "Saturn".into(),
            ],
            answer: 1,
        },
        McQuestion {
            id: "t2".into(),
            question: "What is the boiling point of water at sea level in Celsius?".into(),
            choices: vec!["90".into(), "80".into(), "100".into(), "120".into()],
            answer: 2,
        },
    ]
}
