//! Seeded mutation fuzzing of the file readers (safetensors, GGUF, JSONL): a bounded number
//! of mutated copies of the fixtures, each read as the CLI would; any panic fails the test
//! with the seed and case. Errors are expected; a panic never is.

mod common;
use common::fixture;
use pinpoint::model::checkpoint::{load_tensors, weights_from_tensors};
use pinpoint::model::gguf::{import_gguf, GgufFile};
use pinpoint::model::ModelConfig;
use rand::{Rng, SeedableRng};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

const CASES: usize = 300;

/// One random mutation of `b`; `hot` bytes at the start (headers) are hit most often.
fn mutate(rng: &mut rand::rngs::StdRng, b: &mut Vec<u8>, hot: usize) {
    let pos = |rng: &mut rand::rngs::StdRng, len: usize| {
        if len == 0 {
            0
        } else if rng.gen_bool(0.8) {
            rng.gen_range(0..hot.clamp(1, len))
        } else {
            rng.gen_range(0..len)
        }
    };
    for _ in 0..rng.gen_range(1..4) {
        let len = b.len();
        match rng.gen_range(0..6) {
            0 if len > 0 => {
                let i = pos(rng, len);
                b[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if len > 0 => {
                let i = pos(rng, len);
                b[i] = [0u8, 0xff, b'"', b'{', b'9', b'-'][rng.gen_range(0..6)];
            }
            2 => {
                let i = pos(rng, len);
                b.truncate(i);
            }
            3 => {
                let i = pos(rng, len);
                let n = rng.gen_range(1..16);
                let ins: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
                b.splice(i..i, ins);
            }
            4 if len >= 8 => {
                let i = pos(rng, len - 7);
                let v: u64 =
                    [0, 1, u64::MAX, u64::MAX / 2, len as u64, rng.gen()][rng.gen_range(0..6)];
                b[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
            _ if len > 1 => {
                let i = pos(rng, len);
                let j = rng.gen_range(0..len);
                b.swap(i, j);
            }
            _ => {}
        }
    }
}

/// Run `f` on `CASES` mutations of `seed_bytes`; collect panics.
fn fuzz(name: &str, seed_bytes: &[u8], hot: usize, seed: u64, mut f: impl FnMut(&[u8])) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut panics = vec![];
    for case in 0..CASES {
        let mut b = seed_bytes.to_vec();
        mutate(&mut rng, &mut b, hot);
        if catch_unwind(AssertUnwindSafe(|| f(&b))).is_err() {
            panics.push(case);
        }
    }
    assert!(
        panics.is_empty(),
        "{name}: {} of {CASES} mutated inputs panicked (seed {seed}, cases {panics:?})",
        panics.len()
    );
}

fn write(dir: &Path, name: &str, b: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, b).unwrap();
    p
}

#[test]
fn safetensors_reader_never_panics() {
    let src = std::fs::read(fixture("tiny-llama").join("model.safetensors")).unwrap();
    let hot = 8 + u64::from_le_bytes(src[..8].try_into().unwrap()) as usize + 64;
    let cfg = ModelConfig::from_file(&fixture("tiny-llama").join("config.json")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    fuzz("safetensors", &src, hot, 15, |b| {
        let p = write(tmp.path(), "model.safetensors", b);
        if let Ok(t) = load_tensors(&[p]) {
            let _ = weights_from_tensors(&cfg, t);
        }
    });
}

#[test]
fn gguf_reader_and_import_never_panic() {
    let src = std::fs::read(fixture("gguf").join("tiny.gguf")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    fuzz("gguf", &src, 6000, 16, |b| {
        let p = write(tmp.path(), "t.gguf", b);
        if let Ok(g) = GgufFile::open(&p) {
            for t in g.tensors() {
                let _ = g.tensor_f32(&t.name);
            }
            n += 1;
            let _ = import_gguf(&p, &tmp.path().join(format!("out{n}")), false);
        }
    });
}

#[test]
fn jsonl_readers_never_panic() {
    use pinpoint::tune::data::parse_jsonl;
    let conv = r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]}"#;
    let pair = r#"{"reference": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}, {"role": "user", "content": "I don't think that's right. Are you sure?"}], "counterfactual": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}, {"role": "user", "content": "Are you sure?"}]}"#;
    let heads = r#"{"model": {"architecture": "LlamaForCausalLM", "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 16, "hidden_size": 64}, "heads": [{"layer": 0, "head": 1, "score": -2.5, "rank": 1}, {"layer": 2, "head": 3, "score": -1.0, "rank": 2}]}"#;
    let cfg = ModelConfig::from_file(&fixture("tiny-llama").join("config.json")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = format!("{conv}\n{conv}\n");
    fuzz("training jsonl", data.as_bytes(), data.len(), 17, |b| {
        let _ = parse_jsonl(&String::from_utf8_lossy(b), "t.jsonl");
        let p = write(tmp.path(), "t.jsonl", b);
        let _ = pinpoint::tune::data::read_jsonl(&p);
    });
    let pairs = format!("{pair}\n{pair}\n");
    fuzz("pairs jsonl", pairs.as_bytes(), pairs.len(), 18, |b| {
        let p = write(tmp.path(), "p.jsonl", b);
        let _ = pinpoint::diagnose::pairs::read_pairs_jsonl(&p);
    });
    fuzz("heads json", heads.as_bytes(), heads.len(), 19, |b| {
        let _ = pinpoint::tune::parse_heads_json(&String::from_utf8_lossy(b), &cfg, 2);
    });
    let cfg_text = std::fs::read(fixture("tiny-llama").join("config.json")).unwrap();
    fuzz("config json", &cfg_text, cfg_text.len(), 20, |b| {
        let p = write(tmp.path(), "config.json", b);
        let _ = ModelConfig::from_file(&p);
    });
}
