//! GGUF import against references from transformers (see scripts/make_tokenizer_fixtures.py).

mod common;
use common::default_model;
use pinpoint::model::checkpoint::view_to_f32;
use pinpoint::model::gguf::{import_gguf, GgufFile};
use pinpoint::model::tokenizer::Tokenizer;
use pinpoint::model::{zoo, ModelConfig};
use safetensors::SafeTensors;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf")
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn load_st(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            let data = view_to_f32(&v, path, &n).unwrap();
            (n, (v.shape().to_vec(), data))
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn tiny_gguf_imports_like_transformers() {
    let out = tempfile::tempdir().unwrap();
    import_gguf(&fixtures().join("tiny.gguf"), out.path(), false).unwrap();
    let got = load_st(&out.path().join("model.safetensors"));
    let want = load_st(&fixtures().join("tiny_expected.safetensors"));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (name, (shape, data)) in &want {
        let (gs, gd) = &got[name];
        assert_eq!(gs, shape, "{name}");
        assert_eq!(
            max_abs_diff(gd, data),
            0.0,
            "{name} differs from transformers"
        );
    }

    // config.json: the values transformers derives from the same file.
    let exp = read_json(&fixtures().join("tiny_expected.json"));
    let c = &exp["config"];
    let cfg = ModelConfig::from_file(&out.path().join("config.json")).unwrap();
    assert_eq!(cfg.architecture, "LlamaForCausalLM");
    assert_eq!(cfg.vocab_size as u64, c["vocab_size"].as_u64().unwrap());
    assert_eq!(cfg.hidden_size as u64, c["hidden_size"].as_u64().unwrap());
    assert_eq!(
        cfg.intermediate_size as u64,
        c["intermediate_size"].as_u64().unwrap()
    );
    assert_eq!(
        cfg.num_hidden_layers as u64,
        c["num_hidden_layers"].as_u64().unwrap()
    );
    assert_eq!(
        cfg.num_attention_heads as u64,
        c["num_attention_heads"].as_u64().unwrap()
    );
    assert_eq!(
        cfg.num_key_value_heads as u64,
        c["num_key_value_heads"].as_u64().unwrap()
    );
    assert_eq!(cfg.head_dim as u64, c["head_dim"].as_u64().unwrap());
    assert_eq!(
        cfg.max_position_embeddings as u64,
        c["max_position_embeddings"].as_u64().unwrap()
    );
    assert_eq!(cfg.rms_norm_eps, c["rms_norm_eps"].as_f64().unwrap());
    assert_eq!(
        cfg.rope_theta,
        c["rope_parameters"]["rope_theta"].as_f64().unwrap()
    );
    assert_eq!(
        cfg.tie_word_embeddings,
        c["tie_word_embeddings"].as_bool().unwrap()
    );
    assert_eq!(cfg.bos_token_id.map(u64::from), c["bos_token_id"].as_u64());
    assert_eq!(
        cfg.eos_token_ids,
        vec![c["eos_token_id"].as_u64().unwrap() as u32]
    );

    // Tokenizer files.
    let t = &exp["tokenizer"];
    let tok = Tokenizer::from_dir(out.path()).unwrap();
    for k in ["bos_token", "eos_token", "unk_token", "pad_token"] {
        assert_eq!(tok.special_token(k), t[k].as_str(), "{k}");
    }
    for case in t["texts"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(tok.encode(text, true).unwrap(), ids, "{text:?}");
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            case["decoded"].as_str().unwrap()
        );
    }
    let gen = read_json(&out.path().join("generation_config.json"));
    assert_eq!(gen["eos_token_id"], 2);
    assert!(tok.chat_template().is_some());
}

/// A sentencepiece ("llama") vocabulary, as Llama-2 and Mistral GGUFs carry it (scores, no
/// merges): the tokenizer.json pinpoint writes equals the one transformers writes for the same
/// file, part by part, and encodes the same ids.
#[test]
fn sentencepiece_gguf_tokenizer_equals_transformers() {
    let out = tempfile::tempdir().unwrap();
    import_gguf(&fixtures().join("tiny_sp.gguf"), out.path(), false).unwrap();
    let exp = read_json(&fixtures().join("tiny_sp_expected.json"));
    let want = &exp["tokenizer_json"];
    let got = read_json(&out.path().join("tokenizer.json"));
    for k in [
        "added_tokens",
        "normalizer",
        "pre_tokenizer",
        "post_processor",
        "decoder",
    ] {
        assert_eq!(got[k], want[k], "tokenizer.json {k}");
    }
    let (gm, wm) = (&got["model"], &want["model"]);
    assert_eq!(gm["vocab"], wm["vocab"], "model.vocab");
    assert!(wm["merges"].as_array().unwrap().len() > 100);
    assert_eq!(
        gm["merges"], wm["merges"],
        "model.merges (derived from the scores)"
    );
    for (k, v) in wm.as_object().unwrap() {
        assert_eq!(&gm[k], v, "model.{k}");
    }
    let tok = Tokenizer::from_dir(out.path()).unwrap();
    assert_eq!(tok.vocab_size() as u64, exp["vocab_size"].as_u64().unwrap());
    for k in ["bos_token", "eos_token", "unk_token"] {
        assert_eq!(tok.special_token(k), exp[k].as_str(), "{k}");
    }
    for case in exp["texts"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let plain: Vec<u32> = serde_json::from_value(case["ids_plain"].clone()).unwrap();
        assert_eq!(tok.encode(text, true).unwrap(), ids, "{text:?}");
        assert_eq!(tok.encode(text, false).unwrap(), plain, "{text:?}");
    }
    let cfg = ModelConfig::from_file(&out.path().join("config.json")).unwrap();
    assert_eq!(cfg.vocab_size, tok.vocab_size());
}

#[test]
fn gguf_file_api_reads_raw_tensors_and_metadata() {
    let g = GgufFile::open(&fixtures().join("tiny.gguf")).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.get_str("general.architecture"), Some("llama"));
    assert_eq!(g.get_u64("llama.attention.head_count"), Some(4));
    assert_eq!(
        g.get_str_array("tokenizer.ggml.tokens")
            .unwrap()
            .unwrap()
            .len(),
        266
    );
    // v is not permuted, so the raw tensor equals transformers' v_proj.
    let v = g.tensor_f32("blk.0.attn_v.weight").unwrap();
    let want = load_st(&fixtures().join("tiny_expected.safetensors"));
    let (ws, wd) = &want["model.layers.0.self_attn.v_proj.weight"];
    assert_eq!(&v.shape, ws);
    assert_eq!(max_abs_diff(&v.data, wd), 0.0);
    let err = g.tensor_f32("nope").unwrap_err().to_string();
    assert!(err.contains("nope") && err.contains("tiny.gguf"), "{err}");
}

fn corrupted(name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(fixtures().join("tiny.gguf")).unwrap();
    edit(&mut bytes);
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    (dir, p)
}

/// Byte offset just after the name of tensor `name` in the tensor-info table.
fn tensor_info_pos(bytes: &[u8], name: &str) -> usize {
    let mut pat = (name.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(name.as_bytes());
    let at = bytes
        .windows(pat.len())
        .position(|w| w == pat.as_slice())
        .expect("tensor info");
    at + pat.len()
}

fn import_err(p: &Path) -> String {
    let out = tempfile::tempdir().unwrap();
    let e = import_gguf(p, &out.path().join("m"), false).unwrap_err();
    assert!(!out.path().join("m").join("model.safetensors").exists());
    format!("{e:#}")
}

#[test]
fn truncated_file_is_a_clear_error() {
    let (_d, p) = corrupted("trunc.gguf", |b| b.truncate(b.len() - 100));
    let e = import_err(&p);
    assert!(e.contains("trunc.gguf"), "{e}");
    assert!(
        e.contains("runs past the end") && e.contains("output.weight"),
        "{e}"
    );
    // Cut inside the metadata.
    let (_d, p) = corrupted("short.gguf", |b| b.truncate(300));
    let e = import_err(&p);
    assert!(e.contains("short.gguf") && e.contains("truncated"), "{e}");
    let (_d, p) = corrupted("tiny.gguf", |b| b.truncate(10));
    let e = import_err(&p);
    assert!(e.contains("truncated"), "{e}");
}

#[test]
fn bad_magic_is_a_clear_error() {
    let (_d, p) = corrupted("magic.gguf", |b| b[..4].copy_from_slice(b"GGML"));
    let e = import_err(&p);
    assert!(e.contains("magic.gguf") && e.contains("bad magic"), "{e}");
}

#[test]
fn tensor_offset_past_end_is_a_clear_error() {
    let (_d, p) = corrupted("offset.gguf", |b| {
        let at = tensor_info_pos(b, "blk.0.ffn_up.weight");
        // n_dims (u32) = 2, two u64 dims, type u32, then the u64 offset.
        let off = at + 4 + 16 + 4;
        b[off..off + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    });
    let e = import_err(&p);
    assert!(
        e.contains("offset.gguf")
            && e.contains("blk.0.ffn_up.weight")
            && e.contains("past the end"),
        "{e}"
    );
}

#[test]
fn huge_array_length_is_refused_without_allocating() {
    let (_d, p) = corrupted("huge.gguf", |b| {
        // The token list: key "tokenizer.ggml.tokens", type 9, elem type 8, then the count.
        let at = tensor_info_pos(b, "tokenizer.ggml.tokens");
        b[at + 8..at + 16].copy_from_slice(&u64::MAX.to_le_bytes());
    });
    let e = import_err(&p);
    assert!(
        e.contains("huge.gguf") && e.contains("tokenizer.ggml.tokens"),
        "{e}"
    );
}

#[test]
fn unsupported_quant_type_names_tensor_and_type() {
    let (_d, p) = corrupted("q4k.gguf", |b| {
        let at = tensor_info_pos(b, "blk.0.ffn_up.weight");
        let ty = at + 4 + 16;
        b[ty..ty + 4].copy_from_slice(&12u32.to_le_bytes()); // Q4_K
    });
    let e = import_err(&p);
    assert!(
        e.contains("q4k.gguf") && e.contains("blk.0.ffn_up.weight") && e.contains("Q4_K"),
        "{e}"
    );
}

#[test]
fn smollm2_default_model_matches_transformers() {
    let dir = default_model();
    let exp = read_json(&fixtures().join("smollm2_tensors.json"));
    let st_path = dir.join("model.safetensors");
    let file = std::fs::File::open(&st_path).unwrap();
    let map = unsafe { memmap2::Mmap::map(&file).unwrap() };
    let st = SafeTensors::deserialize(&map).unwrap();
    for (name, e) in exp["tensors"].as_object().unwrap() {
        let v = st.tensor(name).unwrap_or_else(|_| panic!("{name} missing"));
        let data = view_to_f32(&v, &st_path, name).unwrap();
        let shape: Vec<usize> = serde_json::from_value(e["shape"].clone()).unwrap();
        assert_eq!(v.shape(), shape.as_slice(), "{name}");
        let first: Vec<f32> = serde_json::from_value(e["first"].clone()).unwrap();
        assert!(
            max_abs_diff(&data[..first.len()], &first) <= 1e-6,
            "{name}: first values differ"
        );
        for (r, vals) in e["rows"].as_object().unwrap() {
            let r: usize = r.parse().unwrap();
            let vals: Vec<f32> = serde_json::from_value(vals.clone()).unwrap();
            let row = &data[r * shape[1]..r * shape[1] + vals.len()];
            assert!(
                max_abs_diff(row, &vals) <= 1e-6,
                "{name}: row {r} differs (q/k permutation?)"
            );
        }
        let sum: f64 = data.iter().map(|&x| x as f64).sum();
        let want = e["sum"].as_f64().unwrap();
        let scale = e["abs_sum"].as_f64().unwrap().max(1.0);
        assert!(
            (sum - want).abs() <= 1e-6 * scale,
            "{name}: sum {sum} vs {want}"
        );
    }
    assert!(
        st.tensor("lm_head.weight").is_err(),
        "SmolLM2 ties its embeddings"
    );
    let c = &exp["config"];
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    assert_eq!(cfg.vocab_size as u64, c["vocab_size"].as_u64().unwrap());
    assert_eq!(cfg.num_attention_heads, 9);
    assert_eq!(
        cfg.num_key_value_heads as u64,
        c["num_key_value_heads"].as_u64().unwrap()
    );
    assert_eq!(cfg.rms_norm_eps, c["rms_norm_eps"].as_f64().unwrap());
    assert_eq!(
        cfg.rope_theta,
        c["rope_parameters"]["rope_theta"].as_f64().unwrap()
    );
    assert_eq!(
        cfg.max_position_embeddings as u64,
        c["max_position_embeddings"].as_u64().unwrap()
    );
    assert_eq!(
        cfg.tie_word_embeddings,
        c["tie_word_embeddings"].as_bool().unwrap()
    );
    assert_eq!(cfg.head_dim as u64, c["head_dim"].as_u64().unwrap());
    assert_eq!(cfg.bos_token_id.map(u64::from), c["bos_token_id"].as_u64());
    assert_eq!(
        cfg.eos_token_ids,
        vec![c["eos_token_id"].as_u64().unwrap() as u32]
    );
    // A second call reuses the directory.
    assert_eq!(zoo::default_model_dir(false).unwrap(), dir);
}

#[test]
fn import_replaces_target_without_leftovers() {
    let root = tempfile::tempdir().unwrap();
    let target = root.path().join("model");
    import_gguf(&fixtures().join("tiny.gguf"), &target, false).unwrap();
    // Again into the now non-empty directory: files are replaced, extra files kept.
    std::fs::write(target.join("README.md"), "x").unwrap();
    import_gguf(&fixtures().join("tiny.gguf"), &target, false).unwrap();
    assert!(target.join("README.md").exists() && target.join("model.safetensors").exists());
    let names: Vec<String> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["model".to_string()], "temp dirs left behind");
    // A failed import leaves nothing.
    let (_d, bad) = corrupted("bad.gguf", |b| b[..4].copy_from_slice(b"XXXX"));
    let fresh = root.path().join("fresh");
    assert!(import_gguf(&bad, &fresh, false).is_err());
    assert!(!fresh.exists());
}

/// A GGUF with llama.cpp's `rope_freqs.weight` (Llama-3.1's llama3 scaling as per-frequency
/// factors) is refused naming the tensor, not imported with plain RoPE.
#[test]
fn rope_freqs_tensor_is_refused_naming_it() {
    let (_d, p) = corrupted("rope.gguf", |b| {
        let at = tensor_info_pos(b, "token_embd.weight") - "token_embd.weight".len();
        b[at..at + 17].copy_from_slice(b"rope_freqs.weight");
    });
    let e = import_err(&p);
    assert!(
        e.contains("rope_freqs.weight") && e.contains("rope.gguf"),
        "{e}"
    );
}
