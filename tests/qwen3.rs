//! Qwen3 (`Qwen3ForCausalLM`), the family added by docs/architecture.md's recipe: its
//! per-head q/k norms and explicit head_dim are what make the fixture match (without the
//! norms the logits are HF's no longer, so `tests/parity.rs` and `tests/grad.rs`, which run
//! tiny-qwen3 with the other fixtures, test them); its norms are weights a full fine-tune
//! trains and a head mask leaves alone; the config keys it does not run are refused by name.

mod common;
use common::*;
use pinpoint::backend::cpu::CpuBackend;
use pinpoint::heads::{HeadId, Positions, Taps};
use pinpoint::model::checkpoint::{load_model_dir, save_model_dir};
use pinpoint::model::mask::{HeadProjs, LayerParam, Mask, ParamId};
use pinpoint::model::{ModelConfig, StoreDtype};
use pinpoint::Model;
use serde_json::{json, Value};

const NAME: &str = "tiny-qwen3";

fn raw_config() -> Value {
    let p = fixture(NAME).join("config.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn logits_diff(m: &Model<CpuBackend>) -> f32 {
    let r = read_refs(&fixture(NAME).join("expected.safetensors"));
    let out = m
        .forward(
            &id_rows(&r["input_ids"]),
            &Taps::new().with_logits(Positions::All),
        )
        .unwrap();
    max_abs_diff(&out.logits.data.data, &r["logits"].data)
}

#[test]
fn qwen3_config_has_its_block_and_head_dim() {
    let c = ModelConfig::from_json(raw_config()).unwrap();
    assert_eq!(c.family(), "qwen3");
    assert!(c.qk_norm && !c.qkv_bias);
    assert_eq!((c.head_dim, c.hidden_size / c.num_attention_heads), (12, 8));
    let names: Vec<String> = c
        .layer_params()
        .into_iter()
        .map(|p| ParamId::Layer(1, p).hf_name())
        .collect();
    assert!(names.contains(&"model.layers.1.self_attn.q_norm.weight".to_string()));
    assert!(names.contains(&"model.layers.1.self_attn.k_norm.weight".to_string()));
    assert_eq!(ParamId::Layer(0, LayerParam::KNorm).shape(&c), [12]);
}

#[test]
fn qwen3_without_its_qk_norms_does_not_match() {
    let (cfg, w, _) = load_model_dir(&fixture(NAME)).unwrap();
    let m = Model::from_host(cfg.clone(), &w, CpuBackend).unwrap();
    assert!(logits_diff(&m) < 1e-4, "tiny-qwen3 matches HF");
    let mut bare = w.clone();
    for l in &mut bare.layers {
        assert!(l.qk_norm.is_some());
        l.qk_norm = None;
    }
    let m = Model::from_host(cfg, &bare, CpuBackend).unwrap();
    let d = logits_diff(&m);
    assert!(
        d > 0.05,
        "Qwen3 without q/k norms still matches HF (diff {d})"
    );
}

/// A saved Qwen3 holds its norms under their HF names and loads back to the same logits.
#[test]
fn qwen3_saves_and_loads_its_norms() {
    let (cfg, w, _) = load_model_dir(&fixture(NAME)).unwrap();
    let d = tempfile::tempdir().unwrap();
    save_model_dir(d.path(), &cfg, &w, StoreDtype::F32, None).unwrap();
    let (cfg2, w2, _) = load_model_dir(d.path()).unwrap();
    assert!(cfg2.qk_norm);
    let a = w.layers[2].qk_norm.as_ref().unwrap();
    let b = w2.layers[2].qk_norm.as_ref().unwrap();
    assert_eq!(a[0].data, b[0].data);
    assert_eq!(a[1].data, b[1].data);
    assert_ne!(a[0].data, a[1].data);
}

/// Full fine-tuning trains the norms; a head mask does not (they are shared by all heads).
#[test]
fn qwen3_norms_train_in_full_fine_tuning_only() {
    let c = ModelConfig::from_json(raw_config()).unwrap();
    let all = Mask::all(&c, true);
    for l in 0..c.num_hidden_layers {
        for p in [LayerParam::QNorm, LayerParam::KNorm] {
            assert!(all.trains(ParamId::Layer(l, p)), "layer {l} {p:?}");
        }
    }
    let heads = Mask::heads(&c, &[HeadId::new(1, 2)], HeadProjs::default_for(&c)).unwrap();
    assert!(!heads.trains(ParamId::Layer(1, LayerParam::QNorm)));
}

#[test]
fn qwen3_features_it_does_not_run_are_refused_naming_the_key() {
    for (k, v) in [
        ("use_sliding_window", json!(true)),
        ("attention_bias", json!(true)),
        (
            "layer_types",
            json!(["full_attention", "sliding_attention", "full_attention"]),
        ),
    ] {
        let mut c = raw_config();
        c[k] = v;
        let e = format!("{:#}", ModelConfig::from_json(c).unwrap_err());
        assert!(e.contains(k), "{k}: {e}");
    }
}
