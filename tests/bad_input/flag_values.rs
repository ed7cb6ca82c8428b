//! Flag values that parse but make no sense: a climbing learning-rate schedule, weight
//! decay or a LoRA scale that blow the weights up, flags the chosen mode ignores, lists
//! that name an item twice, the same file twice, thread counts past the cores, empty stop
//! strings and cache folders, and byte-order marks in the inputs. Each error names the flag
//! and, where there is one, the limit.

use super::{absent, fail, nothing, ok, Case, Env, Out, TUNE};

const GEN: &str = "generate --model m --prompt yes --max-new-tokens 2";
const EVAL: &str = "eval --model m --mmlu 0 --short 0 --out ev --quiet";
const MD: &str = "make-data --model m --short 0 --questions q.jsonl --out md --quiet";
const DIAG: &str = "diagnose --model m --pairs pairs.jsonl --out dg";

/// (name, extra `tune` flags, needles): refused before any training.
const TUNE_ROWS: &[(&str, &str, &[&str])] = &[
    (
        "schedule climbs past --lr",
        "--lr 1e-5 --lr-end 0.9",
        &["--lr-end 0.9", "--lr 0.00001", "climb"],
    ),
    (
        "weight decay past 1",
        "--weight-decay 1e6",
        &["--weight-decay 1000000", "at most 1"],
    ),
    (
        "weight decay just past 1",
        "--weight-decay 1.5",
        &["--weight-decay 1.5", "at most 1"],
    ),
    (
        "LoRA alpha blows the adapters up",
        "--mode lora --lora-alpha 1e9",
        &["--lora-alpha 1000000000", "at most 64"],
    ),
    (
        "LoRA scale 65 at rank 1",
        "--mode lora --lora-rank 1 --lora-alpha 65",
        &["--lora-alpha 65", "--lora-rank 1", "at most 64"],
    ),
    (
        "--layers under --mode sft",
        "--mode sft --layers 0",
        &["--layers", "--mode sft"],
    ),
    (
        "--layers under --mode spt",
        "--layers 1",
        &["--layers", "--mode spt"],
    ),
    (
        "--proj under --mode sft",
        "--mode sft --proj q",
        &["--proj", "--mode sft"],
    ),
    (
        "--lora-rank under --mode attn",
        "--mode attn --lora-rank 4",
        &["--lora-rank", "--mode attn"],
    ),
    (
        "--lora-proj under --mode spt",
        "--lora-proj q,v",
        &["--lora-proj", "--mode spt"],
    ),
    (
        "--lora-proj twice",
        "--mode lora --lora-proj q,v,q",
        &["--lora-proj q,v,q", "\"q\" is listed twice"],
    ),
    (
        "--lora-proj twice by another name",
        "--mode lora --lora-proj q,Q",
        &["--lora-proj", "listed twice"],
    ),
    (
        "--proj twice",
        "--proj q,o,o",
        &["--proj q,o,o", "\"o\" is listed twice"],
    ),
    (
        "--layers twice",
        "--mode attn --layers 0,2,0",
        &["--layers 0,2,0", "\"0\" is listed twice"],
    ),
    (
        "--layers past the model",
        "--mode mlp --layers 1,7",
        &["--layers", "layer 7", "0 to 2"],
    ),
    (
        "LoRA rank past the matrix",
        "--mode lora --lora-rank 100",
        &["--lora-rank 100", "at most 64", "64 x 64"],
    ),
    (
        "LoRA rank past the MLP matrix",
        "--mode lora --lora-rank 65 --lora-alpha 16 --lora-proj gate",
        &["--lora-rank 65", "at most 64", "--lora-proj gate"],
    ),
    (
        "--gemm on the CPU",
        "--gemm cublas",
        &["--gemm", "--device cpu"],
    ),
    (
        "--authors-decay without decay",
        "--weight-decay 0 --authors-decay",
        &["--authors-decay", "--weight-decay 0"],
    ),
];

/// (name, command line, needles) of the other commands.
const OTHER_ROWS: &[(&str, &str, &[&str])] = &[
    (
        "eval: the same --questions file twice",
        "--questions q.jsonl --questions q.jsonl",
        &["--questions q.jsonl", "same file"],
    ),
    (
        "eval: the same --questions file by another path",
        "--questions q.jsonl --questions ./q.jsonl",
        &["--questions ./q.jsonl", "same file"],
    ),
    (
        "eval: --judge-model without --judge model",
        "--questions q.jsonl --judge-model m",
        &["--judge-model", "--judge rules"],
    ),
    (
        "generate: --top-p with greedy decoding",
        "--top-p 0.5",
        &["--top-p", "--temperature 0"],
    ),
    (
        "diagnose: --n with a --pairs file",
        "--n 5",
        &["--n", "--pairs"],
    ),
    (
        "diagnose: --seed with a --pairs file",
        "--seed 3",
        &["--seed", "--pairs"],
    ),
    (
        "diagnose: the same label word twice",
        "--syc-word Yes",
        &["--syc-word", "--anti-word", "\"Yes\""],
    ),
];

fn rows() -> Vec<Case> {
    let mut cases: Vec<Case> = TUNE_ROWS
        .iter()
        .map(|(name, extra, needles)| {
            fail(
                &format!("values: tune {name}"),
                nothing,
                &format!("{TUNE} --out o {extra}"),
                needles,
            )
            .after(absent("o/model.safetensors"))
        })
        .collect();
    for (name, extra, needles) in OTHER_ROWS {
        let base = match name.split(':').next() {
            Some("eval") => EVAL,
            Some("generate") => GEN,
            _ => DIAG,
        };
        cases.push(
            fail(
                &format!("values: {name}"),
                nothing,
                &format!("{base} {extra}"),
                needles,
            )
            .after(absent("dg/heads.json")),
        );
    }
    cases
}

/// A case whose arguments hold a space or an empty string (the table splits on spaces).
fn fail_args(name: &str, args: &[&str], needles: &[&str]) -> Case {
    let mut c = fail(name, nothing, "", needles);
    c.args = args.iter().map(|s| s.to_string()).collect();
    c
}

fn others() -> Vec<Case> {
    vec![
        fail(
            "values: make-data --questions also --exclude",
            nothing,
            &format!("{MD} --exclude q.jsonl"),
            &["--questions/--exclude", "q.jsonl", "same file"],
        )
        .after(absent("md")),
        fail(
            "values: make-data the same --questions twice",
            nothing,
            &format!("{MD} --questions ./q.jsonl"),
            &["--questions ./q.jsonl", "same file"],
        ),
        fail(
            "values: pipeline --baselines twice",
            nothing,
            "pipeline --model m --out run --quiet --baselines sft,lora,sft",
            &["--baselines sft,lora,sft", "\"sft\" is listed twice"],
        )
        .after(absent("run")),
        fail(
            "values: pipeline --knockout-max-k with --knockout 0",
            nothing,
            "pipeline --model m --out run --quiet --knockout 0 --knockout-max-k 5",
            &["--knockout-max-k", "--knockout 0"],
        ),
        fail(
            "values: logits --top 0 --top-only",
            nothing,
            "logits --model m --prompt yes --top 0 --top-only --out o.json",
            &["--top 0"],
        )
        .after(absent("o.json")),
        fail(
            "values: --threads 10000",
            nothing,
            "--threads 10000 inspect --model m",
            &["--threads 10000", "at most", "per core"],
        ),
        fail(
            "values: --threads past 4 per core",
            nothing,
            "inspect --model m --threads 100000",
            &["--threads 100000", "at most"],
        ),
        ok(
            "values: --threads 0 uses every core",
            nothing,
            "--threads 0 logits --model m --prompt yes --top 2 --top-only --out o.json",
            |e: &Env, _: &Out| {
                e.p("o.json")
                    .is_file()
                    .then_some(())
                    .ok_or("no o.json".into())
            },
        ),
        fail_args(
            "values: generate --stop \"\"",
            &["generate", "--model", "m", "--prompt", "yes", "--stop", ""],
            &["--stop \"\"", "empty stop string"],
        ),
        fail_args(
            "values: chat --stop \"\" after a good one",
            &["chat", "--model", "m", "yes", "--stop", "no", "--stop", ""],
            &["--stop \"\"", "2."],
        ),
        fail_args(
            "values: diagnose --anti-word \" \"",
            &[
                "diagnose",
                "--model",
                "m",
                "--pairs",
                "pairs.jsonl",
                "--anti-word",
                " ",
                "--out",
                "dg",
            ],
            &["--anti-word \" \"", "give a word"],
        ),
    ]
}

/// UTF-8 byte-order marks at the start of each text input are skipped, as editors on
/// some systems write them: every command reads the file as without one.
fn bom_cases() -> Vec<Case> {
    const BOM: &str = "\u{feff}";
    let bom = |rel: &'static str| {
        move |e: &Env| {
            let text = String::from_utf8(e.read(rel)).unwrap();
            e.write(rel, format!("{BOM}{text}"));
        }
    };
    let wrote = |rel: &'static str| {
        move |e: &Env, _: &Out| {
            e.p(rel)
                .is_file()
                .then_some(())
                .ok_or(format!("{rel} was not written"))
        }
    };
    let tune = format!("{TUNE} --out o");
    let logits = "logits --model m --prompt yes --chat --top 2 --top-only --out o.json";
    vec![
        ok(
            "bom: train.jsonl",
            bom("train.jsonl"),
            &tune,
            wrote("o/model.safetensors"),
        ),
        ok(
            "bom: config.json",
            bom("m/config.json"),
            logits,
            wrote("o.json"),
        ),
        ok(
            "bom: tokenizer.json",
            bom("m/tokenizer.json"),
            logits,
            wrote("o.json"),
        ),
        ok(
            "bom: tokenizer_config.json",
            bom("m/tokenizer_config.json"),
            logits,
            wrote("o.json"),
        ),
        ok(
            "bom: heads.json",
            bom("heads.json"),
            &format!(
                "{} --heads heads.json --top-k 1 --out o",
                TUNE.replace("--heads-list L0H0 ", "")
            ),
            wrote("o/model.safetensors"),
        ),
        ok(
            "bom: pairs.jsonl",
            bom("pairs.jsonl"),
            DIAG,
            wrote("dg/heads.json"),
        ),
        ok(
            "bom: a line of train.jsonl (files joined with cat)",
            |e: &Env| {
                let text = String::from_utf8(e.read("train.jsonl")).unwrap();
                let (a, b) = text.split_once('\n').unwrap();
                e.write("train.jsonl", format!("{a}\n{BOM}{b}"));
            },
            &tune,
            wrote("o/model.safetensors"),
        ),
    ]
}

/// Values the up-front checks let through but that blow the weights up: training ends
/// with an error naming the step, never "done", and nothing is saved as the final model.
fn divergence_cases() -> Vec<Case> {
    let eight = TUNE.replace("--steps 1 --batch 1", "--steps 8 --batch 2");
    vec![
        fail(
            "diverge: --lr 1000 grows the tuned head 1000-fold",
            nothing,
            &format!("{eight} --out o --lr 1000 --weight-decay 0 --checkpoint-every 4"),
            &["step 8", "diverged", "q_proj", "exploded", "step-000004"],
        )
        .after(absent("o/model.safetensors")),
        fail(
            "diverge: --mode sft --lr 50 explodes the loss",
            nothing,
            &format!(
                "{} --out o --mode sft --lr 50",
                eight.replace("--heads-list L0H0 ", "")
            ),
            &["step 2", "diverged", "loss"],
        )
        .after(absent("o/model.safetensors")),
    ]
}

pub fn cases() -> Vec<Case> {
    let mut c = rows();
    c.extend(divergence_cases());
    c.extend(others());
    c.extend(bom_cases());
    c
}

/// `PINPOINT_HOME` set but empty (or blank) is refused by name, before any work.
pub fn check_blank_home() {
    for home in ["", "  "] {
        let env = Env::new();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_pinpoint"))
            .args([
                "logits", "--model", "m", "--prompt", "yes", "--out", "o.json",
            ])
            .current_dir(&env.root)
            .env("PINPOINT_HOME", home)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("PINPOINT_HOME") && err.contains("empty"),
            "{err}"
        );
        assert!(!env.p("o.json").exists() && !env.p("downloads").exists());
    }
}
