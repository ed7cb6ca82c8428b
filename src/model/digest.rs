//! Content digests of a model's weights: what a resume and a pipeline rerun compare to know
//! that `--model` still holds the weights the run started from (a path or a config says
//! nothing about the bytes).
//!
//! The digest is SHA-256 over every tensor's name, dtype, shape and CRC-32 of its stored
//! bytes, in name order: independent of sharding and file layout, computed while
//! [`super::checkpoint::load_model_dir`] reads the bytes (CRC-32 runs at memory speed, in
//! parallel over 4 MiB chunks). CRC-32 per tensor detects any accidental change (an edit,
//! a re-save, another model of the same shape) with probability 1 - 2^-32 per tensor; it
//! is not meant to resist a forger.

use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One tensor's entry: name, dtype name, shape, CRC-32 of its bytes.
pub struct TensorSum {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub crc: u32,
}

impl TensorSum {
    pub fn of(name: &str, dtype: &str, shape: &[usize], bytes: &[u8]) -> Self {
        Self {
            name: name.to_string(),
            dtype: dtype.to_string(),
            shape: shape.to_vec(),
            crc: crc32(bytes),
        }
    }
}

/// CRC-32 of `bytes`, chunks hashed in parallel and combined in order.
pub fn crc32(bytes: &[u8]) -> u32 {
    const CHUNK: usize = 4 << 20;
    let parts: Vec<crc32fast::Hasher> = bytes
        .par_chunks(CHUNK)
        .map(|c| {
            let mut h = crc32fast::Hasher::new();
            h.update(c);
            h
        })
        .collect();
    let mut all = crc32fast::Hasher::new();
    for p in &parts {
        all.combine(p);
    }
    all.finalize()
}

/// The digest of a model's tensors (any order in; sorted by name here), `crc32-sha256:HEX`.
pub fn combine(mut sums: Vec<TensorSum>) -> String {
    use sha2::{Digest, Sha256};
    sums.sort_by(|a, b| a.name.cmp(&b.name));
    let mut h = Sha256::new();
    for s in &sums {
        h.update((s.name.len() as u64).to_le_bytes());
        h.update(s.name.as_bytes());
        h.update((s.dtype.len() as u64).to_le_bytes());
        h.update(s.dtype.as_bytes());
        h.update((s.shape.len() as u64).to_le_bytes());
        for d in &s.shape {
            h.update((*d as u64).to_le_bytes());
        }
        h.update(s.crc.to_le_bytes());
    }
    format!("crc32-sha256:{}", hex::encode(h.finalize()))
}

/// Digests of the model folders this process loaded, by resolved folder.
static LOADED: Mutex<BTreeMap<PathBuf, String>> = Mutex::new(BTreeMap::new());

fn key(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// Record the digest of the weights just loaded from `dir`.
pub fn remember(dir: &Path, digest: &str) {
    if let Ok(mut m) = LOADED.lock() {
        m.insert(key(dir), digest.to_string());
    }
}

/// The digest of the weights this process last loaded from `dir` (None: never loaded).
pub fn loaded(dir: &Path) -> Option<String> {
    LOADED.lock().ok()?.get(&key(dir)).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_crc_is_the_crc_of_the_whole() {
        let bytes: Vec<u8> = (0..(9u32 << 20)).map(|i| (i * 7 + i / 13) as u8).collect();
        let mut h = crc32fast::Hasher::new();
        h.update(&bytes);
        assert_eq!(crc32(&bytes), h.finalize());
        // CRC-32 of "123456789" is 0xCBF43926 (the standard check value).
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn the_digest_sees_bytes_names_and_shapes_not_order() {
        let d = |n: &str, s: &[usize], b: &[u8]| TensorSum::of(n, "F32", s, b);
        let a = combine(vec![d("x", &[2], &[1, 2]), d("y", &[1], &[3])]);
        assert_eq!(a, combine(vec![d("y", &[1], &[3]), d("x", &[2], &[1, 2])]));
        assert_ne!(a, combine(vec![d("x", &[2], &[1, 9]), d("y", &[1], &[3])]));
        assert_ne!(
            a,
            combine(vec![d("x", &[1, 2], &[1, 2]), d("y", &[1], &[3])])
        );
        assert_ne!(a, combine(vec![d("z", &[2], &[1, 2]), d("y", &[1], &[3])]));
    }
}
