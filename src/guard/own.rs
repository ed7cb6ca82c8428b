//! The ownership rule: pinpoint writes only into a folder it created, or one that holds its
//! marker from an earlier run of the same command (a rerun, a resume). Anything else that
//! already holds files (a user's model, another command's output) is refused before any
//! work, so nothing a user owns is overwritten or deleted.
//!
//! The marker is `.pinpoint-output` (JSON: `{"command": "tune", "version": "..."}`), written
//! once the folder is claimed and locked.

use super::{contents, lock_dir_as, resolved, DirLock};
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Name of the marker file in every output folder pinpoint writes.
pub const MARKER: &str = ".pinpoint-output";

/// The command recorded by the marker in `dir`, if there is a readable one.
pub fn marker_command(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(MARKER)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("command")?.as_str().map(String::from)
}

/// Refuse `out` (given as `flag`) for `pinpoint {command}` unless it is missing, empty, or
/// holds the marker of an earlier `pinpoint {command}` output. Checked on the resolved
/// folder (a symlink is judged by where it points). Creates nothing.
pub fn check_owned(out: &Path, flag: &str, command: &str) -> Result<()> {
    let dir = resolved(out);
    if !dir.is_dir() {
        return Ok(());
    }
    let names = contents(&dir);
    if names.is_empty() {
        return Ok(());
    }
    match marker_command(&dir) {
        Some(c) if c == command => Ok(()),
        Some(c) => bail!(
            "{flag} {} holds the output of `pinpoint {c}` (its {MARKER} says so); `pinpoint {command}` writes only into a new or empty folder or one of its own earlier outputs: choose another folder",
            out.display()
        ),
        None => {
            let shown: Vec<&str> = names.iter().take(4).map(String::as_str).collect();
            let more = if names.len() > 4 { ", ..." } else { "" };
            bail!(
                "{flag} {} is not empty: it holds files pinpoint did not write ({}{more}) and no {MARKER} marker; pinpoint never writes into a folder it did not create, so nothing of yours is overwritten: give a new or empty folder",
                out.display(),
                shown.join(", ")
            )
        }
    }
}

/// Claim `out` for `pinpoint {command}`: [`check_owned`], then lock it (created if
/// needed), check again under the lock, and write the marker. The lock is held until the
/// returned guard drops; a run that wrote nothing leaves no folder and no marker behind.
pub fn claim_dir(out: &Path, flag: &str, command: &str) -> Result<DirLock> {
    check_owned(out, flag, command)?;
    let mut lock = lock_dir_as(out, flag, &format!("pinpoint {command}"))?;
    check_owned(out, flag, command)?;
    if marker_command(out).is_none() {
        let body = serde_json::json!({
            "command": command,
            "version": env!("CARGO_PKG_VERSION"),
            "note": "written by pinpoint: this folder is its output; pinpoint writes only into folders that hold this marker for the same command, or new or empty ones",
        });
        let text = serde_json::to_string_pretty(&body)?;
        crate::util::atomic_write(&out.join(MARKER), text.as_bytes())
            .with_context(|| format!("{flag}: writing the marker {MARKER}"))?;
        lock.forget_if_alone = Some(MARKER);
    }
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::LOCK_FILE;

    #[test]
    fn a_folder_with_a_users_files_is_refused_and_left_alone() {
        let t = tempfile::tempdir().unwrap();
        let mine = t.path().join("mine");
        std::fs::create_dir(&mine).unwrap();
        std::fs::write(mine.join("config.json"), "{}").unwrap();
        let e = claim_dir(&mine, "--out", "tune").err().unwrap().to_string();
        assert!(
            e.contains("config.json") && e.contains("did not write"),
            "{e}"
        );
        assert!(!mine.join(MARKER).exists() && !mine.join(LOCK_FILE).exists());
    }

    #[test]
    fn own_output_is_reused_and_another_commands_refused() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("o");
        let l = claim_dir(&out, "--out", "tune").unwrap();
        std::fs::write(out.join("model.safetensors"), "x").unwrap();
        drop(l);
        assert_eq!(marker_command(&out).as_deref(), Some("tune"));
        assert!(claim_dir(&out, "--out", "tune").is_ok());
        let e = claim_dir(&out, "--out", "eval").err().unwrap().to_string();
        assert!(e.contains("pinpoint tune") && e.contains("--out"), "{e}");
    }

    #[test]
    fn a_run_that_wrote_nothing_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("o");
        drop(claim_dir(&out, "--out", "tune").unwrap());
        assert!(!out.exists());
        // An empty folder of the user's is claimed, and kept (it was not created here).
        std::fs::create_dir(&out).unwrap();
        drop(claim_dir(&out, "--out", "tune").unwrap());
        assert!(out.is_dir() && !out.join(MARKER).exists());
    }
}
