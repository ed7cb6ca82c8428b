//! The bad-input corpus: the real `pinpoint` binary on a tiny fixture model (tiny-llama plus
//! a word-level tokenizer written here), one case per bad input. Every failing case must
//! exit non-zero without a panic (never 101, no "panicked at"), name the file, flag or
//! field in its error, and leave the input model's bytes unchanged. Cases that must succeed
//! (symlinks written through, resumes) check what is on disk.

mod common;
use common::fixture;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A scratch folder: `m/` (the tiny model with a tokenizer), `train.jsonl`, `heads.json`,
/// `pairs.jsonl`, `t.gguf`, `q.jsonl`; commands run inside it with relative paths.
struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
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
    fn new() -> Self {
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

    fn p(&self, rel: &str) -> PathBuf {
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

    fn run(&self, args: &[String]) -> Out {
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

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
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
    name: String,
    setup: Setup,
    args: Vec<String>,
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

/// Run every case; report all failures at once.
fn run_cases(cases: Vec<Case>) {
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

fn config_cases() -> Vec<Case> {
    use serde_json::{json, Value};
    // (name, field, value or None to remove, needles)
    let edits: Vec<(&str, &str, Option<Value>, Vec<&str>)> = vec![
        (
            "vocab zero",
            "vocab_size",
            Some(json!(0)),
            vec!["vocab_size"],
        ),
        (
            "vocab string",
            "vocab_size",
            Some(json!("abc")),
            vec!["vocab_size"],
        ),
        (
            "vocab negative",
            "vocab_size",
            Some(json!(-1)),
            vec!["vocab_size"],
        ),
        (
            "vocab null",
            "vocab_size",
            Some(Value::Null),
            vec!["vocab_size"],
        ),
        ("vocab missing", "vocab_size", None, vec!["vocab_size"]),
        (
            "vocab float",
            "vocab_size",
            Some(json!(128.5)),
            vec!["vocab_size"],
        ),
        (
            "vocab mismatch",
            "vocab_size",
            Some(json!(64)),
            vec!["model.embed_tokens.weight", "shape"],
        ),
        (
            "hidden zero",
            "hidden_size",
            Some(json!(0)),
            vec!["hidden_size"],
        ),
        (
            "hidden string",
            "hidden_size",
            Some(json!("64")),
            vec!["hidden_size"],
        ),
        ("hidden missing", "hidden_size", None, vec!["hidden_size"]),
        (
            "hidden mismatch",
            "hidden_size",
            Some(json!(48)),
            vec!["model.safetensors", "shape"],
        ),
        (
            "mlp zero",
            "intermediate_size",
            Some(json!(0)),
            vec!["intermediate_size"],
        ),
        (
            "mlp mismatch",
            "intermediate_size",
            Some(json!(95)),
            vec!["mlp", "shape"],
        ),
        (
            "mlp missing",
            "intermediate_size",
            None,
            vec!["intermediate_size"],
        ),
        (
            "layers zero",
            "num_hidden_layers",
            Some(json!(0)),
            vec!["num_hidden_layers"],
        ),
        (
            "layers too many",
            "num_hidden_layers",
            Some(json!(5)),
            vec!["model.layers.3"],
        ),
        (
            "layers too few",
            "num_hidden_layers",
            Some(json!(2)),
            vec!["model.layers.2", "unexpected"],
        ),
        (
            "layers missing",
            "num_hidden_layers",
            None,
            vec!["num_hidden_layers"],
        ),
        (
            "heads zero",
            "num_attention_heads",
            Some(json!(0)),
            vec!["num_attention_heads"],
        ),
        (
            "heads not multiple",
            "num_attention_heads",
            Some(json!(3)),
            vec!["num_attention_heads"],
        ),
        (
            "heads missing",
            "num_attention_heads",
            None,
            vec!["num_attention_heads"],
        ),
        (
            "kv heads 3",
            "num_key_value_heads",
            Some(json!(3)),
            vec!["num_key_value_heads"],
        ),
        (
            "kv heads zero",
            "num_key_value_heads",
            Some(json!(0)),
            vec!["num_key_value_heads"],
        ),
        (
            "kv heads string",
            "num_key_value_heads",
            Some(json!("4")),
            vec!["num_key_value_heads"],
        ),
        (
            "kv heads 2",
            "num_key_value_heads",
            Some(json!(2)),
            vec!["k_proj", "shape"],
        ),
        (
            "head dim odd",
            "head_dim",
            Some(json!(15)),
            vec!["head_dim"],
        ),
        (
            "head dim zero",
            "head_dim",
            Some(json!(0)),
            vec!["head_dim"],
        ),
        (
            "head dim mismatch",
            "head_dim",
            Some(json!(8)),
            vec!["q_proj", "shape"],
        ),
        (
            "head dim string",
            "head_dim",
            Some(json!("16")),
            vec!["head_dim"],
        ),
        (
            "eps negative",
            "rms_norm_eps",
            Some(json!(-1)),
            vec!["rms_norm_eps"],
        ),
        (
            "eps zero",
            "rms_norm_eps",
            Some(json!(0)),
            vec!["rms_norm_eps"],
        ),
        (
            "eps string",
            "rms_norm_eps",
            Some(json!("tiny")),
            vec!["rms_norm_eps"],
        ),
        (
            "rope theta zero",
            "rope_theta",
            Some(json!(0)),
            vec!["rope_theta"],
        ),
        (
            "rope theta negative",
            "rope_theta",
            Some(json!(-10000.0)),
            vec!["rope_theta"],
        ),
        (
            "rope scaling",
            "rope_scaling",
            Some(json!({"type": "linear", "factor": 2.0})),
            vec!["rope_scaling"],
        ),
        (
            "rope parameters yarn",
            "rope_parameters",
            Some(json!({"rope_type": "yarn", "rope_theta": 1e4})),
            vec!["rope_scaling", "yarn"],
        ),
        (
            "architecture gpt2",
            "architectures",
            Some(json!(["GPT2LMHeadModel"])),
            vec!["GPT2LMHeadModel", "config.json"],
        ),
        (
            "architecture number",
            "architectures",
            Some(json!(7)),
            vec!["config.json"],
        ),
        (
            "max positions zero",
            "max_position_embeddings",
            Some(json!(0)),
            vec!["max_position_embeddings"],
        ),
        (
            "max positions string",
            "max_position_embeddings",
            Some(json!("64")),
            vec!["max_position_embeddings"],
        ),
        (
            "untied",
            "tie_word_embeddings",
            Some(json!(false)),
            vec!["lm_head.weight"],
        ),
        (
            "tie string",
            "tie_word_embeddings",
            Some(json!("yes")),
            vec!["tie_word_embeddings"],
        ),
        (
            "attention bias",
            "attention_bias",
            Some(json!(true)),
            vec!["attention_bias"],
        ),
        ("mlp bias", "mlp_bias", Some(json!(true)), vec!["mlp_bias"]),
    ];
    let mut cases: Vec<Case> = edits
        .into_iter()
        .map(|(name, field, val, needles)| {
            let (field, val) = (field.to_string(), val.clone());
            let mut n = needles.clone();
            n.push("config.json");
            if n.iter()
                .any(|x| x.contains("shape") || x.contains("model.layers"))
            {
                n.retain(|x| *x != "config.json");
            }
            fail(
                &format!("config: {name}"),
                move |e: &Env| {
                    let (field, val) = (field.clone(), val.clone());
                    e.config(move |c| {
                        match val {
                            Some(v) => c.insert(field, v),
                            None => c.remove(&field),
                        };
                    })
                },
                LOGITS,
                &n,
            )
            .after(absent("o.json"))
        })
        .collect();
    let mistral_sw0 = |e: &Env| {
        e.config(|c| {
            c.insert("architectures".into(), json!(["MistralForCausalLM"]));
            c.insert("model_type".into(), json!("mistral"));
            c.insert("sliding_window".into(), json!(0));
        })
    };
    let gpt2_type = |e: &Env| {
        e.config(|c| {
            c.remove("architectures");
            c.insert("model_type".into(), json!("gpt2"));
        })
    };
    cases.extend([
        fail(
            "config: sliding window 0",
            mistral_sw0,
            LOGITS,
            &["sliding_window", "config.json"],
        ),
        fail(
            "config: model_type gpt2",
            gpt2_type,
            LOGITS,
            &["gpt2", "config.json"],
        ),
        fail(
            "config: not JSON",
            |e: &Env| e.write("m/config.json", "{hidden_size: 64"),
            LOGITS,
            &["m/config.json", "not valid JSON"],
        ),
        fail(
            "config: empty",
            |e: &Env| e.write("m/config.json", ""),
            LOGITS,
            &["m/config.json"],
        ),
        fail(
            "config: a list",
            |e: &Env| e.write("m/config.json", "[]"),
            LOGITS,
            &["m/config.json"],
        ),
        fail(
            "config: missing",
            |e: &Env| std::fs::remove_file(e.p("m/config.json")).unwrap(),
            LOGITS,
            &["m/config.json"],
        ),
        fail(
            "config: a folder",
            |e: &Env| {
                std::fs::remove_file(e.p("m/config.json")).unwrap();
                std::fs::create_dir(e.p("m/config.json")).unwrap();
            },
            LOGITS,
            &["m/config.json"],
        ),
        fail(
            "config: invalid utf-8",
            |e: &Env| e.write("m/config.json", [0xff, 0xfe, 0x7b]),
            LOGITS,
            &["m/config.json"],
        ),
        fail(
            "inspect: config eps negative",
            |e: &Env| {
                e.config(|c| {
                    c.insert("rms_norm_eps".into(), json!(-1));
                })
            },
            "inspect --model m",
            &["rms_norm_eps", "config.json"],
        ),
        fail(
            "tune: config heads zero",
            |e: &Env| {
                e.config(|c| {
                    c.insert("num_attention_heads".into(), json!(0));
                })
            },
            &format!("{TUNE} --out o"),
            &["num_attention_heads", "config.json"],
        ),
        ok(
            "logits: a prompt past max_position_embeddings runs, with a warning",
            |e: &Env| {
                e.config(|c| {
                    c.insert("max_position_embeddings".into(), json!(4));
                })
            },
            "logits --model m --prompt yes,no,yes,no,yes --top 2 --top-only --out o.json",
            |_: &Env, o: &Out| {
                if o.stderr.contains("max_position_embeddings (4)") {
                    Ok(())
                } else {
                    Err(format!("no warning: {}", o.stderr))
                }
            },
        ),
    ]);
    cases
}

/// The tiny model's safetensors header (length, JSON) and data.
fn st_parts(bytes: &[u8]) -> (serde_json::Map<String, serde_json::Value>, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let h: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (h.as_object().unwrap().clone(), bytes[8 + n..].to_vec())
}

fn st_join(h: &serde_json::Map<String, serde_json::Value>, data: &[u8]) -> Vec<u8> {
    let hs = serde_json::to_string(h).unwrap();
    let mut out = (hs.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(hs.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Edit the header of `m/model.safetensors`.
fn st_header(
    f: impl Fn(&mut serde_json::Map<String, serde_json::Value>) + 'static,
) -> impl Fn(&Env) {
    move |e: &Env| {
        let (mut h, d) = st_parts(&e.read("m/model.safetensors"));
        f(&mut h);
        e.write("m/model.safetensors", st_join(&h, &d));
    }
}

/// Overwrite the first value of a tensor with `x` (f32 data).
fn st_value(name: &'static str, x: f32) -> impl Fn(&Env) {
    move |e: &Env| {
        let bytes = e.read("m/model.safetensors");
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let (h, _) = st_parts(&bytes);
        let t = &h[name];
        assert_eq!(t["dtype"], "F32");
        let off = t["data_offsets"][0].as_u64().unwrap() as usize + 8 + n;
        let mut b = bytes.clone();
        b[off..off + 4].copy_from_slice(&x.to_le_bytes());
        e.write("m/model.safetensors", b);
    }
}

/// Re-save `m/model.safetensors` without tensor `name`, or with a copy of the final norm
/// under `name` when it is not there (a valid file either way).
fn st_drop(name: &'static str) -> impl Fn(&Env) {
    use pinpoint::model::checkpoint::{load_tensors, save_safetensors, StoreDtype};
    move |e: &Env| {
        let p = e.p("m/model.safetensors");
        let t = load_tensors(std::slice::from_ref(&p)).unwrap();
        let refs: Vec<(String, &pinpoint::model::HostTensor)> = t
            .tensors
            .iter()
            .filter(|(n, _)| n.as_str() != name)
            .map(|(n, t)| (n.clone(), t))
            .collect();
        let norm = t.tensors["model.norm.weight"].clone();
        let mut refs = refs;
        if !t.tensors.contains_key(name) {
            refs.push((name.to_string(), &norm));
        }
        save_safetensors(&p, &refs, StoreDtype::F32).unwrap();
    }
}

fn st_truncate(keep: fn(usize) -> usize) -> impl Fn(&Env) {
    move |e: &Env| {
        let b = e.read("m/model.safetensors");
        e.write("m/model.safetensors", &b[..keep(b.len())]);
    }
}

const Q0: &str = "model.layers.0.self_attn.q_proj.weight";

fn safetensors_cases() -> Vec<Case> {
    use serde_json::json;
    let st = "model.safetensors";
    let mut cases = vec![
        fail("st: empty file", st_truncate(|_| 0), LOGITS, &[st]),
        fail("st: 4 bytes", st_truncate(|_| 4), LOGITS, &[st]),
        fail("st: 8 bytes", st_truncate(|_| 8), LOGITS, &[st]),
        fail("st: cut in header", st_truncate(|_| 20), LOGITS, &[st]),
        fail("st: cut in half", st_truncate(|n| n / 2), LOGITS, &[st]),
        fail("st: last byte cut", st_truncate(|n| n - 1), LOGITS, &[st]),
        fail(
            "st: huge header length",
            |e: &Env| {
                let mut b = e.read("m/model.safetensors");
                b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
                e.write("m/model.safetensors", b);
            },
            LOGITS,
            &[st],
        ),
        fail(
            "st: header length past end",
            |e: &Env| {
                let mut b = e.read("m/model.safetensors");
                let n = b.len() as u64;
                b[..8].copy_from_slice(&(n + 10).to_le_bytes());
                e.write("m/model.safetensors", b);
            },
            LOGITS,
            &[st],
        ),
        fail(
            "st: header garbage",
            |e: &Env| {
                let mut b = e.read("m/model.safetensors");
                for x in &mut b[8..40] {
                    *x = b'#';
                }
                e.write("m/model.safetensors", b);
            },
            LOGITS,
            &[st],
        ),
        fail(
            "st: header a list",
            |e: &Env| {
                let (_, d) = st_parts(&e.read("m/model.safetensors"));
                let mut out = 2u64.to_le_bytes().to_vec();
                out.extend_from_slice(b"[]");
                out.extend_from_slice(&d);
                e.write("m/model.safetensors", out);
            },
            LOGITS,
            &[st],
        ),
        fail(
            "st: offsets past end",
            st_header(|h| {
                h.insert(
                    "model.norm.weight".into(),
                    json!({"dtype": "F32", "shape": [64], "data_offsets": [0, 1 << 30]}),
                );
            }),
            LOGITS,
            &[st],
        ),
        fail(
            "st: offsets reversed",
            st_header(|h| {
                h.insert(
                    "model.norm.weight".into(),
                    json!({"dtype": "F32", "shape": [64], "data_offsets": [256, 0]}),
                );
            }),
            LOGITS,
            &[st],
        ),
        fail(
            "st: offsets negative",
            st_header(|h| {
                h.insert(
                    "model.norm.weight".into(),
                    json!({"dtype": "F32", "shape": [64], "data_offsets": [-4, 252]}),
                );
            }),
            LOGITS,
            &[st],
        ),
        fail(
            "st: shape disagrees with bytes",
            st_header(|h| {
                let t = h.get_mut("model.norm.weight").unwrap();
                t["shape"] = json!([65]);
            }),
            LOGITS,
            &[st],
        ),
        fail(
            "st: dtype I8",
            st_header(|h| {
                let t = h.get_mut("model.norm.weight").unwrap();
                t["dtype"] = json!("I8");
                t["shape"] = json!([256]);
            }),
            LOGITS,
            &[st, "model.norm.weight", "dtype"],
        ),
        fail(
            "st: dtype F64",
            st_header(|h| {
                let t = h.get_mut("model.norm.weight").unwrap();
                t["dtype"] = json!("F64");
                t["shape"] = json!([32]);
            }),
            LOGITS,
            &[st, "model.norm.weight"],
        ),
        fail(
            "st: dtype unknown",
            st_header(|h| {
                h.get_mut("model.norm.weight").unwrap()["dtype"] = json!("Q4_K");
            }),
            LOGITS,
            &[st],
        ),
        fail("st: tensor missing", st_drop(Q0), LOGITS, &[Q0]),
        fail(
            "st: unexpected tensor",
            st_drop("model.layers.0.self_attn.q_norm.weight"),
            LOGITS,
            &["model.layers.0.self_attn.q_norm.weight", st],
        ),
        fail(
            "st: wrong shape",
            st_header(|h| {
                h.get_mut(Q0).unwrap()["shape"] = json!([16, 256]);
            }),
            LOGITS,
            &[Q0, "shape", st],
        ),
        fail(
            "st: NaN weight",
            st_value(Q0, f32::NAN),
            LOGITS,
            &[Q0, "not finite"],
        ),
        fail(
            "st: inf weight",
            st_value("model.norm.weight", f32::INFINITY),
            LOGITS,
            &["model.norm.weight", "not finite"],
        ),
        fail(
            "st: -inf embedding",
            st_value("model.embed_tokens.weight", f32::NEG_INFINITY),
            LOGITS,
            &["model.embed_tokens.weight", "not finite"],
        ),
        fail(
            "st: NaN weight, tune",
            st_value(Q0, f32::NAN),
            &format!("{TUNE} --out o"),
            &[Q0, "not finite"],
        ),
        fail(
            "st: missing file",
            |e: &Env| std::fs::remove_file(e.p("m/model.safetensors")).unwrap(),
            LOGITS,
            &["m", "safetensors"],
        ),
        fail(
            "st: a folder",
            |e: &Env| {
                std::fs::remove_file(e.p("m/model.safetensors")).unwrap();
                std::fs::create_dir(e.p("m/model.safetensors")).unwrap();
            },
            LOGITS,
            &[st],
        ),
        fail(
            "st: random bytes",
            |e: &Env| {
                let b: Vec<u8> = (0..4096u32)
                    .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                    .collect();
                e.write("m/model.safetensors", b);
            },
            LOGITS,
            &[st],
        ),
        fail(
            "st: zeros",
            |e: &Env| e.write("m/model.safetensors", vec![0u8; 4096]),
            LOGITS,
            &[st],
        ),
        fail(
            "st: stale index",
            |e: &Env| {
                e.write(
                    "m/model.safetensors.index.json",
                    r#"{"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}}"#,
                );
            },
            LOGITS,
            &[
                "model.safetensors.index.json",
                "model-00001-of-00002.safetensors",
            ],
        ),
        fail(
            "st: index not JSON",
            |e: &Env| e.write("m/model.safetensors.index.json", "{"),
            LOGITS,
            &["model.safetensors.index.json"],
        ),
        fail(
            "st: index without weight_map",
            |e: &Env| e.write("m/model.safetensors.index.json", "{}"),
            LOGITS,
            &["model.safetensors.index.json", "weight_map"],
        ),
        fail(
            "inspect: truncated",
            st_truncate(|n| n / 3),
            "inspect --model m",
            &[st],
        ),
        fail(
            "inspect: missing tensor",
            st_drop("model.norm.weight"),
            "inspect --model m --json",
            &["model.norm.weight"],
        ),
        fail(
            "model: not a folder",
            nothing,
            "logits --model train.jsonl --prompt yes --out o.json",
            &["train.jsonl", "file"],
        ),
        fail(
            "model: missing",
            nothing,
            "logits --model nowhere --prompt yes --out o.json",
            &["nowhere"],
        ),
    ];
    // Sharded Mistral fixture.
    let shard = |f: fn(&Env)| {
        move |e: &Env| {
            let d = e.p("m");
            std::fs::remove_file(d.join("model.safetensors")).unwrap();
            for n in [
                "config.json",
                "model.safetensors.index.json",
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
            ] {
                std::fs::copy(fixture("tiny-mistral").join(n), d.join(n)).unwrap();
            }
            f(e)
        }
    };
    let s1 = "model-00001-of-00002.safetensors";
    cases.extend([
        fail(
            "shards: second missing",
            shard(|e| std::fs::remove_file(e.p("m/model-00002-of-00002.safetensors")).unwrap()),
            LOGITS,
            &["model-00002-of-00002.safetensors", "index"],
        ),
        fail(
            "shards: first truncated",
            shard(|e| {
                let b = e.read("m/model-00001-of-00002.safetensors");
                e.write("m/model-00001-of-00002.safetensors", &b[..b.len() / 2]);
            }),
            LOGITS,
            &[s1],
        ),
        fail(
            "shards: duplicate tensor",
            shard(|e| {
                std::fs::copy(
                    e.p("m/model-00001-of-00002.safetensors"),
                    e.p("m/model-00002-of-00002.safetensors"),
                )
                .unwrap();
            }),
            LOGITS,
            &["more than one file"],
        ),
    ]);
    cases
}

fn gguf_bytes(e: &Env, f: impl Fn(&mut Vec<u8>)) {
    let mut b = e.read("t.gguf");
    f(&mut b);
    e.write("t.gguf", b);
}

fn gguf_cases() -> Vec<Case> {
    const IMPORT: &str = "import t.gguf out";
    let mut cases: Vec<Case> = [0usize, 3, 10, 23, 24, 40, 200, 1000, 20000, 40000]
        .into_iter()
        .map(|keep| {
            fail(
                &format!("gguf: cut at {keep}"),
                move |e: &Env| gguf_bytes(e, |b| b.truncate(keep)),
                IMPORT,
                &["t.gguf"],
            )
            .after(absent("out/model.safetensors"))
        })
        .collect();
    cases.push(
        fail(
            "gguf: last byte cut",
            |e: &Env| {
                gguf_bytes(e, |b| {
                    b.pop();
                })
            },
            IMPORT,
            &["t.gguf"],
        )
        .after(absent("out/model.safetensors")),
    );
    let patch = |name: &str, at: usize, bytes: Vec<u8>, needles: &[&str]| {
        fail(
            name,
            move |e: &Env| gguf_bytes(e, |b| b[at..at + bytes.len()].copy_from_slice(&bytes)),
            IMPORT,
            needles,
        )
        .after(absent("out/model.safetensors"))
    };
    cases.extend([
        patch("gguf: bad magic", 0, b"GGML".to_vec(), &["t.gguf", "magic"]),
        patch(
            "gguf: version 1",
            4,
            1u32.to_le_bytes().to_vec(),
            &["t.gguf", "version"],
        ),
        patch(
            "gguf: version 9",
            4,
            9u32.to_le_bytes().to_vec(),
            &["t.gguf", "version"],
        ),
        patch(
            "gguf: tensor count huge",
            8,
            u64::MAX.to_le_bytes().to_vec(),
            &["t.gguf"],
        ),
        patch(
            "gguf: kv count huge",
            16,
            u64::MAX.to_le_bytes().to_vec(),
            &["t.gguf"],
        ),
        patch(
            "gguf: kv count zero",
            16,
            0u64.to_le_bytes().to_vec(),
            &["t.gguf"],
        ),
        patch(
            "gguf: tensor count zero",
            8,
            0u64.to_le_bytes().to_vec(),
            &["t.gguf"],
        ),
        patch(
            "gguf: key length huge",
            24,
            u64::MAX.to_le_bytes().to_vec(),
            &["t.gguf"],
        ),
        patch(
            "gguf: value type 99",
            52,
            99u32.to_le_bytes().to_vec(),
            &["t.gguf"],
        ),
        patch(
            "gguf: architecture renamed",
            32,
            b"general.architectur_".to_vec(),
            &["t.gguf"],
        ),
    ]);
    cases.extend([
        fail(
            "gguf: zeros",
            |e: &Env| gguf_bytes(e, |b| b.iter_mut().for_each(|x| *x = 0)),
            IMPORT,
            &["t.gguf"],
        ),
        fail(
            "gguf: a folder",
            |e: &Env| std::fs::create_dir(e.p("dir.gguf")).unwrap(),
            "import dir.gguf out",
            &["dir.gguf", "is a directory"],
        ),
        fail(
            "gguf: missing",
            nothing,
            "import none.gguf out",
            &["none.gguf"],
        ),
        fail(
            "gguf: out not empty",
            |e: &Env| e.write("out/keep.txt", "mine"),
            IMPORT,
            &["out", "not empty"],
        )
        .after(|e: &Env, _: &Out| {
            (e.read("out/keep.txt") == b"mine" && !e.p("out/config.json").exists())
                .then_some(())
                .ok_or("out/ was touched".into())
        }),
        fail(
            "gguf: out is a file",
            |e: &Env| e.write("out", "mine"),
            IMPORT,
            &["out", "not a folder"],
        )
        .after(|e: &Env, _: &Out| {
            (e.read("out") == b"mine")
                .then_some(())
                .ok_or("out was replaced".into())
        }),
        fail(
            "gguf: out is the model",
            nothing,
            "import t.gguf m",
            &["m", "not empty"],
        ),
        ok("gguf: good import", nothing, IMPORT, |e: &Env, _: &Out| {
            e.p("out/model.safetensors")
                .is_file()
                .then_some(())
                .ok_or("no model written".into())
        }),
    ]);
    cases
}

fn data_cases() -> Vec<Case> {
    let bad = |name: &str, text: &'static str, needles: &[&str]| {
        fail(
            &format!("data: {name}"),
            move |e: &Env| e.write("bad.jsonl", text),
            &format!(
                "{} --data bad.jsonl --out o",
                TUNE.replace(" --data train.jsonl", "")
            ),
            needles,
        )
        .after(absent("o/model.safetensors"))
    };
    let good = r#"{"messages": [{"role": "user", "content": "are you sure ?"}, {"role": "assistant", "content": "yes ."}]}"#;
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let mut cases = vec![
        bad("empty file", "", &["bad.jsonl", "empty"]),
        bad("blank lines", "\n\n  \n", &["bad.jsonl", "empty"]),
        bad(
            "not JSON",
            leak(format!("{good}\nnot json\n")),
            &["bad.jsonl:2"],
        ),
        bad("a list", "[]\n", &["bad.jsonl:1"]),
        bad("no messages", "{}\n", &["bad.jsonl:1", "messages"]),
        bad(
            "messages a string",
            r#"{"messages": "hi"}"#,
            &["bad.jsonl:1"],
        ),
        bad(
            "role missing",
            r#"{"messages": [{"content": "hi"}, {"role": "assistant", "content": "yo"}]}"#,
            &["bad.jsonl:1"],
        ),
        bad(
            "content missing",
            r#"{"messages": [{"role": "user"}, {"role": "assistant", "content": "yo"}]}"#,
            &["bad.jsonl:1"],
        ),
        bad(
            "content a number",
            r#"{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "yo"}]}"#,
            &["bad.jsonl:1"],
        ),
        bad(
            "ends with user",
            r#"{"messages": [{"role": "user", "content": "hi"}]}"#,
            &["bad.jsonl:1", "assistant"],
        ),
        bad(
            "only assistant",
            r#"{"messages": [{"role": "assistant", "content": "hi"}]}"#,
            &["bad.jsonl:1", "prompt"],
        ),
        bad(
            "empty messages",
            r#"{"messages": []}"#,
            &["bad.jsonl:1", "no messages"],
        ),
        bad(
            "role null",
            r#"{"messages": [{"role": null, "content": "hi"}, {"role": "assistant", "content": "yo"}]}"#,
            &["bad.jsonl:1"],
        ),
        bad(
            "truncated line",
            r#"{"messages": [{"role": "user", "cont"#,
            &["bad.jsonl:1"],
        ),
        bad(
            "bad third line",
            leak(format!("{good}\n{good}\n{{\"messages\": 3}}\n")),
            &["bad.jsonl:3"],
        ),
        bad(
            "byte order mark",
            leak(format!("\u{feff}{good}\n")),
            &["bad.jsonl:1"],
        ),
        bad("null line", "null\n", &["bad.jsonl:1"]),
        bad("number line", "42\n", &["bad.jsonl:1"]),
        fail(
            "data: invalid utf-8",
            |e: &Env| e.write("bad.jsonl", [0xffu8, 0xfe, b'{', b'\n']),
            &format!(
                "{} --data bad.jsonl --out o",
                TUNE.replace(" --data train.jsonl", "")
            ),
            &["bad.jsonl"],
        ),
        fail(
            "data: a folder",
            |e: &Env| std::fs::create_dir(e.p("bad.jsonl")).unwrap(),
            &format!(
                "{} --data bad.jsonl --out o",
                TUNE.replace(" --data train.jsonl", "")
            ),
            &["bad.jsonl", "directory"],
        ),
        fail(
            "data: missing",
            nothing,
            &format!(
                "{} --data none.jsonl --out o",
                TUNE.replace(" --data train.jsonl", "")
            ),
            &["none.jsonl"],
        ),
        fail(
            "data: prompt over --max-len",
            nothing,
            &format!("{TUNE} --max-len 4 --out o"),
            &["line 1", "prompt"],
        ),
    ];
    // Diagnosis pairs.
    let diag = "diagnose --model m --pairs p.jsonl --out dg";
    let pairs = |name: &str, text: String, args: &str, needles: &[&str]| {
        fail(
            &format!("pairs: {name}"),
            move |e: &Env| e.write("p.jsonl", text.clone()),
            args,
            needles,
        )
        .after(absent("dg/heads.json"))
    };
    cases.extend([
        pairs(
            "identical",
            pair_line("are you sure ?", "are you sure ?") + "\n",
            diag,
            &["p.jsonl:1", "identical"],
        ),
        pairs(
            "identical second",
            format!(
                "{}\n{}\n",
                pair_line("i think that is wrong . are you sure ?", "are you sure ?"),
                pair_line("a", "a")
            ),
            diag,
            &["p.jsonl:2", "identical"],
        ),
        pairs(
            "no counterfactual",
            r#"{"reference": [{"role": "user", "content": "hi"}]}"#.into(),
            diag,
            &["p.jsonl:1"],
        ),
        pairs(
            "empty reference",
            r#"{"reference": [], "counterfactual": [{"role": "user", "content": "hi"}]}"#.into(),
            diag,
            &["p.jsonl:1", "empty"],
        ),
        pairs("not JSON", "{{{\n".into(), diag, &["p.jsonl:1"]),
        pairs("empty file", String::new(), diag, &["p.jsonl", "no pairs"]),
        pairs(
            "unequal lengths, all positions",
            pair_line("i think that is wrong . are you sure ?", "are you sure ?") + "\n",
            &format!("{diag} --positions all"),
            &["equal token length"],
        ),
        fail(
            "pairs: a folder",
            |e: &Env| std::fs::create_dir(e.p("pd")).unwrap(),
            "diagnose --model m --pairs pd --out dg",
            &["pd", "directory"],
        ),
        ok(
            "pairs: a good diagnosis",
            nothing,
            &diag.replace("p.jsonl", "pairs.jsonl"),
            |e: &Env, _: &Out| {
                e.p("dg/heads.json")
                    .is_file()
                    .then_some(())
                    .ok_or("no heads.json".into())
            },
        ),
    ]);
    // Heads files for tune --heads.
    let th = "tune --model m --heads h.json --top-k 2 --data train.jsonl --steps 1 --batch 1 --quiet --out o";
    let heads = |name: &str, text: String, args: &str, needles: &[&str]| {
        fail(
            &format!("heads: {name}"),
            move |e: &Env| e.write("h.json", text.clone()),
            args,
            needles,
        )
        .after(absent("o/model.safetensors"))
    };
    cases.extend([
        heads("not JSON", "{".into(), th, &["h.json"]),
        heads(
            "other model",
            heads_json(&[-1.0, -0.5])
                .replace("\"num_hidden_layers\": 3", "\"num_hidden_layers\": 30"),
            th,
            &["h.json", "another model", "num_hidden_layers 30"],
        ),
        heads(
            "top-k past the list",
            heads_json(&[-1.0]),
            th,
            &["--top-k 2", "1 heads"],
        ),
        heads(
            "all zero scores",
            heads_json(&[0.0, 0.0, 0.0]),
            th,
            &["h.json", "score is 0"],
        ),
        heads(
            "layer out of range",
            heads_json(&[-1.0, -0.5]).replacen("\"layer\": 0", "\"layer\": 7", 1),
            th,
            &["L7H0", "does not exist"],
        ),
        heads(
            "duplicate head",
            heads_json(&[-1.0, -0.5]).replace("\"head\": 1", "\"head\": 0"),
            th,
            &["twice"],
        ),
        heads(
            "no heads field",
            r#"{"model": {"num_hidden_layers": 3, "num_attention_heads": 4}}"#.into(),
            th,
            &["h.json", "heads file"],
        ),
        heads("empty list", heads_json(&[]), th, &["--top-k 2"]),
        heads(
            "top-k 0",
            heads_json(&[-1.0]),
            &th.replace("--top-k 2", "--top-k 0"),
            &["--top-k 0"],
        ),
        heads(
            "no top-k",
            heads_json(&[-1.0]),
            &th.replace(" --top-k 2", ""),
            &["--top-k"],
        ),
        heads(
            "heads and list",
            heads_json(&[-1.0]),
            &format!("{th} --heads-list L0H0"),
            &["--heads"],
        ),
        fail(
            "heads: a folder",
            |e: &Env| std::fs::create_dir(e.p("h.json")).unwrap(),
            th,
            &["h.json", "directory"],
        ),
        fail(
            "heads-list: missing head",
            nothing,
            &TUNE
                .replace("L0H0", "L9H0")
                .replace("--quiet", "--quiet --out o"),
            &["L9H0", "does not exist"],
        ),
        fail(
            "heads-list: garbage",
            nothing,
            &TUNE
                .replace("L0H0", "3.5")
                .replace("--quiet", "--quiet --out o"),
            &["--heads-list", "L3H5"],
        ),
        fail(
            "heads-list: twice",
            nothing,
            &TUNE
                .replace("L0H0", "L0H0,L0H0")
                .replace("--quiet", "--quiet --out o"),
            &["twice"],
        ),
    ]);
    cases
}

fn flag_cases() -> Vec<Case> {
    let tune = |extra: &str, needles: &[&str]| {
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
    };
    let gen = "generate --model m --prompt yes";
    let eval = "eval --model m --mmlu 0 --short 0 --questions q.jsonl --out ev --quiet";
    let pipe = "pipeline --model m --out run --quiet";
    let mut cases = vec![
        tune("--lr NaN", &["--lr NaN"]),
        tune("--lr inf", &["--lr inf"]),
        tune("--lr=-1", &["--lr -1"]),
        tune("--lr 0", &["--lr 0"]),
        tune("--lr-end=-1", &["--lr-end -1"]),
        tune("--lr-end NaN", &["--lr-end NaN"]),
        tune("--warmup 1", &["--warmup 1", "--steps 1"]),
        tune("--warmup 9", &["--warmup 9"]),
        tune("--steps 0", &["--steps 0"]),
        tune("--batch 0", &["--batch 0"]),
        tune("--micro-batch 4", &["--micro-batch 4", "--batch 1"]),
        tune("--max-grad-norm NaN", &["--max-grad-norm NaN"]),
        tune("--max-grad-norm=-1", &["--max-grad-norm -1"]),
        tune("--max-grad-norm inf", &["--max-grad-norm inf"]),
        tune("--power 0", &["--power 0"]),
        tune("--power NaN", &["--power NaN"]),
        tune("--weight-decay=-0.1", &["--weight-decay -0.1"]),
        tune("--weight-decay inf", &["--weight-decay inf"]),
        tune("--keep-checkpoints 0", &["--keep-checkpoints 0"]),
        tune("--lora-rank 0", &["--lora-rank 0"]),
        tune("--lora-alpha NaN", &["--lora-alpha NaN"]),
        tune("--max-len 1", &["--max-len 1"]),
        tune("--mem-cap-gib 0", &["--mem-cap-gib 0"]),
        tune("--mem-cap-gib NaN", &["--mem-cap-gib NaN"]),
        tune("--top-k 0", &["--top-k"]),
        tune("--mode bogus", &["bogus", "--mode"]),
        tune("--lr abc", &["abc", "--lr"]),
        tune("--steps=-1", &["-1", "--steps"]),
        tune("--save-dtype f64", &["f64", "--save-dtype"]),
        tune("--proj x", &["\"x\""]),
        tune("--mode attn --layers a", &["--layers"]),
        tune("--mode spt-lora --lora-proj zz", &["zz"]),
        tune("--mode sft", &["--heads"]),
        fail(
            "flags: generate --temperature NaN",
            nothing,
            &format!("{gen} --temperature NaN"),
            &["--temperature NaN"],
        ),
        fail(
            "flags: generate --temperature -1",
            nothing,
            &format!("{gen} --temperature=-1"),
            &["--temperature -1"],
        ),
        fail(
            "flags: generate --temperature inf",
            nothing,
            &format!("{gen} --temperature inf"),
            &["--temperature inf"],
        ),
        fail(
            "flags: generate --top-p 0",
            nothing,
            &format!("{gen} --top-p 0"),
            &["--top-p 0"],
        ),
        fail(
            "flags: generate --top-p 1.5",
            nothing,
            &format!("{gen} --top-p 1.5"),
            &["--top-p 1.5"],
        ),
        fail(
            "flags: generate --top-p NaN",
            nothing,
            &format!("{gen} --top-p NaN"),
            &["--top-p NaN"],
        ),
        fail(
            "flags: generate --max-new-tokens 0",
            nothing,
            &format!("{gen} --max-new-tokens 0"),
            &["--max-new-tokens 0"],
        ),
        fail(
            "flags: chat --temperature NaN",
            nothing,
            "chat --model m yes --temperature NaN",
            &["--temperature NaN"],
        ),
        fail(
            "flags: chat --top-p -1",
            nothing,
            "chat --model m yes --top-p=-1",
            &["--top-p -1"],
        ),
        fail(
            "flags: eval --max-reply-tokens 0",
            nothing,
            &format!("{eval} --max-reply-tokens 0"),
            &["--max-reply-tokens 0"],
        ),
        fail(
            "flags: eval --max-answer-tokens 0",
            nothing,
            &format!("{eval} --max-answer-tokens 0"),
            &["--max-answer-tokens 0"],
        ),
        fail(
            "flags: eval --batch 0",
            nothing,
            &format!("{eval} --batch 0"),
            &["--batch 0"],
        ),
        fail(
            "flags: eval --questions missing",
            nothing,
            &eval.replace("q.jsonl", "none.jsonl"),
            &["none.jsonl"],
        ),
        fail(
            "flags: eval --judge-model a file",
            nothing,
            &format!("{eval} --judge model --judge-model train.jsonl"),
            &["--judge-model", "train.jsonl"],
        ),
        fail(
            "flags: kl --n 0",
            nothing,
            "kl --base m --tuned m --n 0",
            &["--n 0"],
        ),
        fail(
            "flags: kl --len 1",
            nothing,
            "kl --base m --tuned m --len 1",
            &["--len 1"],
        ),
        fail(
            "flags: kl --batch 0",
            nothing,
            "kl --base m --tuned m --batch 0",
            &["--batch 0"],
        ),
        fail(
            "flags: kl --base missing",
            nothing,
            "kl --base none --tuned m",
            &["--base", "none"],
        ),
        fail(
            "flags: kl --tuned a file",
            nothing,
            "kl --base m --tuned train.jsonl",
            &["--tuned", "train.jsonl"],
        ),
        fail(
            "flags: pipeline --steps 0",
            nothing,
            &format!("{pipe} --steps 0"),
            &["--steps 0"],
        ),
        fail(
            "flags: pipeline --lr NaN",
            nothing,
            &format!("{pipe} --lr NaN"),
            &["--lr NaN"],
        ),
        fail(
            "flags: pipeline --lr-sft -1",
            nothing,
            &format!("{pipe} --lr-sft=-1"),
            &["--lr-sft -1"],
        ),
        fail(
            "flags: pipeline --batch 0",
            nothing,
            &format!("{pipe} --batch 0"),
            &["--batch 0"],
        ),
        fail(
            "flags: pipeline --micro-batch 32",
            nothing,
            &format!("{pipe} --micro-batch 32"),
            &["--micro-batch 32"],
        ),
        fail(
            "flags: pipeline --max-reply-tokens 0",
            nothing,
            &format!("{pipe} --max-reply-tokens 0"),
            &["--max-reply-tokens 0"],
        ),
        fail(
            "flags: pipeline --planted-share 2",
            nothing,
            &format!("{pipe} --planted-share 2"),
            &["--planted-share 2"],
        ),
        fail(
            "flags: pipeline --pairs 0",
            nothing,
            &format!("{pipe} --pairs 0"),
            &["--pairs 0"],
        ),
        fail(
            "flags: pipeline --kl-len 1",
            nothing,
            &format!("{pipe} --kl-len 1"),
            &["--kl-len 1"],
        ),
        fail(
            "flags: pipeline --k 0",
            nothing,
            &format!("{pipe} --k 0"),
            &["--k 0", "at least 1"],
        )
        .after(absent("run")),
        fail(
            "flags: pipeline --k 4,,0",
            nothing,
            &format!("{pipe} --k 4,,0"),
            &["--k 4,,0"],
        )
        .after(absent("run")),
        fail(
            "flags: pipeline --k ,",
            nothing,
            &format!("{pipe} --k ,"),
            &["--k", "at least one head count"],
        )
        .after(absent("run")),
        fail(
            "flags: pipeline --k past the model's heads",
            nothing,
            &format!("{pipe} --k 2,9999"),
            &["--k 9999", "attention heads"],
        )
        .after(absent("run")),
        fail(
            "flags: pipeline --k x",
            nothing,
            &format!("{pipe} --k x"),
            &["--k"],
        ),
        fail(
            "flags: pipeline --baselines dpo",
            nothing,
            &format!("{pipe} --baselines dpo"),
            &["dpo"],
        ),
        fail(
            "flags: pipeline --stop-after tune-spt-k9",
            nothing,
            &format!("{pipe} --stop-after tune-spt-k9"),
            &["--stop-after", "tune-spt-k9", "tune-spt-k8", "make-data"],
        )
        .after(absent("run/stages.json")),
        fail(
            "flags: pipeline --stop-after diagnosis",
            nothing,
            &format!("{pipe} --stop-after diagnosis"),
            &["\"diagnosis\"", "split, diagnose"],
        ),
        fail(
            "flags: diagnose --n 0",
            nothing,
            "diagnose --model m --n 0 --out dg",
            &["--n"],
        ),
        fail(
            "flags: diagnose --top-k 0",
            nothing,
            "diagnose --model m --pairs pairs.jsonl --top-k 0 --out dg",
            &["--top-k 0"],
        ),
        fail(
            "flags: knockout --max-k 0",
            nothing,
            "knockout --model m --pairs pairs.jsonl --heads heads.json --max-k 0 --out ko",
            &["--max-k 0"],
        ),
        fail(
            "flags: attention --top-k 0",
            nothing,
            "attention --model m --pairs pairs.jsonl --heads heads.json --top-k 0 --out at",
            &["--top-k 0"],
        ),
        fail(
            "flags: bench --reps 0",
            nothing,
            "bench forward --model m --reps 0",
            &["--reps 0"],
        ),
        fail(
            "flags: make-data --batch 0",
            nothing,
            "make-data --model m --short 0 --questions q.jsonl --batch 0 --out md",
            &["--batch 0"],
        ),
        fail(
            "flags: make-data --planted-share NaN",
            nothing,
            "make-data --model m --short 0 --questions q.jsonl --planted-share NaN --out md",
            &["--planted-share NaN"],
        ),
        fail(
            "flags: unknown command",
            nothing,
            "tunes --model m",
            &["tunes"],
        ),
    ];
    for (k, v) in [("--temperature", "nan"), ("--top-p", "-inf")] {
        cases.push(fail(
            &format!("flags: generate {k}={v}"),
            nothing,
            &format!("{gen} {k}={v}"),
            &[k],
        ));
    }
    cases
}

fn output_cases() -> Vec<Case> {
    let tune = |name: &str, setup: fn(&Env), out: &str, needles: &[&str]| {
        fail(
            &format!("out: tune {name}"),
            setup,
            &format!("{TUNE} --out {out}"),
            needles,
        )
    };
    let link_to_model = |e: &Env| std::os::unix::fs::symlink("m", e.p("link")).unwrap();
    let mut cases = vec![
        tune("is the model", nothing, "m", &["--out m", "input model"]),
        tune(
            "is the model, trailing slash",
            nothing,
            "./m/",
            &["--out ./m/", "input model"],
        ),
        tune(
            "is the model, dotdot",
            nothing,
            "m/../m",
            &["--out m/../m", "input model"],
        ),
        tune(
            "inside the model",
            nothing,
            "m/tuned",
            &["--out m/tuned", "inside"],
        ),
        tune("contains the model", nothing, ".", &["--out .", "contains"]),
        tune(
            "a link to the model",
            link_to_model,
            "link",
            &["--out link", "input model"],
        ),
        tune(
            "an existing file",
            nothing,
            "train.jsonl",
            &["--out train.jsonl", "not a folder"],
        ),
        tune(
            "below a file",
            nothing,
            "train.jsonl/sub",
            &["train.jsonl/sub"],
        ),
        tune(
            "unwritable",
            nothing,
            "/proc/pinpoint-out",
            &["/proc/pinpoint-out"],
        ),
        tune(
            "a dangling link",
            |e: &Env| std::os::unix::fs::symlink("nowhere/x", e.p("dl")).unwrap(),
            "dl",
            &["--out dl", "link"],
        ),
        fail(
            "out: tune with checkpoints, no --resume",
            |e: &Env| {
                e.write("o/checkpoints/latest", "step-000001");
                std::fs::create_dir_all(e.p("o/checkpoints/step-000001")).unwrap();
            },
            &format!("{TUNE} --out o"),
            &["o", "--resume"],
        ),
        fail(
            "out: logits into the model",
            nothing,
            "logits --model m --prompt yes --out m/l.json",
            &["m/l.json", "inside"],
        )
        .after(absent("m/l.json")),
        fail(
            "out: logits over config.json",
            nothing,
            "logits --model m --prompt yes --out m/config.json",
            &["m/config.json", "inside"],
        ),
        fail(
            "out: logits to a folder",
            |e: &Env| std::fs::create_dir(e.p("d")).unwrap(),
            "logits --model m --prompt yes --out d",
            &["--out d", "is a folder"],
        ),
        fail(
            "out: logits unwritable",
            nothing,
            "logits --model m --prompt yes --out /proc/pinpoint/l.json",
            &["/proc/pinpoint/l.json"],
        ),
        fail(
            "out: logits to a full disk",
            nothing,
            "logits --model m --prompt yes --top-only --out /dev/full",
            &["/dev/full", "No space left"],
        ),
        fail(
            "out: diagnose to a file",
            nothing,
            "diagnose --model m --pairs pairs.jsonl --out train.jsonl",
            &["--out train.jsonl", "not a folder"],
        ),
        fail(
            "out: diagnose into the model",
            nothing,
            "diagnose --model m --pairs pairs.jsonl --out m",
            &["--out m", "input model"],
        ),
        fail(
            "out: diagnose unwritable",
            nothing,
            "diagnose --model m --pairs pairs.jsonl --out /proc/pinpoint-dg",
            &["/proc/pinpoint-dg"],
        ),
        fail(
            "out: eval into the model",
            nothing,
            "eval --model m --mmlu 0 --short 0 --questions q.jsonl --out m/ev --quiet",
            &["--out m/ev", "inside"],
        ),
        fail(
            "out: eval to a file",
            nothing,
            "eval --model m --mmlu 0 --short 0 --questions q.jsonl --out train.jsonl --quiet",
            &["--out train.jsonl"],
        ),
        fail(
            "out: make-data into the model",
            nothing,
            "make-data --model m --short 0 --questions q.jsonl --out m --quiet",
            &["--out m", "input model"],
        ),
        fail(
            "out: attention into the model",
            nothing,
            "attention --model m --pairs pairs.jsonl --heads heads.json --out m/at",
            &["--out m/at"],
        ),
        fail(
            "out: knockout to a file",
            nothing,
            "knockout --model m --pairs pairs.jsonl --heads heads.json --out train.jsonl",
            &["--out train.jsonl"],
        ),
        fail(
            "out: kl into the base",
            nothing,
            "kl --base m --tuned m --out m/kl.json",
            &["m/kl.json", "inside"],
        ),
        fail(
            "out: pipeline into the model",
            nothing,
            "pipeline --model m --out m/run --quiet",
            &["--out m/run", "inside"],
        ),
        fail(
            "out: pipeline to a file",
            nothing,
            "pipeline --model m --out train.jsonl --quiet",
            &["--out train.jsonl"],
        ),
        fail(
            "out: bench to a folder",
            |e: &Env| std::fs::create_dir(e.p("d")).unwrap(),
            "bench forward --model m --out d",
            &["--out d"],
        ),
    ];
    // A second run into a folder that another run holds.
    cases.push(Case {
        name: "out: tune into a locked folder".into(),
        setup: Box::new(|_| {}),
        args: split(&format!("{TUNE} --out o")),
        want: Want::Fail(vec!["--out o".into(), "in use".into()]),
        after: None,
    });
    // Symlinks are written through, never replaced.
    cases.extend([
        ok(
            "out: logits through a symlink",
            |e: &Env| std::os::unix::fs::symlink("real.json", e.p("link.json")).unwrap(),
            "logits --model m --prompt yes --top-only --out link.json",
            |e: &Env, _: &Out| {
                let m = std::fs::symlink_metadata(e.p("link.json")).map_err(|x| x.to_string())?;
                if !m.file_type().is_symlink() {
                    return Err("link.json was replaced".into());
                }
                let v: serde_json::Value =
                    serde_json::from_slice(&e.read("real.json")).map_err(|x| x.to_string())?;
                v.get("prompts")
                    .map(|_| ())
                    .ok_or("real.json lacks prompts".into())
            },
        ),
        ok(
            "out: logits through a dangling symlink",
            |e: &Env| std::os::unix::fs::symlink("sub/new.json", e.p("link.json")).unwrap(),
            "logits --model m --prompt yes --top-only --out link.json",
            |e: &Env, _: &Out| {
                let m = std::fs::symlink_metadata(e.p("link.json")).map_err(|x| x.to_string())?;
                (m.file_type().is_symlink() && e.p("sub/new.json").is_file())
                    .then_some(())
                    .ok_or("not written through".into())
            },
        ),
        ok(
            "out: tune into a symlinked folder",
            |e: &Env| {
                std::fs::create_dir(e.p("real")).unwrap();
                std::os::unix::fs::symlink("real", e.p("lnk")).unwrap();
            },
            &format!("{TUNE} --out lnk"),
            |e: &Env, _: &Out| {
                let m = std::fs::symlink_metadata(e.p("lnk")).map_err(|x| x.to_string())?;
                (m.file_type().is_symlink() && e.p("real/model.safetensors").is_file())
                    .then_some(())
                    .ok_or("not written through".into())
            },
        ),
    ]);
    cases
}

fn training_cases() -> Vec<Case> {
    let base = TUNE.replace("--steps 1", "--steps 4");
    let first = base.clone();
    let prior = move |e: &Env| {
        let o = e.run(&split(&format!("{first} --out r --checkpoint-every 2")));
        assert_eq!(o.code, Some(0), "{}", o.stderr);
    };
    let p2 = prior.clone();
    let p3 = prior.clone();
    let p4 = prior.clone();
    let resume = format!("{base} --out r --checkpoint-every 2 --resume");
    vec![
        fail(
            "train: diverges at step 1",
            nothing,
            &format!("{TUNE} --lr 3e38 --weight-decay 0 --out o"),
            &["step 1", "diverged", Q0, "not finite"],
        )
        .after(|e: &Env, _: &Out| {
            let bad = [
                "o/model.safetensors",
                "o/checkpoints/latest",
                "o/checkpoints/step-000001",
            ]
            .iter()
            .find(|p| e.p(p).exists())
            .copied();
            match bad {
                Some(p) => Err(format!("{p} was written")),
                None => Ok(()),
            }
        }),
        fail(
            "train: NaN loss names the step",
            nothing,
            &format!(
                "{} --lr 1e30 --checkpoint-every 1 --out o",
                TUNE.replace("--steps 1", "--steps 3")
            ),
            &["step 2", "not finite", "step-000001"],
        )
        .after(absent("o/model.safetensors")),
        fail(
            "resume: other --lr",
            prior,
            &format!("{resume} --lr 1e-3"),
            &["--lr", "0.001"],
        ),
        fail(
            "resume: other data",
            move |e: &Env| {
                p2(e);
                let t = String::from_utf8(e.read("train.jsonl"))
                    .unwrap()
                    .replace("Paris", "Lyon");
                e.write("train.jsonl", t);
            },
            &resume,
            &["other data", "--data"],
        ),
        fail(
            "resume: other --steps",
            p3,
            &resume.replace("--steps 4", "--steps 6"),
            &["--steps"],
        ),
        ok("resume: same settings", p4, &resume, |_: &Env, o: &Out| {
            o.stderr
                .contains("resuming at step 4")
                .then_some(())
                .ok_or("did not resume".into())
        }),
    ]
}

#[test]
fn config_json() {
    run_cases(config_cases());
}

#[test]
fn safetensors_files() {
    run_cases(safetensors_cases());
}

#[test]
fn gguf_files() {
    run_cases(gguf_cases());
}

#[test]
fn jsonl_pairs_and_heads() {
    run_cases(data_cases());
}

#[test]
fn numeric_flags() {
    run_cases(flag_cases());
}

#[test]
fn output_locations() {
    // All but the lock case run through the table; the lock case holds the lock here.
    let (lock, rest): (Vec<Case>, Vec<Case>) = output_cases()
        .into_iter()
        .partition(|c| c.name.contains("locked"));
    run_cases(rest);
    for c in lock {
        let env = Env::new();
        let _held = pinpoint::guard::lock_dir(&env.p("o"), "--out").unwrap();
        let o = env.run(&c.args);
        assert_eq!(o.code, Some(1), "{}", o.stderr);
        assert!(
            o.stderr.contains("in use") && o.stderr.contains("--out o"),
            "{}",
            o.stderr
        );
        assert!(!env.p("o/model.safetensors").exists());
    }
}

#[test]
fn training_and_resume() {
    run_cases(training_cases());
}

#[test]
fn closed_stdout_and_full_disk() {
    let env = Env::new();
    let bin = env!("CARGO_BIN_EXE_pinpoint");
    // stdout on /dev/full.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let o = Command::new(bin)
        .args(["inspect", "--model", "m", "--json"])
        .current_dir(&env.root)
        .stdout(full)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("No space left") && !err.contains("panicked"),
        "{err}"
    );
    // stdout a pipe whose reader is gone before anything is written.
    let (r, w) = pipe();
    drop(r);
    let o = Command::new(bin)
        .args(["inspect", "--model", "m"])
        .current_dir(&env.root)
        .stdout(w)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(141), "{err}");
    assert!(
        err.contains("Broken pipe") && !err.contains("panicked"),
        "{err}"
    );
    // The same for a command that writes files first.
    let (r, w) = pipe();
    drop(r);
    let o = Command::new(bin)
        .args([
            "diagnose",
            "--model",
            "m",
            "--pairs",
            "pairs.jsonl",
            "--out",
            "dg",
        ])
        .current_dir(&env.root)
        .stdout(w)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(141), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(env.p("dg/heads.json").is_file());
}

fn pipe() -> (std::fs::File, std::fs::File) {
    use std::os::unix::io::FromRawFd;
    let mut fds = [0i32; 2];
    // SAFETY: pipe fills two fresh descriptors that we then own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

#[test]
fn the_corpus_has_at_least_150_cases() {
    let n = config_cases().len()
        + safetensors_cases().len()
        + gguf_cases().len()
        + data_cases().len()
        + flag_cases().len()
        + output_cases().len()
        + training_cases().len();
    assert!(n >= 150, "only {n} cases");
    eprintln!("bad-input corpus: {n} cases");
}

#[test]
fn pipeline_stages_verify_their_outputs() {
    use pinpoint::pipeline::{Pipeline, PipelineConfig};
    let env = Env::new();
    let cfg = PipelineConfig::cpu_defaults(env.p("m"), "tiny".into());
    let out = env.p("run");
    let write = |_: &Pipeline, d: &Path| {
        std::fs::write(d.join("a.txt"), "hello world")?;
        std::fs::create_dir_all(d.join("sub"))?;
        std::fs::write(d.join("sub/b.bin"), [7u8; 100])?;
        Ok(())
    };
    let run = |expect_ran: bool, why: &str| {
        let mut p = Pipeline::open(cfg.clone(), &out, false).unwrap();
        p.stage("split", write).unwrap();
        assert_eq!(p.ran.len(), usize::from(expect_ran), "{why}");
    };
    run(true, "first run");
    run(false, "outputs intact: skipped");
    std::fs::write(out.join("split/sub/b.bin"), [7u8; 10]).unwrap();
    run(true, "a truncated output re-runs the stage");
    run(false, "rewritten: skipped again");
    std::fs::write(out.join("split/a.txt"), "hello world!").unwrap();
    run(true, "a changed output re-runs the stage");
    std::fs::remove_file(out.join("split/a.txt")).unwrap();
    run(true, "a deleted output re-runs the stage");
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("stages.json")).unwrap()).unwrap();
    assert_eq!(st["done"]["split"]["outputs"]["sub/b.bin"]["bytes"], 100);
    // Unknown stage names are refused, listing the valid ones.
    let e = cfg
        .check_stop_after(Some("tune-spt-k3"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tune-spt-k3") && e.contains("tune-spt-k8, tune-sft"),
        "{e}"
    );
    assert!(cfg.check_stop_after(Some("kl-lora")).is_ok());
    let mut p = Pipeline::open(cfg.clone(), &out, false).unwrap();
    let e = p.run_all(Some("diagnosis")).unwrap_err().to_string();
    assert!(e.contains("diagnosis"), "{e}");
}
