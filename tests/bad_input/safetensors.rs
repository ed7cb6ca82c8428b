//! `model.safetensors`: truncated files, broken headers, wrong tensors, non-finite weights,
//! bad shard indexes and shards.

use super::{concat, fail, folder_instead, nothing, removed, Case, Env, LOGITS, Q0, TUNE};
use crate::common::fixture;
use serde_json::json;

const ST: &str = "model.safetensors";

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

pub fn cases() -> Vec<Case> {
    concat([
        truncation_cases(),
        header_cases(),
        value_cases(),
        file_cases(),
        shard_cases(),
    ])
}

fn truncation_cases() -> Vec<Case> {
    vec![
        fail("st: empty file", st_truncate(|_| 0), LOGITS, &[ST]),
        fail("st: 4 bytes", st_truncate(|_| 4), LOGITS, &[ST]),
        fail("st: 8 bytes", st_truncate(|_| 8), LOGITS, &[ST]),
        fail("st: cut in header", st_truncate(|_| 20), LOGITS, &[ST]),
        fail("st: cut in half", st_truncate(|n| n / 2), LOGITS, &[ST]),
        fail("st: last byte cut", st_truncate(|n| n - 1), LOGITS, &[ST]),
        fail(
            "st: huge header length",
            |e: &Env| {
                let mut b = e.read("m/model.safetensors");
                b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
                e.write("m/model.safetensors", b);
            },
            LOGITS,
            &[ST],
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
            &[ST],
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
            &[ST],
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
            &[ST],
        ),
    ]
}

/// `model.norm.weight` (64 f32) stored at these data offsets.
fn norm_offsets(name: &str, offsets: [i64; 2]) -> Case {
    let entry = json!({"dtype": "F32", "shape": [64], "data_offsets": offsets});
    let setup = st_header(move |h| {
        h.insert("model.norm.weight".into(), entry.clone());
    });
    fail(name, setup, LOGITS, &[ST])
}

/// `model.norm.weight` declared as `dtype`, with `len` elements when given.
fn norm_dtype(name: &str, dtype: &'static str, len: Option<u64>, needles: &[&str]) -> Case {
    let setup = st_header(move |h| {
        let t = h.get_mut("model.norm.weight").unwrap();
        t["dtype"] = json!(dtype);
        if let Some(n) = len {
            t["shape"] = json!([n]);
        }
    });
    fail(name, setup, LOGITS, needles)
}

fn header_cases() -> Vec<Case> {
    let norm = "model.norm.weight";
    vec![
        norm_offsets("st: offsets past end", [0, 1 << 30]),
        norm_offsets("st: offsets reversed", [256, 0]),
        norm_offsets("st: offsets negative", [-4, 252]),
        fail(
            "st: shape disagrees with bytes",
            st_header(|h| {
                let t = h.get_mut("model.norm.weight").unwrap();
                t["shape"] = json!([65]);
            }),
            LOGITS,
            &[ST],
        ),
        norm_dtype("st: dtype I8", "I8", Some(256), &[ST, norm, "dtype"]),
        norm_dtype("st: dtype F64", "F64", Some(32), &[ST, norm]),
        norm_dtype("st: dtype unknown", "Q4_K", None, &[ST]),
        fail("st: tensor missing", st_drop(Q0), LOGITS, &[Q0]),
        fail(
            "st: unexpected tensor",
            st_drop("model.layers.0.self_attn.q_norm.weight"),
            LOGITS,
            &["model.layers.0.self_attn.q_norm.weight", ST],
        ),
        fail(
            "st: wrong shape",
            st_header(|h| {
                h.get_mut(Q0).unwrap()["shape"] = json!([16, 256]);
            }),
            LOGITS,
            &[Q0, "shape", ST],
        ),
    ]
}

/// The first value of `tensor` set to `x`: the error names the tensor.
fn not_finite(name: &str, tensor: &'static str, x: f32, args: &str) -> Case {
    fail(name, st_value(tensor, x), args, &[tensor, "not finite"])
}

fn value_cases() -> Vec<Case> {
    let (norm, embed) = ("model.norm.weight", "model.embed_tokens.weight");
    vec![
        not_finite("st: NaN weight", Q0, f32::NAN, LOGITS),
        not_finite("st: inf weight", norm, f32::INFINITY, LOGITS),
        not_finite("st: -inf embedding", embed, f32::NEG_INFINITY, LOGITS),
        not_finite(
            "st: NaN weight, tune",
            Q0,
            f32::NAN,
            &format!("{TUNE} --out o"),
        ),
    ]
}

/// `m/model.safetensors.index.json` with this text (the weights in a shard of another name).
const INDEXES: &[(&str, &str, &[&str])] = &[
    (
        "st: stale index",
        r#"{"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}}"#,
        &[
            "model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
        ],
    ),
    ("st: index not JSON", "{", &["model.safetensors.index.json"]),
    (
        "st: index without weight_map",
        "{}",
        &["model.safetensors.index.json", "weight_map"],
    ),
];

fn file_cases() -> Vec<Case> {
    let mut cases = vec![
        fail(
            "st: missing file",
            removed("m/model.safetensors"),
            LOGITS,
            &["m", "safetensors"],
        ),
        fail(
            "st: a folder",
            folder_instead("m/model.safetensors"),
            LOGITS,
            &[ST],
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
            &[ST],
        ),
        fail(
            "st: zeros",
            |e: &Env| e.write("m/model.safetensors", vec![0u8; 4096]),
            LOGITS,
            &[ST],
        ),
    ];
    cases.extend(INDEXES.iter().map(|&(name, text, needles)| {
        fail(
            name,
            // The weights moved to a shard: an index beside model.safetensors is not read
            // (transformers loads the single file; `bad_input/folders.rs`).
            move |e: &Env| {
                std::fs::rename(
                    e.p("m/model.safetensors"),
                    e.p("m/model-00001-of-00001.safetensors"),
                )
                .unwrap();
                e.write("m/model.safetensors.index.json", text)
            },
            LOGITS,
            needles,
        )
    }));
    cases.extend([
        fail(
            "inspect: truncated",
            st_truncate(|n| n / 3),
            "inspect --model m",
            &[ST],
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
    ]);
    cases
}

/// The sharded Mistral fixture in place of the tiny Llama, then `f`.
fn shard(f: fn(&Env)) -> impl Fn(&Env) {
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
}

fn shard_cases() -> Vec<Case> {
    let s1 = "model-00001-of-00002.safetensors";
    vec![
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
    ]
}
