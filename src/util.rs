//! Small shared helpers: atomic file writes, the cache directory; progress bars live in
//! [`progress`] (re-exported here).

pub mod alloc_cap;
pub mod cancel;
pub mod charts;
pub mod progress;

pub use progress::{bar, progress_bar};

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// English month names, January first (chat templates' dates, generated questions).
pub const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Write `bytes` to `path` atomically: a temp file in the same folder, fsync, rename.
/// A crash or error never leaves a half-written `path`.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write_with(path, |f| f.write_all(bytes).map_err(Into::into))
}

/// Like [`atomic_write`], with the content produced by `fill` into the temp file.
pub fn atomic_write_with(
    path: &Path,
    fill: impl FnOnce(&mut std::fs::File) -> Result<()>,
) -> Result<()> {
    // A device or pipe (`/dev/stdout`) is written in place; a symlink is written through
    // (the temp file goes beside its target), never replaced by a file.
    if is_special(path) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        fill(&mut f).with_context(|| format!("writing {}", path.display()))?;
        return f
            .flush()
            .with_context(|| format!("writing {}", path.display()));
    }
    let target = write_target(path);
    let path = target.as_path();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // 0666 masked by the umask, as any new file: the output is as shareable as the user's
    // other files (tempfile's default 0600 would make a tuned model private).
    let mut tmp = tempfile::Builder::new()
        .prefix(".pinpoint-tmp-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(&dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;
    fill(tmp.as_file_mut()).with_context(|| format!("writing {}", path.display()))?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming temp file to {}", path.display()))?;
    Ok(())
}

/// Write `value` as pretty JSON, atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    atomic_write(path, text.as_bytes())
}

/// pinpoint's cache folder: `$PINPOINT_HOME`, else `~/.cache/pinpoint`. A blank
/// `PINPOINT_HOME` counts as unset (never the current folder); the CLI refuses one up front
/// with [`check_cache_env`].
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("PINPOINT_HOME") {
        if !p.to_string_lossy().trim().is_empty() {
            return PathBuf::from(p);
        }
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.to_string_lossy().trim().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache").join("pinpoint")
}

/// Error when `PINPOINT_HOME` is set but blank: the user meant some folder, and guessing
/// (the current folder, or the default) would put the cache where they do not expect.
pub fn check_cache_env() -> Result<()> {
    if let Some(p) = std::env::var_os("PINPOINT_HOME") {
        if p.to_string_lossy().trim().is_empty() {
            anyhow::bail!(
                "PINPOINT_HOME is set but empty; unset it (the cache is then ~/.cache/pinpoint) or give it a folder"
            );
        }
    }
    Ok(())
}

/// The UTF-8 byte-order mark some editors put at the start of a file.
const BOM: char = '\u{feff}';

/// `text` without a leading UTF-8 byte-order mark.
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix(BOM).unwrap_or(text)
}

/// A text file (JSON, JSONL, a template, prompts) as a string without a leading UTF-8
/// byte-order mark; errors name the file.
pub fn read_text(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(match text.strip_prefix(BOM) {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// SHA-256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

/// The JSON values of a JSONL file with their 1-based line numbers; blank lines are skipped
/// and a line that is not JSON is an error naming `file:line`.
pub fn read_jsonl_values(path: &Path) -> Result<Vec<(usize, serde_json::Value)>> {
    let text = read_text(path)?;
    let mut out = vec![];
    // A byte-order mark may also start a line (files joined with `cat`).
    for (i, line) in text.lines().map(strip_bom).enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not valid JSON", path.display(), i + 1))?;
        out.push((i + 1, v));
    }
    Ok(out)
}

/// Where a write to `path` should land: a symlink is followed to its target (also a
/// dangling one), so the link itself is never replaced.
pub fn write_target(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::read_link(&p) {
            Ok(t) => {
                p = if t.is_absolute() {
                    t
                } else {
                    p.parent().unwrap_or(Path::new(".")).join(t)
                };
            }
            Err(_) => return p,
        }
    }
    p
}

/// A device, pipe or socket (not a regular file, folder or missing path).
pub fn is_special(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_target_follows_links() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real.json");
        let link = t.path().join("link.json");
        std::os::unix::fs::symlink("real.json", &link).unwrap();
        assert_eq!(write_target(&link), real);
        assert_eq!(write_target(&real), real);
    }
}
