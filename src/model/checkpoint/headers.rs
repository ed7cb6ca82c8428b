//! Header-level reads of a model folder's safetensors files: which files hold the weights
//! (each shard inside the folder), their metadata and stored dtypes; and the check that a
//! tied model's stored head is the embedding.

use super::dtype::{store_dtype_of, StoreDtype};
use crate::backend::HostTensor;
use anyhow::{bail, Context, Result};
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The safetensors files of a model directory: `model.safetensors` (also when an index is
/// beside it, as transformers loads it), or the shards listed in
/// `model.safetensors.index.json` (each inside the folder once resolved), or every
/// `*.safetensors` file.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    // transformers' rule: a single model.safetensors wins over an index beside it.
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = crate::util::read_text(&index)?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", index.display()))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .with_context(|| format!("{} has no weight_map", index.display()))?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|s| s.as_str().map(String::from))
            .collect();
        files.sort();
        files.dedup();
        for f in &files {
            shard_inside(dir, &index, f)?;
        }
        if let Some(f) = files.iter().find(|f| !dir.join(f).is_file()) {
            bail!(
                "{} lists the shard {f}, which is not in {} (a stale index?)",
                index.display(),
                dir.display()
            );
        }
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!(
            "{}: no model.safetensors, no index, no *.safetensors files",
            dir.display()
        );
    }
    Ok(files)
}

/// The `__metadata__` of a safetensors file's header (read without the tensors).
pub fn safetensors_metadata(path: &Path) -> Result<HashMap<String, String>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let n = u64::from_le_bytes(len);
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    if n > size.saturating_sub(8) || n > 100 << 20 {
        bail!(
            "{}: not a safetensors file (header length {n})",
            path.display()
        );
    }
    let mut head = vec![0u8; n as usize];
    f.read_exact(&mut head)
        .with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&head)
        .with_context(|| format!("{}: the header is not JSON", path.display()))?;
    Ok(v.get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default())
}

/// Each tensor's stored dtype in the safetensors files of model folder `dir`, read from the
/// headers only (empty when `dir` has no readable weights).
pub fn stored_dtypes(dir: &Path) -> HashMap<String, StoreDtype> {
    let mut out = HashMap::new();
    for file in safetensors_files(dir).unwrap_or_default() {
        let Ok(f) = std::fs::File::open(&file) else {
            continue;
        };
        // SAFETY: read-only map, only the header is parsed.
        let Ok(mmap) = (unsafe { memmap2::Mmap::map(&f) }) else {
            continue;
        };
        let Ok((_, meta)) = SafeTensors::read_metadata(&mmap) else {
            continue;
        };
        for (name, info) in meta.tensors() {
            if let Some(d) = store_dtype_of(info.dtype) {
                out.insert(name, d);
            }
        }
    }
    out
}

/// Refuse a shard `name` listed by `index` that lies outside model folder `dir` once
/// resolved (`../x`, an absolute path, a linked folder elsewhere). The shard file itself may
/// be a symlink (the Hugging Face cache links each file to a blob).
pub(super) fn shard_inside(dir: &Path, index: &Path, name: &str) -> Result<()> {
    let home = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let p = Path::new(name);
    let parent = dir.join(p).parent().map(crate::guard::resolved);
    let inside = !p.is_absolute() && parent.is_some_and(|q| q.starts_with(&home));
    if !inside {
        bail!(
            "{} lists the shard {name:?}, which lies outside the model folder {}; a model's shards must be inside its folder",
            index.display(),
            dir.display()
        );
    }
    Ok(())
}

/// A tied model (`tie_word_embeddings: true`) that also stores `lm_head.weight` must store
/// the embedding itself there.
pub(super) fn tied_copy_matches(
    head: &HostTensor,
    embed: &HostTensor,
    file: Option<&PathBuf>,
) -> Result<()> {
    if head.data == embed.data {
        return Ok(());
    }
    let file = file.map(|p| p.display().to_string()).unwrap_or_default();
    let n = head
        .data
        .iter()
        .zip(&embed.data)
        .filter(|(a, b)| a != b)
        .count();
    bail!(
        "{file}: config.json ties the word embeddings (tie_word_embeddings: true) but the stored lm_head.weight differs from model.embed_tokens.weight in {n} values; transformers would ignore the stored lm_head.weight, so which head is meant is ambiguous: remove lm_head.weight, or set tie_word_embeddings to false"
    );
}
