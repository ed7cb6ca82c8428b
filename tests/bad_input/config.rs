//! `config.json`: bad field values, other architectures, and files that are not JSON.

use super::{absent, concat, fail, folder_instead, removed, Case, Env, LOGITS, TUNE};
use serde_json::{json, Value};

/// One field of `m/config.json` set to a value (JSON text) or removed (`None`), and the
/// needles the error must hold; `config.json` is added to them unless the error is about a
/// tensor's shape or a missing layer, which name the weights file instead.
type Edit = (
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static [&'static str],
);

const EDITS: &[Edit] = &[
    ("vocab zero", "vocab_size", Some("0"), &["vocab_size"]),
    (
        "vocab string",
        "vocab_size",
        Some(r#""abc""#),
        &["vocab_size"],
    ),
    ("vocab negative", "vocab_size", Some("-1"), &["vocab_size"]),
    ("vocab null", "vocab_size", Some("null"), &["vocab_size"]),
    ("vocab missing", "vocab_size", None, &["vocab_size"]),
    ("vocab float", "vocab_size", Some("128.5"), &["vocab_size"]),
    (
        "vocab mismatch",
        "vocab_size",
        Some("64"),
        &["model.embed_tokens.weight", "shape"],
    ),
    ("hidden zero", "hidden_size", Some("0"), &["hidden_size"]),
    (
        "hidden string",
        "hidden_size",
        Some(r#""64""#),
        &["hidden_size"],
    ),
    ("hidden missing", "hidden_size", None, &["hidden_size"]),
    (
        "hidden mismatch",
        "hidden_size",
        Some("48"),
        &["model.safetensors", "shape"],
    ),
    (
        "mlp zero",
        "intermediate_size",
        Some("0"),
        &["intermediate_size"],
    ),
    (
        "mlp mismatch",
        "intermediate_size",
        Some("95"),
        &["mlp", "shape"],
    ),
    (
        "mlp missing",
        "intermediate_size",
        None,
        &["intermediate_size"],
    ),
    (
        "layers zero",
        "num_hidden_layers",
        Some("0"),
        &["num_hidden_layers"],
    ),
    (
        "layers too many",
        "num_hidden_layers",
        Some("5"),
        &["model.layers.3"],
    ),
    (
        "layers too few",
        "num_hidden_layers",
        Some("2"),
        &["model.layers.2", "unexpected"],
    ),
    (
        "layers missing",
        "num_hidden_layers",
        None,
        &["num_hidden_layers"],
    ),
    (
        "heads zero",
        "num_attention_heads",
        Some("0"),
        &["num_attention_heads"],
    ),
    (
        "heads not multiple",
        "num_attention_heads",
        Some("3"),
        &["num_attention_heads"],
    ),
    (
        "heads missing",
        "num_attention_heads",
        None,
        &["num_attention_heads"],
    ),
    (
        "kv heads 3",
        "num_key_value_heads",
        Some("3"),
        &["num_key_value_heads"],
    ),
    (
        "kv heads zero",
        "num_key_value_heads",
        Some("0"),
        &["num_key_value_heads"],
    ),
    (
        "kv heads string",
        "num_key_value_heads",
        Some(r#""4""#),
        &["num_key_value_heads"],
    ),
    (
        "kv heads 2",
        "num_key_value_heads",
        Some("2"),
        &["k_proj", "shape"],
    ),
    ("head dim odd", "head_dim", Some("15"), &["head_dim"]),
    ("head dim zero", "head_dim", Some("0"), &["head_dim"]),
    (
        "head dim mismatch",
        "head_dim",
        Some("8"),
        &["q_proj", "shape"],
    ),
    (
        "head dim string",
        "head_dim",
        Some(r#""16""#),
        &["head_dim"],
    ),
    (
        "eps negative",
        "rms_norm_eps",
        Some("-1"),
        &["rms_norm_eps"],
    ),
    ("eps zero", "rms_norm_eps", Some("0"), &["rms_norm_eps"]),
    (
        "eps string",
        "rms_norm_eps",
        Some(r#""tiny""#),
        &["rms_norm_eps"],
    ),
    ("rope theta zero", "rope_theta", Some("0"), &["rope_theta"]),
    (
        "rope theta negative",
        "rope_theta",
        Some("-10000.0"),
        &["rope_theta"],
    ),
    (
        "rope scaling unknown type",
        "rope_scaling",
        Some(r#"{"type": "longrope", "factor": 2.0}"#),
        &["rope_scaling", "longrope"],
    ),
    (
        "rope parameters yarn",
        "rope_parameters",
        Some(r#"{"rope_type": "yarn", "rope_theta": 1e4}"#),
        &["rope_parameters", "yarn", "factor"],
    ),
    (
        "architecture gpt2",
        "architectures",
        Some(r#"["GPT2LMHeadModel"]"#),
        &["GPT2LMHeadModel", "config.json"],
    ),
    (
        "architecture number",
        "architectures",
        Some("7"),
        &["config.json"],
    ),
    (
        "max positions zero",
        "max_position_embeddings",
        Some("0"),
        &["max_position_embeddings"],
    ),
    (
        "max positions string",
        "max_position_embeddings",
        Some(r#""64""#),
        &["max_position_embeddings"],
    ),
    (
        "untied",
        "tie_word_embeddings",
        Some("false"),
        &["lm_head.weight"],
    ),
    (
        "tie string",
        "tie_word_embeddings",
        Some(r#""yes""#),
        &["tie_word_embeddings"],
    ),
    (
        "attention bias",
        "attention_bias",
        Some("true"),
        &["attention_bias"],
    ),
    ("mlp bias", "mlp_bias", Some("true"), &["mlp_bias"]),
];

pub fn cases() -> Vec<Case> {
    concat([
        edit_cases(),
        model_type_cases(),
        broken_file_cases(),
        command_cases(),
    ])
}

fn edit_cases() -> Vec<Case> {
    EDITS
        .iter()
        .map(|&(name, field, val, needles)| {
            let field = field.to_string();
            let val: Option<Value> = val.map(|v| serde_json::from_str(v).unwrap());
            let mut n = needles.to_vec();
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
        .collect()
}

/// Set one field of `m/config.json`.
fn set(field: &'static str, v: Value) -> impl Fn(&Env) {
    move |e: &Env| {
        e.config(|c| {
            c.insert(field.into(), v.clone());
        })
    }
}

fn model_type_cases() -> Vec<Case> {
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
    vec![
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
    ]
}

/// `m/config.json` with these bytes in place of the fixture's.
const CONTENTS: &[(&str, &[u8], &[&str])] = &[
    (
        "config: not JSON",
        b"{hidden_size: 64",
        &["m/config.json", "not valid JSON"],
    ),
    ("config: empty", b"", &["m/config.json"]),
    ("config: a list", b"[]", &["m/config.json"]),
];

fn broken_file_cases() -> Vec<Case> {
    let mut cases: Vec<Case> = CONTENTS
        .iter()
        .map(|&(name, bytes, needles)| {
            fail(
                name,
                move |e: &Env| e.write("m/config.json", bytes),
                LOGITS,
                needles,
            )
        })
        .collect();
    cases.extend([
        fail(
            "config: missing",
            removed("m/config.json"),
            LOGITS,
            &["m/config.json"],
        ),
        fail(
            "config: a folder",
            folder_instead("m/config.json"),
            LOGITS,
            &["m/config.json"],
        ),
        fail(
            "config: invalid utf-8",
            |e: &Env| e.write("m/config.json", [0xff, 0xfe, 0x7b]),
            LOGITS,
            &["m/config.json"],
        ),
    ]);
    cases
}

/// Bad fields met by commands other than `logits`, and one that is only a warning.
fn command_cases() -> Vec<Case> {
    vec![
        fail(
            "inspect: config eps negative",
            set("rms_norm_eps", json!(-1)),
            "inspect --model m",
            &["rms_norm_eps", "config.json"],
        ),
        fail(
            "tune: config heads zero",
            set("num_attention_heads", json!(0)),
            &format!("{TUNE} --out o"),
            &["num_attention_heads", "config.json"],
        ),
        // Refused since issue 24 (it used to run with a warning).
        fail(
            "logits: a prompt past max_position_embeddings is refused",
            set("max_position_embeddings", json!(4)),
            "logits --model m --prompt yes,no,yes,no,yes --top 2 --top-only --out o.json",
            &["--prompt \"yes,no,yes,no,yes\"", "9 tokens", "context of 4"],
        ),
    ]
}
