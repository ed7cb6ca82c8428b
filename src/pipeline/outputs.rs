//! Size and SHA-256 of each stage's output files, recorded in `stages.json` and checked
//! before a finished stage is skipped (a deleted or truncated output re-runs the stage).

use crate::util::sha256_file;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub bytes: u64,
    pub sha256: String,
}

/// Every file under `dir` (relative path -> record), skipping hidden files (temp files,
/// locks) and `checkpoints/`.
pub fn record(dir: &Path) -> Result<BTreeMap<String, FileRecord>> {
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, FileRecord>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || (dir == root && name == "checkpoints") {
            continue;
        }
        let p = e.path();
        let ft = e.file_type()?;
        if ft.is_dir() {
            walk(root, &p, out)?;
        } else if ft.is_file() {
            let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
            let bytes = e.metadata()?.len();
            out.insert(
                rel,
                FileRecord {
                    bytes,
                    sha256: sha256_file(&p)?,
                },
            );
        }
    }
    Ok(())
}

/// Why the recorded outputs under `dir` no longer hold, if they do not.
pub fn changed(dir: &Path, rec: &BTreeMap<String, FileRecord>) -> Option<String> {
    for (rel, r) in rec {
        let p = dir.join(rel);
        let Ok(m) = std::fs::metadata(&p) else {
            return Some(format!("{} is missing", p.display()));
        };
        if m.len() != r.bytes {
            return Some(format!(
                "{} has {} bytes, {} were written",
                p.display(),
                m.len(),
                r.bytes
            ));
        }
        match sha256_file(&p) {
            Ok(h) if h == r.sha256 => {}
            _ => return Some(format!("{} changed since it was written", p.display())),
        }
    }
    None
}
