//! RoPE variants (llama3, linear, dynamic, yarn) and Qwen2's biases against the HF fixtures
//! of scripts/make_fixtures.py: the inverse frequencies equal HF's, and the comparison with
//! HF's logits fails when the scaling is wrong (a perturbed factor, plain RoPE, no yarn
//! attention factor, no biases), so the parity tests (`tests/parity.rs`, `tests/grad.rs`)
//! test the variant and not plain RoPE. Config errors name the key.

mod common;
use common::*;
use pinpoint::backend::cpu::CpuBackend;
use pinpoint::heads::{Positions, Taps};
use pinpoint::model::checkpoint::load_model_dir;
use pinpoint::model::rope::{Rope, RopeScaling};
use pinpoint::model::ModelConfig;
use pinpoint::Model;
use serde_json::{json, Value};

const VARIANTS: &[&str] = &["tiny-llama3", "tiny-linear", "tiny-dynamic", "tiny-yarn"];

fn raw_config(name: &str) -> Value {
    let p = fixture(name).join("config.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn expected(name: &str) -> Value {
    let p = fixture(name).join("expected.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// The rope spec object of a config (`rope_scaling` in the older format, else
/// `rope_parameters`).
fn spec_mut(c: &mut Value) -> &mut Value {
    if c.get("rope_scaling").is_some_and(|x| !x.is_null()) {
        &mut c["rope_scaling"]
    } else {
        &mut c["rope_parameters"]
    }
}

/// Max |logits - HF's| of the fixture's weights under config `c`.
fn logits_diff(name: &str, c: Value) -> f32 {
    let (_, w, _) = load_model_dir(&fixture(name)).unwrap();
    let cfg = ModelConfig::from_json(c).unwrap();
    let m = Model::from_host(cfg, &w, CpuBackend).unwrap();
    let r = read_refs(&fixture(name).join("expected.safetensors"));
    let ids = id_rows(&r["input_ids"]);
    let out = m
        .forward(&ids, &Taps::new().with_logits(Positions::All))
        .unwrap();
    max_abs_diff(&out.logits.data.data, &r["logits"].data)
}

#[test]
fn inverse_frequencies_and_attention_factor_equal_hf() {
    for name in VARIANTS {
        let cfg = ModelConfig::from_json(raw_config(name)).unwrap();
        let e = expected(name);
        let want: Vec<f32> = e["rope"]["inv_freq_at_init"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        // At init (no position past the context) every variant has its own table; dynamic's is
        // the plain one.
        let t = cfg.rope.table(0);
        assert_eq!(t.inv_freq.len(), want.len());
        for (i, (a, b)) in t.inv_freq.iter().zip(&want).enumerate() {
            assert!(
                ((a - b) / b).abs() <= 1e-6,
                "{name}: inv_freq[{i}] {a} vs HF {b}"
            );
        }
        let af = e["rope"]["attention_scaling"].as_f64().unwrap() as f32;
        assert!(
            (t.attention_factor - af).abs() <= 1e-6,
            "{name}: attention factor {} vs HF {af}",
            t.attention_factor
        );
        assert_eq!(
            cfg.rope.scaling.name(),
            e["rope"]["variant"]["rope_type"].as_str().unwrap()
        );
    }
}

#[test]
fn the_right_config_matches_and_a_wrong_scaling_factor_does_not() {
    for name in VARIANTS {
        let c = raw_config(name);
        let ok = logits_diff(name, c.clone());
        assert!(ok <= 1e-4, "{name}: the fixture's own config gives {ok}");
        // The factor one and a half times as large.
        let mut wrong = c.clone();
        let f = spec_mut(&mut wrong)["factor"].as_f64().unwrap();
        spec_mut(&mut wrong)["factor"] = json!(f * 1.5);
        let d = logits_diff(name, wrong);
        assert!(
            d > 0.05,
            "{name}: factor {} still matches HF (diff {d})",
            f * 1.5
        );
        // Plain RoPE with the same theta.
        let mut plain = c.clone();
        let theta = ModelConfig::from_json(c.clone()).unwrap().rope.theta;
        if let Some(o) = plain.as_object_mut() {
            o.remove("rope_scaling");
        }
        plain["rope_parameters"] = json!({"rope_type": "default", "rope_theta": theta});
        let d = logits_diff(name, plain);
        assert!(d > 0.05, "{name}: plain RoPE still matches HF (diff {d})");
    }
}

#[test]
fn yarn_without_its_attention_factor_does_not_match() {
    let mut c = raw_config("tiny-yarn");
    c["rope_parameters"]["attention_factor"] = json!(1.0);
    let d = logits_diff("tiny-yarn", c);
    assert!(
        d > 0.05,
        "yarn with attention factor 1 still matches HF (diff {d})"
    );
}

#[test]
fn qwen2_without_its_biases_does_not_match() {
    let name = "tiny-qwen2";
    let (cfg, mut w, _) = load_model_dir(&fixture(name)).unwrap();
    assert!(cfg.qkv_bias && w.layers.iter().all(|l| l.qkv_bias.is_some()));
    for l in &mut w.layers {
        for b in l.qkv_bias.as_mut().unwrap() {
            b.data.iter_mut().for_each(|x| *x = 0.0);
        }
    }
    let m = Model::from_host(cfg, &w, CpuBackend).unwrap();
    let r = read_refs(&fixture(name).join("expected.safetensors"));
    let out = m
        .forward(
            &id_rows(&r["input_ids"]),
            &Taps::new().with_logits(Positions::All),
        )
        .unwrap();
    let d = max_abs_diff(&out.logits.data.data, &r["logits"].data);
    assert!(d > 0.05, "Qwen2 without biases still matches HF (diff {d})");
}

fn err_of(c: Value) -> String {
    format!("{:#}", ModelConfig::from_json(c).unwrap_err())
}

#[test]
fn both_config_keys_and_every_variant_parse() {
    let base = raw_config("tiny-llama");
    let with = |key: &str, spec: Value| {
        let mut c = base.clone();
        c.as_object_mut().unwrap().remove("rope_parameters");
        c[key] = spec;
        ModelConfig::from_json(c).unwrap().rope
    };
    let r = with(
        "rope_scaling",
        json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    );
    assert!(matches!(r.scaling, RopeScaling::Llama3 { .. }));
    let r = with("rope_scaling", json!({"type": "dynamic", "factor": 2.0}));
    assert!(matches!(r.scaling, RopeScaling::Dynamic { .. }));
    let r = with(
        "rope_parameters",
        json!({"rope_type": "yarn", "rope_theta": 5e5, "factor": 4.0,
               "original_max_position_embeddings": 32768}),
    );
    assert_eq!(r.theta, 5e5);
    match r.scaling {
        RopeScaling::Yarn {
            attention_factor,
            beta_fast,
            beta_slow,
            truncate,
            ..
        } => {
            assert!((attention_factor - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);
            assert_eq!((beta_fast, beta_slow, truncate), (32.0, 1.0, true));
        }
        other => panic!("{other:?}"),
    }
    // Default: no key, null, or rope_type default.
    let r = with("rope_scaling", Value::Null);
    assert_eq!(r.scaling, RopeScaling::Default);
    let plain = Rope {
        theta: 10000.0,
        head_dim: 16,
        scaling: RopeScaling::Default,
    };
    assert_eq!(
        plain.table(100).inv_freq,
        pinpoint::backend::rope_inv_freq(16, 10000.0)
    );
}

#[test]
fn unsupported_rope_and_qwen2_features_are_refused_naming_the_key() {
    let base = raw_config("tiny-llama");
    let set = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    let e = err_of(set(
        "rope_scaling",
        json!({"rope_type": "longrope", "short_factor": [1.0]}),
    ));
    assert!(e.contains("rope_scaling") && e.contains("longrope"), "{e}");
    let e = err_of(set("rope_scaling", json!({"rope_type": "linear"})));
    assert!(e.contains("rope_scaling") && e.contains("factor"), "{e}");
    let e = err_of(set(
        "rope_scaling",
        json!({"rope_type": "linear", "factor": -2.0}),
    ));
    assert!(e.contains("factor"), "{e}");
    let e = err_of(set(
        "rope_scaling",
        json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0}),
    ));
    assert!(e.contains("low_freq_factor"), "{e}");
    // tiny-llama's rope_parameters say theta 10000.
    let e = err_of(set("rope_theta", json!(5.0)));
    assert!(
        e.contains("`rope_theta`") && e.contains("rope_parameters.rope_theta"),
        "{e}"
    );
    let e = err_of(set("partial_rotary_factor", json!(0.5)));
    assert!(e.contains("partial_rotary_factor"), "{e}");
    let e = err_of(set("attention_bias", json!(true)));
    assert!(e.contains("attention_bias"), "{e}");
    let e = err_of(set("hidden_act", json!("gelu")));
    assert!(e.contains("hidden_act"), "{e}");
    let q = raw_config("tiny-qwen2");
    let mut c = q.clone();
    c["use_sliding_window"] = json!(true);
    let e = err_of(c);
    assert!(e.contains("use_sliding_window"), "{e}");
    let mut c = q.clone();
    c["layer_types"] = json!(["full_attention", "sliding_attention", "full_attention"]);
    let e = err_of(c);
    assert!(e.contains("layer_types"), "{e}");
}

/// `pinpoint inspect` names the family, the RoPE variant and the chat format.
#[test]
fn inspect_prints_family_rope_and_template() {
    let d = tempfile::tempdir().unwrap();
    for src in [fixture("tiny-qwen2"), fixture("tokenizer").join("qwen25")] {
        for e in std::fs::read_dir(src).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, d.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    let run = |dir: &std::path::Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pinpoint"))
            .args(["inspect", "--json", "--model"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let v = run(d.path());
    assert_eq!(v["family"], "qwen2");
    assert_eq!(v["rope"], "default");
    assert_eq!(v["qkv_bias"], true);
    assert_eq!(v["chat_template"], "qwen");
    assert_eq!(v["end_of_turn"][0], "<|im_end|>");
    let v = run(&fixture("tiny-llama3"));
    assert_eq!(v["family"], "llama");
    assert_eq!(v["rope"], "llama3");
    assert!(v["rope_detail"].as_str().unwrap().contains("factor 8"));
}

/// `--proj ...,bias` asks for the heads' parts of the q/k/v biases: column ranges of the
/// `[1, out]` bias rows, only on a model that has biases.
#[test]
fn bias_slices_are_asked_for_and_only_where_biases_exist() {
    use pinpoint::backend::Region;
    use pinpoint::heads::HeadId;
    use pinpoint::model::mask::{HeadProjs, LayerParam, Mask, ParamId};
    let p = HeadProjs::parse("q,o,bias").unwrap();
    assert!(p.bias && p.q && p.o && !p.k);
    assert!(HeadProjs::parse("bias").is_err());
    assert!(!HeadProjs::parse("q,k,v,o").unwrap().bias);
    let q = ModelConfig::from_json(raw_config("tiny-qwen2")).unwrap();
    let m = Mask::heads(
        &q,
        &[HeadId::new(1, 3)],
        HeadProjs::parse("q,k,bias").unwrap(),
    )
    .unwrap();
    let d = q.head_dim;
    assert!(m
        .slices
        .iter()
        .any(|s| s.param == ParamId::Layer(1, LayerParam::QBias)
            && s.region
                == Region::Cols {
                    start: 3 * d,
                    len: d
                }));
    // Head 3 of 4 with 2 key/value groups: group 1.
    assert!(m
        .slices
        .iter()
        .any(|s| s.param == ParamId::Layer(1, LayerParam::KBias)
            && s.region == Region::Cols { start: d, len: d }));
    assert!(!m
        .slices
        .iter()
        .any(|s| s.param == ParamId::Layer(1, LayerParam::VBias)));
    let l = ModelConfig::from_json(raw_config("tiny-llama")).unwrap();
    let e = Mask::heads(&l, &[HeadId::new(0, 0)], p).unwrap_err();
    assert!(format!("{e}").contains("no q/k/v biases"), "{e}");
}
