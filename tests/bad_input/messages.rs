//! Errors that name the right thing: a shard index whose map does not match its shards,
//! tokenizer.json components of unknown types, token ids past the model's vocabulary, a
//! head listed twice, config fields of the wrong JSON type. Each error names the file, the
//! field or the item.

use super::{fail, Case, Env, LOGITS, TUNE};
use crate::common::fixture;
use serde_json::{json, Value};

const S1: &str = "model-00001-of-00002.safetensors";
const S2: &str = "model-00002-of-00002.safetensors";
const INDEX: &str = "model.safetensors.index.json";

/// The sharded Mistral fixture in place of the tiny Llama, its index's map edited by `f`.
fn sharded(f: fn(&mut serde_json::Map<String, Value>)) -> impl Fn(&Env) {
    move |e: &Env| {
        let d = e.p("m");
        std::fs::remove_file(d.join("model.safetensors")).unwrap();
        for n in ["config.json", INDEX, S1, S2] {
            std::fs::copy(fixture("tiny-mistral").join(n), d.join(n)).unwrap();
        }
        let mut v: Value = serde_json::from_slice(&e.read(&format!("m/{INDEX}"))).unwrap();
        f(v["weight_map"].as_object_mut().unwrap());
        e.write(&format!("m/{INDEX}"), v.to_string());
    }
}

fn index_cases() -> Vec<Case> {
    vec![
        fail(
            "names: an index mapping every tensor to one shard",
            sharded(|m| m.values_mut().for_each(|s| *s = S1.into())),
            LOGITS,
            &[INDEX, S1, S2, "does not list", "does not hold"],
        ),
        fail(
            "names: an index mapping one tensor to the other shard",
            sharded(|m| {
                let (k, _) = m
                    .iter()
                    .find(|(_, s)| s.as_str() == Some(S2))
                    .map(|(k, s)| (k.clone(), s.clone()))
                    .unwrap();
                m.insert(k, S1.into());
            }),
            LOGITS,
            &[INDEX, "1 tensor(s)", S1],
        ),
        fail(
            "names: an index mapping every tensor to the second shard",
            sharded(|m| m.values_mut().for_each(|s| *s = S2.into())),
            LOGITS,
            &[INDEX, S2, S1, "does not list"],
        ),
    ]
}

/// `m/tokenizer.json` edited by `f`.
fn tokenizer(f: fn(&mut Value)) -> impl Fn(&Env) {
    move |e: &Env| {
        let mut v: Value = serde_json::from_slice(&e.read("m/tokenizer.json")).unwrap();
        f(&mut v);
        e.write("m/tokenizer.json", v.to_string());
    }
}

fn tokenizer_cases() -> Vec<Case> {
    let tj = "m/tokenizer.json";
    vec![
        fail(
            "names: an unknown tokenizer model type",
            tokenizer(|v| v["model"]["type"] = "Bogus".into()),
            LOGITS,
            &[
                tj,
                "`model.type` is \"Bogus\"",
                "BPE, WordPiece, WordLevel, Unigram",
            ],
        ),
        fail(
            "names: an unknown pre-tokenizer",
            tokenizer(|v| v["pre_tokenizer"]["type"] = "Whitespaces".into()),
            LOGITS,
            &[
                tj,
                "`pre_tokenizer.type` is \"Whitespaces\"",
                "WhitespaceSplit",
            ],
        ),
        fail(
            "names: an unknown normalizer inside a Sequence",
            tokenizer(|v| {
                v["normalizer"] = json!({"type": "Sequence", "normalizers": [
                    {"type": "Lowercase"}, {"type": "NFKX"}]})
            }),
            LOGITS,
            &[tj, "`normalizer.normalizers[1].type` is \"NFKX\"", "NFKC"],
        ),
        fail(
            "names: a decoder type that is not a string",
            tokenizer(|v| v["decoder"] = json!({"type": 7})),
            LOGITS,
            &[tj, "`decoder.type` is 7", "not a string"],
        ),
        fail(
            "names: a post-processor without a type",
            tokenizer(|v| v["post_processor"] = json!({"single": []})),
            LOGITS,
            &[tj, "`post_processor` has no `type`", "TemplateProcessing"],
        ),
        fail(
            "names: a tokenizer model that is a string",
            tokenizer(|v| v["model"] = "WordLevel".into()),
            LOGITS,
            &[tj, "`model`", "not an object"],
        ),
        fail(
            "names: a token id past the vocabulary",
            tokenizer(|v| v["model"]["vocab"]["zzz"] = 300.into()),
            LOGITS,
            &[tj, "\"zzz\" = 300", "vocab_size 128", "m/config.json"],
        ),
        fail(
            "names: a word's id just past the vocabulary",
            tokenizer(|v| v["model"]["vocab"]["apologies"] = 128.into()),
            &format!("{TUNE} --out o"),
            &[tj, "\"apologies\" = 128", "vocab_size 128"],
        ),
    ]
}

/// (field, JSON value, needles besides the field and config.json).
const FIELDS: &[(&str, &str, &[&str])] = &[
    ("num_hidden_layers", "3.0", &["3.0", "whole number"]),
    ("num_attention_heads", "\"4\"", &["\"4\"", "whole number"]),
    ("head_dim", "16.0", &["whole number"]),
    ("max_position_embeddings", "64.5", &["whole number"]),
    ("intermediate_size", "[96]", &["whole number"]),
    ("rms_norm_eps", "\"1e-5\"", &["must be a number"]),
    ("rope_theta", "true", &["must be a number"]),
    ("tie_word_embeddings", "\"false\"", &["true or false"]),
    ("mlp_bias", "0", &["true or false"]),
    ("bos_token_id", "-1", &["token id"]),
    ("bos_token_id", "4294967296", &["token id"]),
    ("hidden_act", "1", &["must be a string"]),
];

fn config_cases() -> Vec<Case> {
    FIELDS
        .iter()
        .map(|&(field, value, needles)| {
            let mut all = vec![field, "m/config.json"];
            all.extend(needles);
            fail(
                &format!("names: config {field} = {value}"),
                move |e: &Env| {
                    e.config(|c| {
                        c.insert(field.into(), serde_json::from_str(value).unwrap());
                    })
                },
                LOGITS,
                &all,
            )
        })
        .collect()
}

fn head_cases() -> Vec<Case> {
    let base = TUNE.replace("--heads-list L0H0 ", "");
    let mut spaced = fail(
        "names: a head listed twice by hook name",
        |_: &Env| {},
        "",
        &["head L1H2 is listed twice"],
    );
    spaced.args = base
        .split_whitespace()
        .chain([
            "--out",
            "o",
            "--heads-list",
            "L1H2,blocks.1.attn.hook_z[:, :, 2]",
        ])
        .map(String::from)
        .collect();
    vec![
        fail(
            "names: a head listed twice",
            |_: &Env| {},
            &format!("{base} --out o --heads-list L0H1,L1H2,L0H1"),
            &["head L0H1 is listed twice"],
        ),
        spaced,
        fail(
            "names: a heads.json listing a head twice",
            |e: &Env| {
                let h = super::heads_json(&[-3.0, -2.0, -1.0])
                    .replace(r#""layer": 0, "head": 1"#, r#""layer": 0, "head": 0"#);
                e.write("h.json", h);
            },
            &format!("{base} --out o --heads h.json --top-k 3"),
            &["h.json", "L0H0", "twice"],
        ),
    ]
}

pub fn cases() -> Vec<Case> {
    let mut c = index_cases();
    c.extend(tokenizer_cases());
    c.extend(config_cases());
    c.extend(head_cases());
    c
}
