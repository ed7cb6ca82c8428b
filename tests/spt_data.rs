//! The easy-question generator and the SPT training-data builder: answers are right (checked
//! by recomputing them from the question text), splits are by item, planted answers are
//! wrong and keep the model's wording, and bad data sets are refused with a clear message.

use pinpoint::eval::datasets;
use pinpoint::eval::easy;
use pinpoint::eval::judge::is_correct;
use pinpoint::eval::make_data::{
    build_dialogues, plant_wrong, write_dialogues, InsistForm, Origin, Recipe, INSIST, REVISE,
};
use pinpoint::eval::{Gold, Question};
use std::collections::BTreeSet;

/// Recompute an arithmetic answer from the question's own text (independent of the
/// generator's tables): the two integers and the operation word or sign.
fn arithmetic_from_text(q: &str) -> Option<i64> {
    let nums: Vec<i64> = q
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let [a, b] = nums[..] else { return None };
    let l = q.to_lowercase();
    if l.contains("times") || l.contains("multiplied") {
        Some(a * b)
    } else if l.contains("subtract") {
        Some(b - a) // "subtract {b} from {a}": the first number is subtracted
    } else if l.contains('-') || l.contains("minus") || l.contains("take away") {
        Some(a - b)
    } else if l.contains('+') || l.contains("plus") || l.contains("add") {
        Some(a + b)
    } else {
        None
    }
}

#[test]
fn generated_arithmetic_answers_match_the_question_text() {
    for seed in [0, 1, 2, 3] {
        let mut checked = 0;
        for q in easy::pool(seed)
            .iter()
            .filter(|q| q.id.starts_with("arith:"))
        {
            let want = arithmetic_from_text(&q.question)
                .unwrap_or_else(|| panic!("no arithmetic in {:?}", q.question));
            let Gold::Texts(t) = &q.gold else { panic!() };
            assert_eq!(t[0], want.to_string(), "{}: {:?}", q.id, q.question);
            checked += 1;
        }
        assert!(checked >= 97, "{checked}");
    }
}

#[test]
fn pool_ids_are_unique_and_phrasings_vary_with_the_seed() {
    let a = easy::pool(0);
    let b = easy::pool(1);
    let ids: BTreeSet<&str> = a.iter().map(|q| q.id.as_str()).collect();
    assert_eq!(ids.len(), a.len(), "duplicate ids");
    assert!(a.len() >= 300, "pool of {}", a.len());
    // Same ids in the same order, other wordings for many items.
    assert!(a
        .iter()
        .zip(&b)
        .all(|(x, y)| x.id == y.id && x.gold == y.gold));
    let differ = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x.question != y.question)
        .count();
    assert!(differ > a.len() / 3, "{differ} of {} differ", a.len());
    // Every family is in a small interleaved sample.
    let fams: BTreeSet<&str> = a.iter().map(|q| easy::family(&q.id)).collect();
    let sample = datasets::short_answer_questions(fams.len(), 5);
    let got: BTreeSet<&str> = sample.iter().map(|q| easy::family(&q.id)).collect();
    assert_eq!(got, fams);
}

#[test]
fn no_question_contains_its_own_answer() {
    // Otherwise a reply that only echoes the question would count as right.
    for seed in 0..12 {
        for q in easy::pool(seed) {
            assert!(
                !is_correct(&q, &q.question),
                "{}: {:?} holds its answer",
                q.id,
                q.question
            );
        }
    }
}

#[test]
fn wrong_answers_are_wrong_and_of_the_same_family() {
    let pool = easy::pool(0);
    for (i, q) in pool.iter().enumerate() {
        let w = easy::wrong_answer(q, &pool, i as u64).expect("every family has other answers");
        assert!(!is_correct(q, &w), "{}: {w:?} is accepted", q.id);
        let same_family = pool.iter().any(|o| {
            easy::family(&o.id) == easy::family(&q.id)
                && matches!(&o.gold, Gold::Texts(t) if t[0] == w)
        });
        assert!(same_family, "{}: {w:?}", q.id);
    }
}

fn capital() -> Question {
    easy::pool(0)
        .into_iter()
        .find(|q| q.id == "capital:Norway")
        .unwrap()
}

#[test]
fn planted_answers_keep_the_wording_and_swap_the_answer() {
    let pool = easy::pool(0);
    let q = capital();
    let w = plant_wrong(&q, "The capital of Norway is Oslo.", &pool, 3).unwrap();
    assert!(w.starts_with("The capital of Norway is ") && w.ends_with('.'));
    assert!(!is_correct(&q, &w), "{w}");
    // Without the answer in its text, a plain sentence.
    let w = plant_wrong(&q, "Norway's capital, of course!", &pool, 3).unwrap();
    assert!(w.starts_with("The answer is "), "{w}");
    // Arithmetic: the last mention is the answer ("6 + 3 = 9" keeps the operands).
    let add = pool.iter().find(|q| q.id == "arith:6+3").unwrap();
    let w = plant_wrong(add, "6 + 3 = 9", &pool, 1).unwrap();
    assert!(w.starts_with("6 + 3 = ") && !is_correct(add, &w), "{w}");
    // Multiple choice: another letter.
    let mc = Question {
        id: "m".into(),
        question: "Q".into(),
        choices: vec!["a".into(), "b".into(), "c".into()],
        gold: Gold::Choice(1),
    };
    let w = plant_wrong(&mc, "The answer is (B).", &pool, 0).unwrap();
    assert!(
        w.starts_with("The answer is (") && !is_correct(&mc, &w),
        "{w}"
    );
}

fn known_and_unknown(n_right: usize, n_wrong: usize) -> (Vec<Question>, Vec<String>) {
    let pool = easy::pool(0);
    let caps: Vec<Question> = pool
        .iter()
        .filter(|q| q.id.starts_with("capital:"))
        .take(n_right + n_wrong)
        .cloned()
        .collect();
    let first = caps
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let Gold::Texts(t) = &q.gold else { panic!() };
            if i < n_right {
                format!("The capital is {}.", t[0])
            } else {
                "I do not know.".to_string()
            }
        })
        .collect();
    (caps, first)
}

#[test]
fn dialogues_insist_when_right_and_revise_planted_and_own_errors() {
    let (qs, first) = known_and_unknown(20, 6);
    let recipe = Recipe {
        own_wrong: true,
        planted_share: 1.0,
        min_known: 16,
        anchor_first: true,
        anchor_retain: true,
        insist: InsistForm::YesSure,
        ..Recipe::default()
    };
    let ds = build_dialogues(&qs, &first, None, &recipe, 0).unwrap();
    let count = |o: Origin| ds.iter().filter(|d| d.origin == o).count();
    assert_eq!(count(Origin::OwnRight), 20);
    assert_eq!(count(Origin::Planted), 20);
    assert_eq!(count(Origin::OwnWrong), 6);
    assert_eq!(count(Origin::Anchor), 26);
    for d in ds.iter().filter(|d| d.origin == Origin::Anchor) {
        // The question and the model's own first answer, nothing else.
        let i = qs.iter().position(|q| q.id == d.id).unwrap();
        assert_eq!(d.messages.len(), 2);
        assert_eq!(d.messages[1].content, first[i]);
    }
    for d in ds.iter().filter(|d| d.origin != Origin::Anchor) {
        let reply = &d.messages.last().unwrap().content;
        let shown = &d.messages[d.messages.len() - 3].content;
        let q = qs.iter().find(|q| q.id == d.id).unwrap();
        assert_eq!(d.first_correct, is_correct(q, shown), "{shown}");
        if d.first_correct {
            assert!(reply.starts_with("Yes, I'm sure.") && reply.ends_with(INSIST));
            assert!(is_correct(q, reply), "insist restates the answer: {reply}");
        } else {
            assert!(reply.starts_with(REVISE) && is_correct(q, reply), "{reply}");
        }
    }
    // Without own errors and without planting there is nothing to revise: refused.
    let none = Recipe {
        own_wrong: false,
        planted_share: 0.0,
        min_known: 16,
        anchor_first: true,
        anchor_retain: true,
        ..Recipe::default()
    };
    let e = build_dialogues(&qs, &first, None, &none, 0).unwrap_err();
    assert!(e.to_string().contains("no revise dialogues"), "{e}");
}

/// The answer-first insist form (the default): the model's own right answer, then the
/// insist sentence, with no "Yes, I'm sure." before it; revise targets and the challenges drawn are as in
/// the default form (same seed, same draws).
#[test]
fn answer_first_insist_targets_begin_with_the_answer() {
    let (qs, first) = known_and_unknown(20, 6);
    let base = Recipe {
        own_wrong: true,
        planted_share: 1.0,
        insist: InsistForm::YesSure,
        ..Recipe::default()
    };
    let answer_first = Recipe {
        insist: InsistForm::AnswerFirst,
        ..base.clone()
    };
    assert_eq!(Recipe::default().insist, InsistForm::AnswerFirst);
    let a = build_dialogues(&qs, &first, None, &base, 0).unwrap();
    let b = build_dialogues(&qs, &first, None, &answer_first, 0).unwrap();
    assert_eq!(a.len(), b.len());
    let mut insists = 0;
    for (x, y) in a.iter().zip(&b) {
        let n = x.messages.len();
        assert_eq!(x.messages[..n - 1], y.messages[..n - 1], "{}", x.id);
        let (rx, ry) = (&x.messages[n - 1].content, &y.messages[n - 1].content);
        if x.origin == Origin::OwnRight {
            let i = qs.iter().position(|q| q.id == x.id).unwrap();
            assert_eq!(*ry, format!("{} {INSIST}", first[i]), "{}", x.id);
            assert_eq!(*rx, format!("Yes, I'm sure. {ry}"));
            insists += 1;
        } else {
            assert_eq!(rx, ry, "{}", x.id);
        }
    }
    assert_eq!(insists, 20);
}

#[test]
fn anchors_are_written_as_retain_examples_unless_asked_for_cross_entropy() {
    let (qs, first) = known_and_unknown(20, 6);
    for anchor_retain in [true, false] {
        let recipe = Recipe {
            anchor_retain,
            ..Recipe::default()
        };
        let ds = build_dialogues(&qs, &first, None, &recipe, 0).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        write_dialogues(tmp.path(), &ds, serde_json::json!({})).unwrap();
        let convs = pinpoint::tune::data::read_jsonl(&tmp.path().join("data.jsonl")).unwrap();
        assert_eq!(convs.len(), ds.len());
        for (c, d) in convs.iter().zip(&ds) {
            let want = anchor_retain && d.origin == Origin::Anchor;
            assert_eq!(c.retain, want, "line {}: {:?}", c.line, d.origin);
            assert_eq!(c.messages.len(), d.messages.len());
        }
        assert!(ds.iter().any(|d| d.origin == Origin::Anchor));
    }
}

#[test]
fn too_few_known_questions_is_an_error_naming_the_counts() {
    let (qs, first) = known_and_unknown(5, 20);
    let e = build_dialogues(&qs, &first, None, &Recipe::default(), 0).unwrap_err();
    let s = e.to_string();
    assert!(s.contains("only 5 of the 25"), "{s}");
    assert!(s.contains("at least 16"), "{s}");
}
