//! Numeric and other flags: values out of range, not numbers, unknown names.

use super::{absent, fail, nothing, Case, TUNE};

/// `TUNE` with `extra` flags (replacing its own `--steps 1`/`--batch 1` when `extra` sets them).
const TUNE_FLAGS: &[(&str, &[&str])] = &[
    ("--lr NaN", &["--lr NaN"]),
    ("--lr inf", &["--lr inf"]),
    ("--lr=-1", &["--lr -1"]),
    ("--lr 0", &["--lr 0"]),
    ("--lr-end=-1", &["--lr-end -1"]),
    ("--lr-end NaN", &["--lr-end NaN"]),
    ("--warmup 1", &["--warmup 1", "--steps 1"]),
    ("--warmup 9", &["--warmup 9"]),
    ("--steps 0", &["--steps 0"]),
    ("--batch 0", &["--batch 0"]),
    ("--micro-batch 4", &["--micro-batch 4", "--batch 1"]),
    ("--max-grad-norm NaN", &["--max-grad-norm NaN"]),
    ("--max-grad-norm=-1", &["--max-grad-norm -1"]),
    ("--max-grad-norm inf", &["--max-grad-norm inf"]),
    ("--power 0", &["--power 0"]),
    ("--power NaN", &["--power NaN"]),
    ("--weight-decay=-0.1", &["--weight-decay -0.1"]),
    ("--weight-decay inf", &["--weight-decay inf"]),
    ("--keep-checkpoints 0", &["--keep-checkpoints 0"]),
    ("--lora-rank 0", &["--lora-rank 0"]),
    ("--lora-alpha NaN", &["--lora-alpha NaN"]),
    ("--max-len 1", &["--max-len 1"]),
    ("--mem-cap-gib 0", &["--mem-cap-gib 0"]),
    ("--mem-cap-gib NaN", &["--mem-cap-gib NaN"]),
    ("--top-k 0", &["--top-k"]),
    ("--mode bogus", &["bogus", "--mode"]),
    ("--lr abc", &["abc", "--lr"]),
    ("--steps=-1", &["-1", "--steps"]),
    ("--save-dtype f64", &["f64", "--save-dtype"]),
    ("--proj x", &["\"x\""]),
    ("--mode attn --layers a", &["--layers"]),
    ("--mode spt-lora --lora-proj zz", &["zz"]),
    ("--mode sft", &["--heads"]),
];

const GEN: &str = "generate --model m --prompt yes";
const CHAT: &str = "chat --model m yes";
const EVAL: &str = "eval --model m --mmlu 0 --short 0 --questions q.jsonl --out ev --quiet";
const KL: &str = "kl --base m --tuned m";
const PIPE: &str = "pipeline --model m --out run --quiet";

/// (name, the command line in parts joined by spaces, needles, a path the failing run must
/// not create).
type Row = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    Option<&'static str>,
);

/// `generate` and `chat`.
const SAMPLING: &[Row] = &[
    (
        "flags: generate --temperature NaN",
        &[GEN, "--temperature NaN"],
        &["--temperature NaN"],
        None,
    ),
    (
        "flags: generate --temperature -1",
        &[GEN, "--temperature=-1"],
        &["--temperature -1"],
        None,
    ),
    (
        "flags: generate --temperature inf",
        &[GEN, "--temperature inf"],
        &["--temperature inf"],
        None,
    ),
    (
        "flags: generate --top-p 0",
        &[GEN, "--top-p 0"],
        &["--top-p 0"],
        None,
    ),
    (
        "flags: generate --top-p 1.5",
        &[GEN, "--top-p 1.5"],
        &["--top-p 1.5"],
        None,
    ),
    (
        "flags: generate --top-p NaN",
        &[GEN, "--top-p NaN"],
        &["--top-p NaN"],
        None,
    ),
    (
        "flags: generate --max-new-tokens 0",
        &[GEN, "--max-new-tokens 0"],
        &["--max-new-tokens 0"],
        None,
    ),
    (
        "flags: chat --temperature NaN",
        &[CHAT, "--temperature NaN"],
        &["--temperature NaN"],
        None,
    ),
    (
        "flags: chat --top-p -1",
        &[CHAT, "--top-p=-1"],
        &["--top-p -1"],
        None,
    ),
];

/// `eval` and `kl`.
const EVAL_KL: &[Row] = &[
    (
        "flags: eval --max-reply-tokens 0",
        &[EVAL, "--max-reply-tokens 0"],
        &["--max-reply-tokens 0"],
        None,
    ),
    (
        "flags: eval --max-answer-tokens 0",
        &[EVAL, "--max-answer-tokens 0"],
        &["--max-answer-tokens 0"],
        None,
    ),
    (
        "flags: eval --batch 0",
        &[EVAL, "--batch 0"],
        &["--batch 0"],
        None,
    ),
    (
        "flags: eval --questions missing",
        &["eval --model m --mmlu 0 --short 0 --questions none.jsonl --out ev --quiet"],
        &["none.jsonl"],
        None,
    ),
    (
        "flags: eval --judge-model a file",
        &[EVAL, "--judge model --judge-model train.jsonl"],
        &["--judge-model", "train.jsonl"],
        None,
    ),
    ("flags: kl --n 0", &[KL, "--n 0"], &["--n 0"], None),
    ("flags: kl --len 1", &[KL, "--len 1"], &["--len 1"], None),
    (
        "flags: kl --batch 0",
        &[KL, "--batch 0"],
        &["--batch 0"],
        None,
    ),
    (
        "flags: kl --base missing",
        &["kl --base none --tuned m"],
        &["--base", "none"],
        None,
    ),
    (
        "flags: kl --tuned a file",
        &["kl --base m --tuned train.jsonl"],
        &["--tuned", "train.jsonl"],
        None,
    ),
];

/// `pipeline`.
const PIPELINE: &[Row] = &[
    (
        "flags: pipeline --steps 0",
        &[PIPE, "--steps 0"],
        &["--steps 0"],
        None,
    ),
    (
        "flags: pipeline --lr NaN",
        &[PIPE, "--lr NaN"],
        &["--lr NaN"],
        None,
    ),
    (
        "flags: pipeline --lr-sft -1",
        &[PIPE, "--lr-sft=-1"],
        &["--lr-sft -1"],
        None,
    ),
    (
        "flags: pipeline --batch 0",
        &[PIPE, "--batch 0"],
        &["--batch 0"],
        None,
    ),
    (
        "flags: pipeline --micro-batch 32",
        &[PIPE, "--micro-batch 32"],
        &["--micro-batch 32"],
        None,
    ),
    (
        "flags: pipeline --max-reply-tokens 0",
        &[PIPE, "--max-reply-tokens 0"],
        &["--max-reply-tokens 0"],
        None,
    ),
    (
        "flags: pipeline --planted-share 2",
        &[PIPE, "--planted-share 2"],
        &["--planted-share 2"],
        None,
    ),
    (
        "flags: pipeline --pairs 0",
        &[PIPE, "--pairs 0"],
        &["--pairs 0"],
        None,
    ),
    (
        "flags: pipeline --kl-len 1",
        &[PIPE, "--kl-len 1"],
        &["--kl-len 1"],
        None,
    ),
    (
        "flags: pipeline --k 0",
        &[PIPE, "--k 0"],
        &["--k 0", "at least 1"],
        Some("run"),
    ),
    (
        "flags: pipeline --k 4,,0",
        &[PIPE, "--k 4,,0"],
        &["--k 4,,0"],
        Some("run"),
    ),
    (
        "flags: pipeline --k ,",
        &[PIPE, "--k ,"],
        &["--k", "at least one head count"],
        Some("run"),
    ),
    (
        "flags: pipeline --k past the model's heads",
        &[PIPE, "--k 2,9999"],
        &["--k 9999", "attention heads"],
        Some("run"),
    ),
    ("flags: pipeline --k x", &[PIPE, "--k x"], &["--k"], None),
    (
        "flags: pipeline --baselines dpo",
        &[PIPE, "--baselines dpo"],
        &["dpo"],
        None,
    ),
    (
        "flags: pipeline --stop-after tune-spt-k9",
        &[PIPE, "--stop-after tune-spt-k9"],
        &["--stop-after", "tune-spt-k9", "tune-spt-k8", "make-data"],
        Some("run/stages.json"),
    ),
    (
        "flags: pipeline --stop-after diagnosis",
        &[PIPE, "--stop-after diagnosis"],
        &["\"diagnosis\"", "split, diagnose"],
        None,
    ),
];

/// The analysis commands, `bench`, `make-data`, and an unknown command.
const OTHERS: &[Row] = &[
    (
        "flags: diagnose --n 0",
        &["diagnose --model m --n 0 --out dg"],
        &["--n"],
        None,
    ),
    (
        "flags: diagnose --top-k 0",
        &["diagnose --model m --pairs pairs.jsonl --top-k 0 --out dg"],
        &["--top-k 0"],
        None,
    ),
    (
        "flags: knockout --max-k 0",
        &["knockout --model m --pairs pairs.jsonl --heads heads.json --max-k 0 --out ko"],
        &["--max-k 0"],
        None,
    ),
    (
        "flags: attention --top-k 0",
        &["attention --model m --pairs pairs.jsonl --heads heads.json --top-k 0 --out at"],
        &["--top-k 0"],
        None,
    ),
    (
        "flags: bench --reps 0",
        &["bench forward --model m --reps 0"],
        &["--reps 0"],
        None,
    ),
    (
        "flags: make-data --batch 0",
        &["make-data --model m --short 0 --questions q.jsonl --batch 0 --out md"],
        &["--batch 0"],
        None,
    ),
    (
        "flags: make-data --planted-share NaN",
        &["make-data --model m --short 0 --questions q.jsonl --planted-share NaN --out md"],
        &["--planted-share NaN"],
        None,
    ),
    (
        "flags: unknown command",
        &["tunes --model m"],
        &["tunes"],
        None,
    ),
];

pub fn cases() -> Vec<Case> {
    let mut cases = tune_cases();
    for rows in [SAMPLING, EVAL_KL, PIPELINE, OTHERS] {
        cases.extend(rows.iter().map(row_case));
    }
    for (k, v) in [("--temperature", "nan"), ("--top-p", "-inf")] {
        cases.push(fail(
            &format!("flags: generate {k}={v}"),
            nothing,
            &format!("{GEN} {k}={v}"),
            &[k],
        ));
    }
    cases
}

fn tune_cases() -> Vec<Case> {
    TUNE_FLAGS
        .iter()
        .map(|&(extra, needles)| {
            let mut base = TUNE.to_string();
            for f in ["--steps", "--batch"] {
                if extra.contains(f) {
                    base = base.replace(&format!(" {f} 1"), "");
                }
            }
            fail(
                &format!("flags: tune {extra}"),
                nothing,
                &format!("{base} --out o {extra}"),
                needles,
            )
            .after(absent("o/model.safetensors"))
        })
        .collect()
}

fn row_case(&(name, parts, needles, after): &Row) -> Case {
    let case = fail(name, nothing, &parts.join(" "), needles);
    match after {
        Some(rel) => case.after(absent(rel)),
        None => case,
    }
}
