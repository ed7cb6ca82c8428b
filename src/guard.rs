//! Guards that keep a user's files safe and results honest: output locations checked before
//! any work (writable, not the input model, the right kind, locked), finiteness checks on
//! what is written or called good, and numeric flag checks. Every error names the path,
//! flag or tensor. Imports nothing of the crate above `util`; the model's and the trainer's
//! own checks (config values, finite weights, the resume fingerprint) live with them.

use anyhow::{bail, Context, Result};
use std::path::{Component, Path, PathBuf};

mod own;
pub use own::{check_owned, claim_dir, marker_command, MARKER};

/// `p` made absolute and resolved as the OS resolves it: component by component, each
/// existing prefix canonicalized (symlinks followed) BEFORE the next `..` applies, so
/// `link/..` is the parent of the link's target, never the folder holding the link. The
/// missing tail (nothing there can be a link) is appended with `..` applied to it.
pub fn resolved(p: &Path) -> PathBuf {
    resolved_at_depth(p, 0)
}

fn resolved_at_depth(p: &Path, depth: usize) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(p)
    };
    let mut cur = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                cur.pop();
            }
            Component::Normal(name) => cur.push(name),
            _ => continue,
        }
        if let Ok(real) = std::fs::canonicalize(&cur) {
            cur = real;
        } else if let (Ok(target), true) = (std::fs::read_link(&cur), depth < 40) {
            // A dangling link: a file created through it lands where it points.
            let parent = cur.parent().unwrap_or(Path::new("/")).to_path_buf();
            cur = resolved_at_depth(&parent.join(target), depth + 1);
        }
    }
    cur
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

/// An exclusive lock on an output folder, held until dropped (released by the OS when the
/// process ends, so a killed run never leaves a stale lock).
/// On drop the lock file is removed (while still held), and the folder too when this lock
/// created it and nothing else was written there (a refused or failed run leaves no trace).
pub struct DirLock {
    _file: std::fs::File,
    dir: std::path::PathBuf,
    created: bool,
    /// A file this lock's claim wrote (the ownership marker), removed again on drop when
    /// it is the folder's only content.
    forget_if_alone: Option<&'static str>,
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join(LOCK_FILE));
        if let Some(name) = self.forget_if_alone {
            if contents(&self.dir) == [name] {
                let _ = std::fs::remove_file(self.dir.join(name));
            }
        }
        if self.created {
            // Fails (and keeps the folder) unless it is empty.
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// Entries of `dir` that count as content (not the lock, not a leftover write probe).
fn contents(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != LOCK_FILE && !n.starts_with(".pinpoint-probe-"))
        .collect();
    names.sort();
    names
}

/// Name of the lock file inside a locked folder.
pub const LOCK_FILE: &str = ".pinpoint.lock";

/// Lock `out` (created if needed) for this process, or fail naming it and the lock file when
/// another run holds it. Output commands take it through [`claim_dir`].
pub fn lock_dir(out: &Path, flag: &str) -> Result<DirLock> {
    lock_dir_as(out, flag, "pinpoint")
}

/// [`lock_dir`], recording `holder` (e.g. `pinpoint tune`) and this process id in the lock
/// file, so that a second run's error says who holds the folder.
pub fn lock_dir_as(out: &Path, flag: &str, holder: &str) -> Result<DirLock> {
    let created = !out.exists();
    std::fs::create_dir_all(out).with_context(|| format!("{flag}: creating {}", out.display()))?;
    let p = out.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&p)
        .with_context(|| format!("{flag}: creating the lock file {}", p.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a file descriptor we own.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            let who = std::fs::read_to_string(&p).unwrap_or_default();
            let who = match who.trim() {
                "" => "another pinpoint run".to_string(),
                w => w.to_string(),
            };
            bail!(
                "{flag} {} is in use by {who} (it holds {}); wait for it to finish or choose another folder",
                out.display(),
                p.display()
            );
        }
        use std::io::{Seek, Write};
        let _ = file.set_len(0);
        let _ = file.seek(std::io::SeekFrom::Start(0));
        let _ = write!(file, "{holder} (process {})", std::process::id());
    }
    Ok(DirLock {
        _file: file,
        dir: out.to_path_buf(),
        created,
        forget_if_alone: None,
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
    fn resolved_follows_a_link_before_its_dot_dot() {
        // z/L -> model/sub: `z/L/..` is `model`, as the OS resolves it, not `z`.
        let t = tempfile::tempdir().unwrap();
        let m = t.path().join("model");
        std::fs::create_dir_all(m.join("sub")).unwrap();
        std::fs::create_dir(t.path().join("z")).unwrap();
        std::os::unix::fs::symlink(m.join("sub"), t.path().join("z/L")).unwrap();
        let canon = std::fs::canonicalize(&m).unwrap();
        assert_eq!(resolved(&t.path().join("z/L/..")), canon);
        assert_eq!(
            resolved(&t.path().join("z/L/../config.json")),
            canon.join("config.json")
        );
        let e = output_dir(&t.path().join("z/L/.."), "--out", &[&m])
            .unwrap_err()
            .to_string();
        assert!(e.contains("is the input"), "{e}");
        let e = output_file(&t.path().join("z/L/../config.json"), "--out", &[&m])
            .unwrap_err()
            .to_string();
        assert!(e.contains("inside the input"), "{e}");
        // A dangling link is judged where it points.
        std::os::unix::fs::symlink(m.join("new"), t.path().join("z/D")).unwrap();
        assert_eq!(resolved(&t.path().join("z/D/x")), canon.join("new/x"));
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
    fn flags_name_themselves() {
        let e = flag::positive("--lr", f64::NAN).unwrap_err().to_string();
        assert!(e.contains("--lr NaN"), "{e}");
        assert!(flag::non_negative("--x", 0.0).is_ok());
        assert!(flag::non_negative("--x", -1.0).is_err());
        assert!(flag::within("--p", 1.5, 0.0, 1.0).is_err());
        assert!(flag::at_least("--steps", 0, 1).is_err());
    }
}
