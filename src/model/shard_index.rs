//! `model.safetensors.index.json` checked against the shards it names: every tensor it maps
//! must be in that shard, so an index that maps every tensor to one shard (or a stale
//! index) is an error naming the index, the tensor, the shard, and the shard files in the
//! folder that it leaves out.

use anyhow::{bail, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The index's name in a model folder.
pub const INDEX: &str = "model.safetensors.index.json";

/// Error unless each tensor the index of `dir` maps to a shard came from that shard
/// (`origin`: tensor -> the file it was read from). No index: nothing to check.
/// A `model.safetensors` beside the index is what loads (transformers' rule, see
/// `checkpoint::safetensors_files`), so the index is then not checked.
pub fn check(dir: &Path, origin: &HashMap<String, PathBuf>) -> Result<()> {
    if dir.join("model.safetensors").is_file() {
        return Ok(());
    }
    let index = dir.join(INDEX);
    let Ok(text) = crate::util::read_text(&index) else {
        return Ok(()); // no index (or the reader already named the problem)
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Ok(());
    };
    let Some(map) = v.get("weight_map").and_then(|m| m.as_object()) else {
        return Ok(());
    };
    let mut wrong: Vec<(String, String)> = map
        .iter()
        .filter_map(|(t, s)| Some((t.clone(), s.as_str()?.to_string())))
        .filter(|(t, s)| origin.get(t).is_none_or(|o| o != &dir.join(s)))
        .collect();
    if wrong.is_empty() {
        return Ok(());
    }
    wrong.sort();
    let listed: Vec<&str> = map.values().filter_map(|s| s.as_str()).collect();
    let mut unlisted: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".safetensors") && !listed.contains(&n.as_str()))
                .collect()
        })
        .unwrap_or_default();
    unlisted.sort();
    let (t, s) = &wrong[0];
    let also = if unlisted.is_empty() {
        String::new()
    } else {
        format!(
            "; the folder also holds {}, which the index does not list",
            unlisted.join(", ")
        )
    };
    bail!(
        "{} maps {} tensor(s) to a shard that does not hold them, first {t:?} to {s}{also} (a stale or hand-edited index?)",
        index.display(),
        wrong.len()
    )
}
