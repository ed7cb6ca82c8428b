//! Saving checkpoints: safetensors files (atomic) and whole HF model folders.

use super::*;

fn encode(data: &[f32], dtype: StoreDtype) -> Vec<u8> {
    match dtype {
        StoreDtype::F32 => bytemuck::cast_slice(data).to_vec(),
        StoreDtype::BF16 => data
            .par_iter()
            .flat_map_iter(|x| bf16::from_f32(*x).to_le_bytes())
            .collect(),
        StoreDtype::F16 => data
            .par_iter()
            .flat_map_iter(|x| f16::from_f32(*x).to_le_bytes())
            .collect(),
    }
}

/// Write named f32 tensors as one safetensors file in `dtype`, atomically.
pub fn save_safetensors(
    path: &Path,
    tensors: &[(String, &HostTensor)],
    dtype: StoreDtype,
) -> Result<()> {
    save_safetensors_with(path, tensors, &|_| dtype, &[])
}

/// [`save_safetensors`] with each tensor in the dtype `dtype_of(name)` gives, and `extra`
/// entries added to the header's `__metadata__`. A value that the dtype cannot hold (it
/// would become inf) is an error naming the tensor, the value and the dtype.
pub fn save_safetensors_with(
    path: &Path,
    tensors: &[(String, &HostTensor)],
    dtype_of: &dyn Fn(&str) -> StoreDtype,
    extra: &[(&str, String)],
) -> Result<()> {
    for (n, t) in tensors {
        fits_dtype(n, &t.data, dtype_of(n))?;
    }
    let encoded: Vec<(String, Vec<usize>, StoreDtype, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            let d = dtype_of(n);
            (n.clone(), t.shape.clone(), d, encode(&t.data, d))
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = encoded
        .iter()
        .map(|(n, s, d, b)| Ok((n.clone(), TensorView::new(d.safetensors(), s.clone(), b)?)))
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    for (k, v) in extra {
        meta.insert(k.to_string(), v.clone());
    }
    atomic_write_with(path, |f| {
        let bytes = safetensors::serialize(views, Some(meta))?;
        use std::io::Write;
        f.write_all(&bytes)?;
        Ok(())
    })
}

/// Files copied beside the weights when a model is saved.
pub const SIDE_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
];

/// Save a model as a HF directory loadable by transformers: config.json, safetensors
/// (sharded above `shard_bytes`), and the tokenizer files copied from `side_from`.
/// Each file is written atomically.
pub fn save_model_dir(
    dir: &Path,
    cfg: &ModelConfig,
    w: &ModelWeights<HostTensor>,
    dtype: StoreDtype,
    side_from: Option<&Path>,
) -> Result<()> {
    save_model_dir_as(dir, cfg, w, &|_| dtype, dtype, side_from)
}

/// [`save_model_dir`] with each tensor in the dtype `dtype_of(name)` gives (a mixed
/// f16/f32 model saved as it was loaded); `torch_dtype` is what config.json states.
pub fn save_model_dir_as(
    dir: &Path,
    cfg: &ModelConfig,
    w: &ModelWeights<HostTensor>,
    dtype_of: &dyn Fn(&str) -> StoreDtype,
    torch_dtype: StoreDtype,
    side_from: Option<&Path>,
) -> Result<()> {
    const SHARD_BYTES: usize = 4 << 30;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Biases are held as [1, out] rows; HF stores them as [out].
    let flat: Vec<(String, HostTensor)> = w
        .named()
        .into_iter()
        .filter(|(n, t)| n.ends_with(".bias") && t.shape.len() == 2)
        .map(|(n, t)| (n, HostTensor::new(vec![t.numel()], t.data.clone())))
        .collect();
    let named: Vec<(String, &HostTensor)> = w
        .named()
        .into_iter()
        .map(|(n, t)| match flat.iter().find(|(f, _)| *f == n) {
            Some((_, b)) => (n, b),
            None => (n, t),
        })
        .collect();
    let elem = |n: &str| if dtype_of(n) == StoreDtype::F32 { 4 } else { 2 };
    let total: usize = named.iter().map(|(n, t)| t.numel() * elem(n)).sum();
    let mut cfg_json = cfg.to_json();
    cfg_json["torch_dtype"] = torch_dtype.torch_name().into();
    cfg_json["tie_word_embeddings"] = w.lm_head.is_none().into();
    if total <= SHARD_BYTES {
        save_safetensors_with(&dir.join("model.safetensors"), &named, dtype_of, &[])?;
        let _ = std::fs::remove_file(dir.join("model.safetensors.index.json"));
    } else {
        let mut shards: Vec<Vec<(String, &HostTensor)>> = vec![vec![]];
        let mut cur = 0;
        for (n, t) in named {
            let bytes = t.numel() * elem(&n);
            if cur + bytes > SHARD_BYTES && !shards.last().unwrap().is_empty() {
                shards.push(vec![]);
                cur = 0;
            }
            cur += bytes;
            shards.last_mut().unwrap().push((n, t));
        }
        let count = shards.len();
        let mut weight_map = serde_json::Map::new();
        for (i, shard) in shards.iter().enumerate() {
            let fname = format!("model-{:05}-of-{:05}.safetensors", i + 1, count);
            save_safetensors_with(&dir.join(&fname), shard, dtype_of, &[])?;
            for (n, _) in shard {
                weight_map.insert(n.clone(), fname.clone().into());
            }
        }
        let index =
            serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_json(&dir.join("model.safetensors.index.json"), &index)?;
        let _ = std::fs::remove_file(dir.join("model.safetensors"));
    }
    write_json(&dir.join("config.json"), &cfg_json)?;
    if let Some(src) = side_from {
        if src != dir {
            for f in SIDE_FILES {
                let p = src.join(f);
                if p.exists() {
                    let bytes =
                        std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
                    atomic_write(&dir.join(f), &bytes)?;
                }
            }
        }
    }
    Ok(())
}
