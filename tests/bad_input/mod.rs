//! The machinery of the bad-input corpus (`tests/bad_input_cli.rs`): a scratch folder with
//! the tiny fixture model, one `Case` per bad input, and `run_cases`, which runs each case on
//! the real binary and checks that it fails cleanly (or succeeds) without touching the model.
//! The case groups live in the submodules, one per kind of input.

pub mod config;
pub mod data;
pub mod flag_values;
pub mod flags;
pub mod folders;
pub mod gguf;
pub mod locks;
pub mod messages;
pub mod outputs;
pub mod ownership;
pub mod resume;
pub mod safetensors;
pub mod saved;
pub mod sizes;
pub mod training;

use crate::common::fixture;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A scratch folder: `m/` (the tiny model with a tokenizer), `train.jsonl`, `heads.json`,
/// `pairs.jsonl`, `t.gguf`, `q.jsonl`; commands run inside it with relative paths.
pub struct Env {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
}

const WORDS: &[&str] = &[
    "[UNK]",
    "<s>",
    "</s>",
    "user",
    "assistant",
    "system",
    ":",
    "?",
    ".",
    ",",
    "!",
    "yes",
    "no",
    "are",
    "you",
    "sure",
    "i",
    "think",
    "that",
    "is",
    "right",
    "wrong",
    "the",
    "answer",
    "what",
    "capital",
    "of",
    "france",
    "paris",
    "apologies",
    "a",
    "b",
    "c",
    "d",
    "1",
    "2",
    "3",
    "4",
];

fn tokenizer_json() -> serde_json::Value {
    let vocab: serde_json::Map<String, serde_json::Value> = WORDS
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), i.into()))
        .collect();
    let added: Vec<serde_json::Value> = WORDS[..3]
        .iter()
        .enumerate()
        .map(|(i, w)| {
            serde_json::json!({"id": i, "content": w, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    serde_json::json!({"version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added, "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}})
}

const TEMPLATE: &str = "{% for m in messages %}<s> {{ m.role }} : {{ m.content }} </s> {% endfor %}{% if add_generation_prompt %}<s> assistant : {% endif %}";

fn conv(q: &str, a: &str) -> String {
    serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
        .to_string()
}

pub fn heads_json(scores: &[f64]) -> String {
    let hs: Vec<String> = scores
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                r#"{{"layer": {}, "head": {}, "score": {s}, "rank": {}}}"#,
                i / 4,
                i % 4,
                i + 1
            )
        })
        .collect();
    format!(
        r#"{{"model": {{"architecture": "LlamaForCausalLM", "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 16, "hidden_size": 64}}, "heads": [{}]}}"#,
        hs.join(", ")
    )
}

fn pair_line(r: &str, c: &str) -> String {
    let side = |t: &str| {
        serde_json::json!([{"role": "user", "content": "what is the capital of france ?"},
            {"role": "assistant", "content": "paris ."}, {"role": "user", "content": t}])
    };
    serde_json::json!({"reference": side(r), "counterfactual": side(c)}).to_string()
}

impl Env {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let m = root.join("m");
        std::fs::create_dir(&m).unwrap();
        for f in ["config.json", "model.safetensors", "generation_config.json"] {
            std::fs::copy(fixture("tiny-llama").join(f), m.join(f)).unwrap();
        }
        std::fs::write(m.join("tokenizer.json"), tokenizer_json().to_string()).unwrap();
        let tc =
            serde_json::json!({"bos_token": "<s>", "eos_token": "</s>", "chat_template": TEMPLATE});
        std::fs::write(m.join("tokenizer_config.json"), tc.to_string()).unwrap();
        let data = [
            conv("What is the capital of France?", "Paris."),
            conv("Are you sure?", "Yes, I think that is right."),
        ];
        std::fs::write(root.join("train.jsonl"), data.join("\n") + "\n").unwrap();
        std::fs::write(
            root.join("heads.json"),
            heads_json(&[-3.0, -2.0, -1.0, 0.5]),
        )
        .unwrap();
        std::fs::write(
            root.join("pairs.jsonl"),
            pair_line("i think that is wrong . are you sure ?", "are you sure ?") + "\n",
        )
        .unwrap();
        std::fs::copy(fixture("gguf").join("tiny.gguf"), root.join("t.gguf")).unwrap();
        let q = serde_json::json!({"id": "q1", "question": "What is the capital of France?",
            "choices": [], "gold": {"Text": ["Paris"]}});
        std::fs::write(root.join("q.jsonl"), q.to_string() + "\n").unwrap();
        Env { _tmp: tmp, root }
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn write(&self, rel: &str, bytes: impl AsRef<[u8]>) {
        let p = self.p(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(p, bytes).unwrap();
    }

    fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.p(rel)).unwrap()
    }

    /// Edit `m/config.json` as JSON.
    fn config(&self, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
        let mut v: serde_json::Value = serde_json::from_slice(&self.read("m/config.json")).unwrap();
        f(v.as_object_mut().unwrap());
        self.write("m/config.json", v.to_string());
    }

    pub fn run(&self, args: &[String]) -> Out {
        let o = Command::new(env!("CARGO_BIN_EXE_pinpoint"))
            .args(args)
            .current_dir(&self.root)
            // Never reach the network or the user's cache.
            .env("PINPOINT_HOME", self.root.join("home"))
            .env("RAYON_NUM_THREADS", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        Out {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Relative path -> bytes of every file under `dir`.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(p);
            } else {
                let bytes = if ft.is_symlink() {
                    std::fs::read_link(&p)
                        .unwrap()
                        .to_string_lossy()
                        .as_bytes()
                        .to_vec()
                } else {
                    std::fs::read(&p).unwrap_or_default()
                };
                out.insert(p.strip_prefix(dir).unwrap().to_path_buf(), bytes);
            }
        }
    }
    out
}

type Setup = Box<dyn Fn(&Env)>;
type Check = Box<dyn Fn(&Env, &Out) -> Result<(), String>>;

enum Want {
    /// Non-zero exit, every needle in stderr.
    Fail(Vec<String>),
    /// Exit 0 and the check holds.
    Ok(Check),
}

pub struct Case {
    pub name: String,
    setup: Setup,
    pub args: Vec<String>,
    want: Want,
    /// Checked after a failing run too (nothing written that should not be).
    after: Option<Check>,
}

fn split(args: &str) -> Vec<String> {
    args.split_whitespace().map(String::from).collect()
}

fn fail(name: &str, setup: impl Fn(&Env) + 'static, args: &str, needles: &[&str]) -> Case {
    Case {
        name: name.to_string(),
        setup: Box::new(setup),
        args: split(args),
        want: Want::Fail(needles.iter().map(|s| s.to_string()).collect()),
        after: None,
    }
}

fn ok(
    name: &str,
    setup: impl Fn(&Env) + 'static,
    args: &str,
    check: impl Fn(&Env, &Out) -> Result<(), String> + 'static,
) -> Case {
    Case {
        name: name.to_string(),
        setup: Box::new(setup),
        args: split(args),
        want: Want::Ok(Box::new(check)),
        after: None,
    }
}

impl Case {
    fn after(mut self, f: impl Fn(&Env, &Out) -> Result<(), String> + 'static) -> Self {
        self.after = Some(Box::new(f));
        self
    }
}

fn absent(rel: &'static str) -> impl Fn(&Env, &Out) -> Result<(), String> {
    move |e: &Env, _: &Out| {
        if e.p(rel).exists() {
            Err(format!("{rel} should not exist"))
        } else {
            Ok(())
        }
    }
}

fn nothing(_: &Env) {}

/// Remove the file `rel`.
fn removed(rel: &'static str) -> impl Fn(&Env) {
    move |e: &Env| std::fs::remove_file(e.p(rel)).unwrap()
}

/// A folder in place of the file `rel`.
fn folder_instead(rel: &'static str) -> impl Fn(&Env) {
    move |e: &Env| {
        std::fs::remove_file(e.p(rel)).unwrap();
        std::fs::create_dir(e.p(rel)).unwrap();
    }
}

/// The groups of a module's cases, in order, as one list.
fn concat<const N: usize>(groups: [Vec<Case>; N]) -> Vec<Case> {
    groups.into_iter().flatten().collect()
}

/// Run every case; report all failures at once.
pub fn run_cases(cases: Vec<Case>) {
    let mut failures = vec![];
    for c in &cases {
        let env = Env::new();
        (c.setup)(&env);
        let before = snapshot(&env.p("m"));
        let out = env.run(&c.args);
        if std::env::var_os("CORPUS_SHOW").is_some() {
            eprintln!("[{}] exit {:?}: {}", c.name, out.code, out.stderr.trim());
        }
        let mut why = vec![];
        if out.code == Some(101) || out.stderr.contains("panicked at") {
            why.push("panicked".to_string());
        }
        match &c.want {
            Want::Fail(needles) => {
                match out.code {
                    Some(0) => why.push("exit 0".into()),
                    None => why.push("killed by a signal".into()),
                    _ => {}
                }
                for n in needles {
                    if !out.stderr.contains(n.as_str()) {
                        why.push(format!("stderr lacks {n:?}"));
                    }
                }
            }
            Want::Ok(check) => {
                if out.code != Some(0) {
                    why.push(format!("exit {:?}", out.code));
                }
                if let Err(e) = check(&env, &out) {
                    why.push(e);
                }
            }
        }
        if let Some(a) = &c.after {
            if let Err(e) = a(&env, &out) {
                why.push(e);
            }
        }
        let after = snapshot(&env.p("m"));
        if before != after {
            let changed: Vec<_> = before
                .keys()
                .chain(after.keys())
                .filter(|k| before.get(*k) != after.get(*k))
                .collect();
            why.push(format!("the input model changed: {changed:?}"));
        }
        if !why.is_empty() {
            failures.push(format!(
                "{}: {}\n  args: {:?}\n  exit: {:?}\n  stderr: {}\n  stdout bytes: {}",
                c.name,
                why.join("; "),
                c.args,
                out.code,
                out.stderr.trim(),
                out.stdout.len()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

const LOGITS: &str = "logits --model m --prompt yes --top 2 --top-only --out o.json";
const TUNE: &str =
    "tune --model m --heads-list L0H0 --data train.jsonl --steps 1 --batch 1 --quiet";

const Q0: &str = "model.layers.0.self_attn.q_proj.weight";
