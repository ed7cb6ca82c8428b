//! Ambiguous or dangerous model folders: a shard index pointing outside the folder, an
//! index beside model.safetensors (transformers loads the single file; so does pinpoint),
//! tied embeddings with a different stored lm_head, eos token ids that are no token.

use super::{fail, ok, Case, Env, Out, LOGITS};
use pinpoint::model::checkpoint::{load_tensors, save_safetensors, HostTensor, StoreDtype};

/// Split `m/model.safetensors` into two shards with an index, whose weight_map `edit` may
/// change (file names as listed); the single file is removed.
fn sharded(e: &Env, edit: fn(&mut serde_json::Map<String, serde_json::Value>)) {
    let p = e.p("m/model.safetensors");
    let t = load_tensors(std::slice::from_ref(&p)).unwrap();
    let mut names: Vec<&String> = t.tensors.keys().collect();
    names.sort();
    let half = names.len() / 2;
    let mut map = serde_json::Map::new();
    for (i, part) in [&names[..half], &names[half..]].iter().enumerate() {
        let f = format!("model-0000{}-of-00002.safetensors", i + 1);
        let named: Vec<(String, &HostTensor)> = part
            .iter()
            .map(|n| ((*n).clone(), &t.tensors[*n]))
            .collect();
        save_safetensors(&e.p(&format!("m/{f}")), &named, StoreDtype::F32).unwrap();
        for n in part.iter() {
            map.insert((*n).clone(), f.clone().into());
        }
    }
    edit(&mut map);
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    e.write("m/model.safetensors.index.json", index.to_string());
    std::fs::remove_file(p).unwrap();
}

/// Move the second shard to `to` (relative to the scratch root) and list it as `listed`.
fn moved_shard(e: &Env, to: &str) {
    let from = e.p("m/model-00002-of-00002.safetensors");
    let dst = e.p(to);
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
    std::fs::rename(from, dst).unwrap();
}

fn relist(m: &mut serde_json::Map<String, serde_json::Value>, to: &str) {
    for v in m.values_mut() {
        if v.as_str() == Some("model-00002-of-00002.safetensors") {
            *v = to.into();
        }
    }
}

fn shard_cases() -> Vec<Case> {
    vec![
        fail(
            "folder: index lists ../x.safetensors",
            |e: &Env| {
                sharded(e, |m| relist(m, "../x.safetensors"));
                moved_shard(e, "x.safetensors");
            },
            LOGITS,
            &[
                "model.safetensors.index.json",
                "../x.safetensors",
                "outside",
            ],
        ),
        fail(
            "folder: index lists an absolute path",
            |e: &Env| {
                let abs = e.p("elsewhere/s.safetensors").display().to_string();
                sharded(e, |_| {});
                let text = String::from_utf8(e.read("m/model.safetensors.index.json"))
                    .unwrap()
                    .replace("model-00002-of-00002.safetensors", &abs);
                e.write("m/model.safetensors.index.json", text);
                moved_shard(e, "elsewhere/s.safetensors");
            },
            LOGITS,
            &[
                "model.safetensors.index.json",
                "elsewhere/s.safetensors",
                "outside",
            ],
        ),
        fail(
            "folder: index lists sub/../../x",
            |e: &Env| {
                sharded(e, |m| relist(m, "sub/../../y/x.safetensors"));
                std::fs::create_dir_all(e.p("m/sub")).unwrap();
                moved_shard(e, "y/x.safetensors");
            },
            LOGITS,
            &["sub/../../y/x.safetensors", "outside"],
        ),
        fail(
            "folder: index lists a shard in a linked folder outside",
            |e: &Env| {
                sharded(e, |m| relist(m, "ext/x.safetensors"));
                moved_shard(e, "other/x.safetensors");
                std::os::unix::fs::symlink(e.p("other"), e.p("m/ext")).unwrap();
            },
            LOGITS,
            &["ext/x.safetensors", "outside"],
        ),
        ok(
            "folder: a shard that is a symlink (HF cache layout) loads",
            |e: &Env| {
                sharded(e, |_| {});
                moved_shard(e, "blobs/abc");
                std::os::unix::fs::symlink(
                    e.p("blobs/abc"),
                    e.p("m/model-00002-of-00002.safetensors"),
                )
                .unwrap();
            },
            LOGITS,
            |e: &Env, _: &Out| {
                e.p("o.json")
                    .is_file()
                    .then_some(())
                    .ok_or("no o.json".into())
            },
        ),
        ok(
            "folder: model.safetensors beside a stale index loads the single file",
            |e: &Env| {
                e.write(
                    "m/model.safetensors.index.json",
                    r#"{"weight_map": {"x": "gone.safetensors"}}"#,
                )
            },
            LOGITS,
            |e: &Env, _: &Out| {
                e.p("o.json")
                    .is_file()
                    .then_some(())
                    .ok_or("no o.json".into())
            },
        ),
    ]
}

/// Add `lm_head.weight` (the embedding, changed by `edit`) to the tied tiny model.
fn with_lm_head(e: &Env, edit: fn(&mut HostTensor)) {
    let p = e.p("m/model.safetensors");
    let mut t = load_tensors(std::slice::from_ref(&p)).unwrap();
    let mut head = t.tensors["model.embed_tokens.weight"].clone();
    edit(&mut head);
    t.tensors.insert("lm_head.weight".into(), head);
    let named: Vec<(String, &HostTensor)> = t.tensors.iter().map(|(n, x)| (n.clone(), x)).collect();
    save_safetensors(&p, &named, StoreDtype::F32).unwrap();
}

fn config_eos(v: &'static str) -> impl Fn(&Env) {
    move |e: &Env| {
        e.config(|c| {
            c.insert("eos_token_id".into(), serde_json::from_str(v).unwrap());
        })
    }
}

fn generation_eos(v: &'static str) -> impl Fn(&Env) {
    move |e: &Env| {
        e.write(
            "m/generation_config.json",
            format!(r#"{{"eos_token_id": {v}}}"#),
        )
    }
}

fn head_and_eos_cases() -> Vec<Case> {
    vec![
        fail(
            "folder: tied embeddings with a different lm_head",
            |e: &Env| with_lm_head(e, |h| h.data[3] += 0.5),
            LOGITS,
            &["tie_word_embeddings", "lm_head.weight", "differs"],
        ),
        ok(
            "folder: tied embeddings with an identical lm_head",
            |e: &Env| with_lm_head(e, |_| {}),
            LOGITS,
            |e: &Env, _: &Out| {
                e.p("o.json")
                    .is_file()
                    .then_some(())
                    .ok_or("no o.json".into())
            },
        ),
        fail(
            "folder: config eos -1",
            config_eos("-1"),
            LOGITS,
            &["eos_token_id", "-1", "config.json"],
        ),
        fail(
            "folder: config eos past the vocabulary",
            config_eos("128"),
            LOGITS,
            &["eos_token_id", "128", "128 tokens"],
        ),
        fail(
            "folder: config eos 2.5",
            config_eos("2.5"),
            LOGITS,
            &["eos_token_id", "2.5"],
        ),
        fail(
            "folder: config eos list with a bad id",
            config_eos("[2, 99999]"),
            LOGITS,
            &["eos_token_id", "99999"],
        ),
        fail(
            "folder: config eos string",
            config_eos(r#""2""#),
            LOGITS,
            &["eos_token_id", "\"2\""],
        ),
        fail(
            "folder: generation_config eos -3",
            generation_eos("-3"),
            LOGITS,
            &["generation_config.json", "eos_token_id", "-3"],
        ),
        fail(
            "folder: generation_config eos past the tokenizer",
            generation_eos("[2, 500]"),
            LOGITS,
            &["generation_config.json", "500"],
        ),
    ]
}

pub fn cases() -> Vec<Case> {
    super::concat([shard_cases(), head_and_eos_cases()])
}
