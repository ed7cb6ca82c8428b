//! Bad checkpoints give clear errors that name the file and tensor, never a panic.

mod common;
use common::fixture;
use pinpoint::model::checkpoint::{load_model_dir, save_safetensors, HostTensor, StoreDtype};
use pinpoint::Model;
use std::path::{Path, PathBuf};

/// A copy of the tiny Llama fixture in a temp dir.
fn copy_tiny() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("model");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("tiny-llama").join(f), dst.join(f)).unwrap();
    }
    (tmp, dst)
}

fn load_err(dir: &Path) -> String {
    match Model::load_cpu(dir) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn truncated_safetensors_names_the_file() {
    let (_t, dir) = copy_tiny();
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.safetensors"), "{e}");
    // A file cut inside the header, too.
    std::fs::write(&p, &bytes[..20]).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn header_offsets_past_the_end_are_refused() {
    let (_t, dir) = copy_tiny();
    let header = r#"{"model.norm.weight":{"dtype":"F32","shape":[64],"data_offsets":[0,4096]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0u8; 256]);
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn wrong_shape_names_the_tensor_and_file() {
    let (_t, dir) = copy_tiny();
    let (_, w, _) = load_model_dir(&fixture("tiny-llama")).unwrap();
    let mut named: Vec<(String, HostTensor)> =
        w.named().into_iter().map(|(n, t)| (n, t.clone())).collect();
    let bad = "model.layers.1.self_attn.q_proj.weight";
    for (n, t) in named.iter_mut() {
        if n == bad {
            *t = HostTensor::zeros(vec![t.shape[0] - 16, t.shape[1]]);
        }
    }
    let refs: Vec<(String, &HostTensor)> = named.iter().map(|(n, t)| (n.clone(), t)).collect();
    save_safetensors(&dir.join("model.safetensors"), &refs, StoreDtype::F32).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains(bad) && e.contains("model.safetensors") && e.contains("shape"),
        "{e}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let (_t, dir) = copy_tiny();
    let (_, w, _) = load_model_dir(&fixture("tiny-llama")).unwrap();
    let gone = "model.layers.2.mlp.down_proj.weight";
    let refs: Vec<(String, &HostTensor)> =
        w.named().into_iter().filter(|(n, _)| n != gone).collect();
    save_safetensors(&dir.join("model.safetensors"), &refs, StoreDtype::BF16).unwrap();
    let e = load_err(&dir);
    assert!(e.contains(gone), "{e}");
}

#[test]
fn unsupported_architecture_is_named() {
    let (_t, dir) = copy_tiny();
    let p = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    cfg["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
    cfg["model_type"] = "gpt2".into();
    std::fs::write(&p, cfg.to_string()).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("GPT2LMHeadModel") && e.contains("config.json"),
        "{e}"
    );
}

#[test]
fn missing_directory_and_config_are_clear() {
    let e = load_err(Path::new("/nonexistent/model/dir"));
    assert!(e.contains("/nonexistent/model/dir"), "{e}");
    let (_t, dir) = copy_tiny();
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn out_of_vocabulary_tokens_and_empty_batches_are_errors() {
    let m = Model::load_cpu(&fixture("tiny-llama")).unwrap();
    let taps = pinpoint::Taps::new();
    let e = m
        .forward(&[vec![1, 2, 100_000]], &taps)
        .unwrap_err()
        .to_string();
    assert!(e.contains("100000") && e.contains("vocabulary"), "{e}");
    assert!(m.forward(&[], &taps).is_err());
    assert!(m.forward(&[vec![]], &taps).is_err());
}
