//! GGUF to a HF directory: the family, the config, the tensors under their HF names (both
//! names from `family.rs`) with the q/k row order undone, and the tokenizer files
//! (`tokenizer.rs`), derived the way transformers' own GGUF loader derives them.

use super::tokenizer::build_tokenizer;
use super::GgufFile;
use crate::model::checkpoint::{save_safetensors, HostTensor, StoreDtype};
use crate::model::family::{Family, LayerParam, Weight, FAMILIES};
use crate::util::write_json;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Undo llama.cpp's rotary row permutation of a q or k weight (row-major `[rows, cols]`,
/// `n_head` heads): HF = `w.reshape(n, rows/n/2, 2, cols).swapaxes(1, 2).reshape(rows, cols)`.
pub fn unpermute_rows(w: &HostTensor, n_head: usize) -> Result<HostTensor> {
    let (rows, cols) = match w.shape.as_slice() {
        [r, c] => (*r, *c),
        [r] => (*r, 1),
        s => bail!("expected a 2-d q/k weight, got shape {s:?}"),
    };
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) {
        bail!("q/k weight has {rows} rows, not a multiple of 2 x {n_head} heads");
    }
    let half = rows / n_head / 2;
    let mut out = vec![0f32; w.data.len()];
    for h in 0..n_head {
        for i in 0..2 {
            for j in 0..half {
                let dst = h * 2 * half + i * half + j;
                let src = h * 2 * half + j * 2 + i;
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&w.data[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(HostTensor::new(w.shape.clone(), out))
}

/// The family of a GGUF's `general.architecture` (as [`Family::gguf_architecture`] names
/// it); transformers treats a llama-architecture file named exactly "mistral" as Mistral.
fn family_of(g: &GgufFile) -> Result<&'static Family> {
    let file = g.path.display();
    let arch = g
        .get_str("general.architecture")
        .with_context(|| format!("{file}: no general.architecture"))?;
    let name = g.get_str("general.name").unwrap_or("");
    let family = if arch == "llama" && name == "mistral" {
        Family::by_model_type("mistral")
    } else {
        FAMILIES.iter().find(|f| f.gguf_architecture == Some(arch))
    };
    match family {
        Some(f) => Ok(f),
        None => {
            let known: Vec<&str> = FAMILIES
                .iter()
                .filter_map(|f| f.gguf_architecture)
                .collect();
            bail!(
                "{file}: general.architecture {arch:?} is not supported (pinpoint imports {})",
                known.join(" and ")
            )
        }
    }
}

/// `config.json` for a model of `family`, with the values transformers derives from the
/// same GGUF.
fn build_config(g: &GgufFile, family: &Family) -> Result<Value> {
    let file = g.path.display();
    let arch = g
        .get_str("general.architecture")
        .with_context(|| format!("{file}: no general.architecture"))?;
    let key = |k: &str| format!("{arch}.{k}");
    let need = |k: &str| {
        g.get_u64(&key(k))
            .with_context(|| format!("{file}: metadata {} is missing", key(k)))
    };
    if let Some(t) = g
        .get_str(&key("rope.scaling.type"))
        .filter(|t| *t != "none")
    {
        bail!(
            "{file}: metadata {} is {t:?}: pinpoint does not import RoPE scaling from GGUF (use the HF checkpoint, whose config.json has rope_scaling)",
            key("rope.scaling.type")
        );
    }
    let hidden = need("embedding_length")?;
    let heads = need("attention.head_count")?;
    let kv_heads = g.get_u64(&key("attention.head_count_kv")).unwrap_or(heads);
    if heads == 0 {
        bail!("{file}: attention.head_count is 0");
    }
    let head_dim = g
        .get_u64(&key("rope.dimension_count"))
        .unwrap_or(hidden / heads);
    let vocab = match g.get_u64(&key("vocab_size")) {
        Some(v) => v,
        None => g
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map(|a| a.len() as u64)
            .with_context(|| {
                format!(
                    "{file}: neither {} nor tokenizer.ggml.tokens",
                    key("vocab_size")
                )
            })?,
    };
    let rope_theta = g.get_f64(&key("rope.freq_base")).unwrap_or(10000.0);
    let eps = g
        .get_f64(&key("attention.layer_norm_rms_epsilon"))
        .unwrap_or(1e-6);
    let mut c = serde_json::Map::new();
    c.insert("architectures".into(), json!([family.architecture]));
    c.insert("model_type".into(), json!(family.model_type));
    c.insert("vocab_size".into(), json!(vocab));
    c.insert("hidden_size".into(), json!(hidden));
    c.insert(
        "intermediate_size".into(),
        json!(need("feed_forward_length")?),
    );
    c.insert("num_hidden_layers".into(), json!(need("block_count")?));
    c.insert("num_attention_heads".into(), json!(heads));
    c.insert("num_key_value_heads".into(), json!(kv_heads));
    c.insert("head_dim".into(), json!(head_dim));
    c.insert("rms_norm_eps".into(), json!(eps));
    c.insert("rope_theta".into(), json!(rope_theta));
    c.insert(
        "rope_parameters".into(),
        json!({"rope_theta": rope_theta, "rope_type": "default"}),
    );
    c.insert(
        "max_position_embeddings".into(),
        json!(g.get_u64(&key("context_length")).unwrap_or(2048)),
    );
    c.insert(
        "tie_word_embeddings".into(),
        json!(g.tensor_info(&Weight::LmHead.gguf_name()).is_none()),
    );
    c.insert("hidden_act".into(), json!("silu"));
    c.insert("attention_bias".into(), json!(false));
    c.insert("mlp_bias".into(), json!(false));
    c.insert("torch_dtype".into(), json!("float32"));
    if family.block.sliding_window {
        // Not stored in GGUF; MistralConfig's default, which transformers falls back to.
        c.insert("sliding_window".into(), json!(4096));
    }
    for (hf, k) in [
        ("bos_token_id", "bos_token_id"),
        ("eos_token_id", "eos_token_id"),
        ("unk_token_id", "unknown_token_id"),
        ("pad_token_id", "padding_token_id"),
    ] {
        if let Some(v) = g.get_u64(&format!("tokenizer.ggml.{k}")) {
            c.insert(hf.into(), json!(v));
        }
    }
    Ok(Value::Object(c))
}

/// The GGUF's tensors under their HF names (F32, q/k rows in HF's order), in file order;
/// tensors a HF checkpoint of `family` has no place for are skipped. `heads` is `(q heads,
/// kv heads)`.
fn hf_tensors(
    g: &GgufFile,
    family: &Family,
    (heads, kv_heads): (usize, usize),
    show_progress: bool,
) -> Result<Vec<(String, HostTensor)>> {
    let file = g.path.display();
    let bar = crate::util::bar(
        g.tensors().len() as u64,
        "importing GGUF {bar:40} {pos}/{len} {msg}",
        show_progress,
    );
    let mut out: Vec<(String, HostTensor)> = Vec::new();
    for t in g.tensors() {
        bar.set_message(t.name.clone());
        bar.inc(1);
        let Some(weight) = Weight::from_gguf_name(&t.name, family.block) else {
            if show_progress {
                bar.println(format!(
                    "skipping GGUF tensor {:?} (no HF Llama counterpart)",
                    t.name
                ));
            }
            continue;
        };
        let mut w = g.tensor_f32(&t.name)?;
        let permuted_heads = match weight {
            Weight::Layer(_, LayerParam::Q) => Some(heads),
            Weight::Layer(_, LayerParam::K) => Some(kv_heads),
            _ => None,
        };
        if let Some(n) = permuted_heads {
            w = unpermute_rows(&w, n).with_context(|| format!("{file}: tensor {:?}", t.name))?;
        }
        out.push((weight.hf_name(), w));
    }
    bar.finish_and_clear();
    if !out.iter().any(|(n, _)| *n == Weight::Embed.hf_name()) {
        bail!("{file}: no {} tensor", Weight::Embed.gguf_name());
    }
    Ok(out)
}

/// Import a GGUF Llama/Mistral model into a HF directory at `out_dir`: `config.json`,
/// `model.safetensors` (F32, exact dequantized values), `tokenizer.json`,
/// `tokenizer_config.json`, `generation_config.json`. The files are built in a temp dir beside
/// `out_dir` and moved into place only when all are written (a missing or empty `out_dir` is
/// replaced by one rename; files in a non-empty one are replaced one by one).
pub fn import_gguf(gguf: &Path, out_dir: &Path, show_progress: bool) -> Result<()> {
    let g = GgufFile::open(gguf)?;
    let file = gguf.display();
    let family = family_of(&g)?;
    let config = build_config(&g, family)?;
    crate::model::config::ModelConfig::from_json(config.clone())
        .with_context(|| format!("{file}: the derived config is not one pinpoint can run"))?;
    if g.tensor_info("rope_freqs.weight").is_some() {
        // llama.cpp stores Llama-3.1's llama3 RoPE scaling as per-frequency factors in this
        // tensor, which has no place in a HF checkpoint (transformers drops it, and runs plain
        // RoPE): refuse rather than import a model with other frequencies.
        bail!(
            "{file}: tensor rope_freqs.weight holds RoPE frequency factors (Llama-3.1's llama3 scaling); \
             pinpoint does not import them from GGUF: use the HF checkpoint, whose config.json has rope_scaling"
        );
    }
    let tok = build_tokenizer(&g)?;
    let heads = config["num_attention_heads"].as_u64().unwrap_or(1) as usize;
    let kv_heads = config["num_key_value_heads"].as_u64().unwrap_or(1) as usize;
    let mut out = hf_tensors(&g, family, (heads, kv_heads), show_progress)?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    // Build everything in a temp dir beside `out_dir`, then move it into place, so a failure
    // never leaves a half-written model.
    let parent = match out_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".pinpoint-import-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a temp dir in {}", parent.display()))?;
    let write_all = |dir: &Path| -> Result<()> {
        let named: Vec<(String, &HostTensor)> = out.iter().map(|(n, t)| (n.clone(), t)).collect();
        save_safetensors(&dir.join("model.safetensors"), &named, StoreDtype::F32)?;
        drop(named);
        drop(out);
        write_json(&dir.join("config.json"), &config)?;
        write_json(&dir.join("tokenizer.json"), &tok.tokenizer_json)?;
        write_json(&dir.join("tokenizer_config.json"), &tok.tokenizer_config)?;
        let mut gen = serde_json::Map::new();
        for k in ["bos_token_id", "eos_token_id", "pad_token_id"] {
            if let Some(v) = config.get(k) {
                gen.insert(k.into(), v.clone());
            }
        }
        write_json(&dir.join("generation_config.json"), &Value::Object(gen))?;
        Ok(())
    };
    write_all(tmp.path())?;
    let empty_or_missing = match std::fs::read_dir(out_dir) {
        Ok(mut it) => it.next().is_none(),
        Err(_) => !out_dir.exists(),
    };
    if empty_or_missing {
        let _ = std::fs::remove_dir(out_dir);
        let kept = tmp.keep();
        std::fs::rename(&kept, out_dir).map_err(|e| {
            let _ = std::fs::remove_dir_all(&kept);
            anyhow::Error::new(e).context(format!(
                "renaming {} to {}",
                kept.display(),
                out_dir.display()
            ))
        })?;
    } else {
        // An existing directory with other files: replace ours file by file (each rename is atomic).
        for entry in std::fs::read_dir(tmp.path())? {
            let entry = entry?;
            let to = out_dir.join(entry.file_name());
            std::fs::rename(entry.path(), &to)
                .with_context(|| format!("moving {} into place", to.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_matches_numpy_formula() {
        // rows = 8, 2 heads, half = 2: rows within a head go [0,2,1,3].
        let w = HostTensor::new(vec![8, 1], (0..8).map(|x| x as f32).collect());
        let u = unpermute_rows(&w, 2).unwrap();
        assert_eq!(u.data, vec![0., 2., 1., 3., 4., 6., 5., 7.]);
    }
}
