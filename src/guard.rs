//! Guards that keep a user's files safe and results honest: output locations checked before
//! any work (writable, not the input model, the right kind, locked), writes that go through
//! symlinks instead of replacing them, finiteness checks on what is written or called good,
//! and numeric flag checks. Every error names the path, flag or tensor.

use crate::backward::TrainSeq;
use crate::model::{HostTensor, ModelWeights};
use anyhow::{bail, Context, Result};
use std::path::{Component, Path, PathBuf};

/// `p` made absolute and free of `.`/`..` and symlinks as far as it exists (the missing tail
/// is appended as written), so that paths can be compared before they are created.
pub fn resolved(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(p)
    };
    let mut clean = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                clean.pop();
            }
            other => clean.push(other),
        }
    }
    // The longest existing prefix, canonicalized; then the rest.
    let mut head = clean.clone();
    let mut tail = vec![];
    loop {
        if let Ok(c) = std::fs::canonicalize(&head) {
            let mut out = c;
            for t in tail.iter().rev() {
                out.push(t);
            }
            return out;
        }
        match (head.file_name().map(|s| s.to_os_string()), head.parent()) {
            (Some(name), Some(parent)) => {
                tail.push(name);
                head = parent.to_path_buf();
            }
            _ => return clean,
        }
    }
}

/// Refuse an output that is, is inside, or contains one of the input folders.
fn check_not_input(out: &Path, flag: &str, inputs: &[&Path]) -> Result<()> {
    let o = resolved(out);
    for inp in inputs {
        let i = resolved(inp);
        if o == i {
            bail!(
                "{flag} {} is the input model folder {}; pinpoint never writes into its input: choose another folder",
                out.display(),
                inp.display()
            );
        }
        if o.starts_with(&i) {
            bail!(
                "{flag} {} is inside the input model folder {}; pinpoint never writes into its input: choose a folder outside it",
                out.display(),
                inp.display()
            );
        }
        if i.starts_with(&o) {
            bail!(
                "{flag} {} contains the input model folder {}; writing there could overwrite the model: choose another folder",
                out.display(),
                inp.display()
            );
        }
    }
    Ok(())
}

/// Create `dir` if needed and prove that a file can be created in it.
fn probe_writable(dir: &Path, flag: &str, shown: &Path) -> Result<()> {
    // Probe the folder, or the nearest existing folder above it: nothing is created here,
    // so a run refused later leaves no empty folder behind.
    let mut at = dir;
    while !at.exists() {
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => {
                at = Path::new(".");
                break;
            }
        }
    }
    if !at.is_dir() {
        bail!(
            "{flag} {}: {} is not a folder, so {} cannot be created",
            shown.display(),
            at.display(),
            dir.display()
        );
    }
    tempfile::Builder::new()
        .prefix(".pinpoint-probe-")
        .tempfile_in(at)
        .with_context(|| {
            format!(
                "{flag} {}: the folder {} is not writable",
                shown.display(),
                at.display()
            )
        })?;
    Ok(())
}

/// Check an output folder before any work: not a file, not (inside / around) an input
/// folder, creatable and writable. Creates nothing.
pub fn output_dir(out: &Path, flag: &str, inputs: &[&Path]) -> Result<()> {
    if out.as_os_str().is_empty() {
        bail!("{flag} is empty; give a folder");
    }
    if let Ok(m) = std::fs::metadata(out) {
        if !m.is_dir() {
            bail!(
                "{flag} {} exists and is not a folder; give a folder (it will be created)",
                out.display()
            );
        }
    } else if std::fs::symlink_metadata(out).is_ok() {
        bail!(
            "{flag} {} is a symbolic link to nothing; give a folder",
            out.display()
        );
    }
    check_not_input(out, flag, inputs)?;
    probe_writable(&resolved(out), flag, out)
}

/// Check an output file before any work: not a folder, not inside an input folder, and its
/// folder writable (a symlink is checked where it points; a device or pipe as it is).
pub fn output_file(out: &Path, flag: &str, inputs: &[&Path]) -> Result<()> {
    if out.as_os_str().is_empty() {
        bail!("{flag} is empty; give a file name");
    }
    match std::fs::metadata(out) {
        Ok(m) if m.is_dir() => bail!("{flag} {} is a folder; give a file name", out.display()),
        Ok(m) if !m.is_file() => return Ok(()), // a device or pipe: written in place
        _ => {}
    }
    check_not_input(out, flag, inputs)?;
    let target = resolved(out);
    let dir = target.parent().unwrap_or(Path::new("/"));
    probe_writable(dir, flag, out)
}

/// Check an existing input file: present, and a file (not a folder).
pub fn input_file(p: &Path, what: &str) -> Result<()> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => bail!("{} is a directory, not a {what}", p.display()),
        Ok(_) => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("reading {what} {}", p.display()))),
    }
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

/// An exclusive lock on an output folder, held until dropped (released by the OS when the
/// process ends, so a killed run never leaves a stale lock).
/// On drop the lock file is removed (while still held), and the folder too when this lock
/// created it and nothing else was written there (a refused or failed run leaves no trace).
pub struct DirLock {
    _file: std::fs::File,
    dir: std::path::PathBuf,
    created: bool,
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join(LOCK_FILE));
        if self.created {
            // Fails (and keeps the folder) unless it is empty.
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// Name of the lock file inside a locked folder.
pub const LOCK_FILE: &str = ".pinpoint.lock";

/// Lock `out` (created if needed) for this process, or fail naming it when another run holds it.
pub fn lock_dir(out: &Path, flag: &str) -> Result<DirLock> {
    let created = !out.exists();
    std::fs::create_dir_all(out).with_context(|| format!("{flag}: creating {}", out.display()))?;
    let p = out.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .with_context(|| format!("{flag}: creating the lock file {}", p.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a file descriptor we own.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            bail!(
                "{flag} {} is in use by another pinpoint run (it holds {}); wait for it to finish or choose another folder",
                out.display(),
                p.display()
            );
        }
    }
    Ok(DirLock {
        _file: file,
        dir: out.to_path_buf(),
        created,
    })
}

/// Error unless every value is finite; names `what`, the count and the first bad index.
pub fn finite(what: &str, data: &[f32]) -> Result<()> {
    let bad = data.iter().filter(|x| !x.is_finite()).count();
    if bad > 0 {
        let (i, x) = data
            .iter()
            .enumerate()
            .find(|(_, x)| !x.is_finite())
            .expect("counted");
        bail!(
            "{what}: {bad} of {} values are not finite (first: {x} at index {i})",
            data.len()
        );
    }
    Ok(())
}

/// Values of a parsed `config.json` that would make the model compute garbage (NaN from a
/// negative epsilon, empty tensors from zero sizes); the error names the field.
pub fn check_config(c: &crate::model::ModelConfig) -> Result<()> {
    for (k, v) in [
        ("vocab_size", c.vocab_size),
        ("hidden_size", c.hidden_size),
        ("intermediate_size", c.intermediate_size),
        ("num_hidden_layers", c.num_hidden_layers),
        ("max_position_embeddings", c.max_position_embeddings),
    ] {
        if v == 0 {
            bail!("`{k}` is 0; it must be positive");
        }
    }
    // A present field of the wrong type reads as absent; say so instead of using a default.
    for k in [
        "rms_norm_eps",
        "rope_theta",
        "max_position_embeddings",
        "num_key_value_heads",
        "head_dim",
        "tie_word_embeddings",
    ] {
        if let Some(v) = c.raw.get(k) {
            let ok = match k {
                "rms_norm_eps" | "rope_theta" => v.is_number(),
                "tie_word_embeddings" => v.is_boolean(),
                _ => v.is_u64(),
            };
            if !ok && !v.is_null() {
                bail!("`{k}` is {v}, not a valid value");
            }
        }
    }
    if let Some(a) = c.raw.get("architectures") {
        let ok = a
            .as_array()
            .is_some_and(|l| l.iter().all(|x| x.is_string()));
        if !ok && !a.is_null() {
            bail!("`architectures` is {a}, not a list of names");
        }
    }
    if !(c.rms_norm_eps.is_finite() && c.rms_norm_eps > 0.0) {
        bail!("`rms_norm_eps` is {}; it must be above 0", c.rms_norm_eps);
    }
    if !(c.rope_theta.is_finite() && c.rope_theta > 0.0) {
        bail!("`rope_theta` is {}; it must be above 0", c.rope_theta);
    }
    if c.sliding_window == Some(0) {
        bail!("`sliding_window` is 0; it must be positive or null");
    }
    Ok(())
}

/// [`finite`] for f64 results (metrics, scores).
pub fn finite64(what: &str, data: &[f64]) -> Result<()> {
    if let Some((i, x)) = data.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        let bad = data.iter().filter(|x| !x.is_finite()).count();
        bail!(
            "{what}: {bad} of {} values are not finite (first: {x} at index {i})",
            data.len()
        );
    }
    Ok(())
}

/// Every tensor of `w` finite; the error names the tensor.
pub fn weights_finite(w: &ModelWeights<HostTensor>) -> Result<()> {
    for (name, t) in w.named() {
        finite(&format!("tensor {name}"), &t.data)?;
    }
    Ok(())
}

/// SHA-256 of tokenized training data (ids and targets, in order): what a resume depends on.
pub fn data_fingerprint(data: &[TrainSeq]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for s in data {
        h.update((s.ids.len() as u64).to_le_bytes());
        for id in &s.ids {
            h.update(id.to_le_bytes());
        }
        for t in &s.targets {
            h.update(t.map_or(u64::MAX, |x| x as u64).to_le_bytes());
        }
        // The loss kind (cross-entropy or retain) is part of the data.
        h.update([u8::from(s.retain)]);
    }
    hex::encode(h.finalize())
}

/// The settings in which a checkpoint's optimizer differs from this run's, named as flags.
pub fn optim_diffs(ckpt: &crate::tune::AdamWConfig, run: &crate::tune::AdamWConfig) -> Vec<String> {
    let mut d = vec![];
    let mut f = |flag: &str, a: String, b: String| {
        if a != b {
            d.push(format!("{flag} {a} in the checkpoint, {b} now"));
        }
    };
    f("--lr", ckpt.lr.to_string(), run.lr.to_string());
    f("--lr-end", ckpt.lr_end.to_string(), run.lr_end.to_string());
    f(
        "--warmup",
        ckpt.warmup_steps.to_string(),
        run.warmup_steps.to_string(),
    );
    f(
        "--steps",
        ckpt.total_steps.to_string(),
        run.total_steps.to_string(),
    );
    f("--power", ckpt.power.to_string(), run.power.to_string());
    f(
        "--weight-decay",
        ckpt.weight_decay.to_string(),
        run.weight_decay.to_string(),
    );
    let clip = |c: Option<f32>| c.map_or("off".to_string(), |x| x.to_string());
    f(
        "--max-grad-norm",
        clip(ckpt.max_grad_norm),
        clip(run.max_grad_norm),
    );
    f("beta1", ckpt.beta1.to_string(), run.beta1.to_string());
    f("beta2", ckpt.beta2.to_string(), run.beta2.to_string());
    f("eps", ckpt.eps.to_string(), run.eps.to_string());
    d
}

/// Numeric flag checks, each naming the flag.
pub mod flag {
    use anyhow::{bail, Result};
    use std::fmt::Display;

    /// A finite number > 0.
    pub fn positive<T: Into<f64> + Copy + Display>(name: &str, v: T) -> Result<()> {
        let x: f64 = v.into();
        if !(x.is_finite() && x > 0.0) {
            bail!("{name} {v}: must be a finite number above 0");
        }
        Ok(())
    }

    /// A finite number >= 0.
    pub fn non_negative<T: Into<f64> + Copy + Display>(name: &str, v: T) -> Result<()> {
        let x: f64 = v.into();
        if !(x.is_finite() && x >= 0.0) {
            bail!("{name} {v}: must be a finite number, 0 or more");
        }
        Ok(())
    }

    /// A finite number in `[lo, hi]`.
    pub fn within(name: &str, v: f64, lo: f64, hi: f64) -> Result<()> {
        if !(v.is_finite() && v >= lo && v <= hi) {
            bail!("{name} {v}: must be a number from {lo} to {hi}");
        }
        Ok(())
    }

    /// A count of at least `min`.
    pub fn at_least(name: &str, v: usize, min: usize) -> Result<()> {
        if v < min {
            bail!("{name} {v}: must be at least {min}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolved_handles_missing_tails_and_dots() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        std::fs::create_dir(&a).unwrap();
        let r = resolved(&a.join("x/../y/z"));
        assert_eq!(r, std::fs::canonicalize(&a).unwrap().join("y/z"));
    }

    #[test]
    fn outputs_overlapping_the_input_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let m = t.path().join("model");
        std::fs::create_dir(&m).unwrap();
        for (out, word) in [
            (m.clone(), "is the input"),
            (m.join("sub"), "inside"),
            (t.path().to_path_buf(), "contains"),
            (m.join("x/../"), "is the input"),
        ] {
            let e = output_dir(&out, "--out", &[&m]).unwrap_err().to_string();
            assert!(e.contains(word) && e.contains("--out"), "{e}");
        }
        assert!(output_dir(&t.path().join("other"), "--out", &[&m]).is_ok());
    }

    #[test]
    fn a_file_where_a_folder_is_needed_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        std::fs::write(&f, "x").unwrap();
        let e = output_dir(&f, "--out", &[]).unwrap_err().to_string();
        assert!(e.contains("not a folder") && e.contains("/f"), "{e}");
        let e = output_file(t.path(), "--out", &[]).unwrap_err().to_string();
        assert!(e.contains("is a folder"), "{e}");
        let e = output_dir(&f.join("sub"), "--out", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot be created") && e.contains("/f/sub"),
            "{e}"
        );
    }

    #[test]
    fn a_second_lock_fails_naming_the_folder() {
        let t = tempfile::tempdir().unwrap();
        let l = lock_dir(t.path(), "--out").unwrap();
        // flock locks are per open file description: a second open conflicts.
        let e = lock_dir(t.path(), "--out").err().unwrap().to_string();
        assert!(e.contains("in use") && e.contains(LOCK_FILE), "{e}");
        drop(l);
        assert!(lock_dir(t.path(), "--out").is_ok());
    }

    #[test]
    fn finite_names_the_count_and_index() {
        assert!(finite("x", &[1.0, 2.0]).is_ok());
        let e = finite("tensor w", &[1.0, f32::INFINITY, f32::NAN])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tensor w") && e.contains("2 of 3") && e.contains("index 1"),
            "{e}"
        );
    }

    #[test]
    fn write_target_follows_links() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real.json");
        let link = t.path().join("link.json");
        std::os::unix::fs::symlink("real.json", &link).unwrap();
        assert_eq!(write_target(&link), real);
        assert_eq!(write_target(&real), real);
    }

    #[test]
    fn flags_name_themselves() {
        let e = flag::positive("--lr", f64::NAN).unwrap_err().to_string();
        assert!(e.contains("--lr NaN"), "{e}");
        assert!(flag::non_negative("--x", 0.0).is_ok());
        assert!(flag::non_negative("--x", -1.0).is_err());
        assert!(flag::within("--p", 1.5, 0.0, 1.0).is_err());
        assert!(flag::at_least("--steps", 0, 1).is_err());
    }
}
