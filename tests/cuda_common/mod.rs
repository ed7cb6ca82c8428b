//! Helpers shared by the GPU test files (`mod cuda_common;`): the device or a printed skip,
//! bf16-exact random inputs, and the relative-error check whose `rel err` lines
//! scripts/gpu-check.sh collects.
#![allow(dead_code)]

use pinpoint::backend::cuda::{cuda_available, CudaBackend};
use pinpoint::model::HostTensor;
use rand::{Rng, SeedableRng};

/// A fixture folder. `PINPOINT_REPO` points at the checkout when the test binary was built
/// elsewhere (scripts/gpu-check.sh runs prebuilt binaries on the device machine).
pub fn fixture(name: &str) -> std::path::PathBuf {
    let root = std::env::var_os("PINPOINT_REPO")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    root.join("tests").join("fixtures").join(name)
}

/// The GPU backend with NaN-poisoned allocations, or None after printing why (a failure
/// instead with `PINPOINT_REQUIRE_GPU=1`).
pub fn gpu(test: &str) -> Option<CudaBackend> {
    match cuda_available() {
        Ok(()) => {
            let b = CudaBackend::new(0).expect("CUDA is available but the backend failed");
            b.set_poison(true);
            Some(b)
        }
        Err(why) => {
            if std::env::var("PINPOINT_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("{test}: PINPOINT_REQUIRE_GPU=1 but no CUDA device: {why}");
            }
            eprintln!("SKIPPED: no CUDA device ({why}) [{test}]");
            None
        }
    }
}

/// A seeded generator; `salt` keeps each test file's inputs its own.
pub fn seeded(seed: u64, salt: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed ^ salt)
}

/// Round to bf16 (what upload does), so the oracle sees the GPU's inputs.
pub fn bf16r(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

/// Uniform(-scale, scale) values, bf16-exact.
pub fn rand_t(r: &mut impl Rng, shape: &[usize], scale: f32) -> HostTensor {
    let n = shape.iter().product();
    let data = (0..n)
        .map(|_| bf16r(r.gen_range(-1.0f32..1.0) * scale))
        .collect();
    HostTensor::new(shape.to_vec(), data)
}

/// ||a - b|| / ||b||; panics on NaN/inf in `a` (an unwritten, poisoned element) or length.
pub fn nrel(what: &str, a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "{what}: length");
    if let Some(i) = a.iter().position(|x| !x.is_finite()) {
        panic!("{what}: element {i} is {} (not written?)", a[i]);
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        num += ((x - y) as f64).powi(2);
        den += (*y as f64).powi(2);
    }
    (num.sqrt() / den.sqrt().max(1e-30)) as f32
}

/// Print `<what>: rel err <e>` and require `e <= tol`.
pub fn check(what: &str, a: &[f32], b: &[f32], tol: f32) {
    let e = nrel(what, a, b);
    eprintln!("{what}: rel err {e:.2e}");
    assert!(e <= tol, "{what}: rel err {e:.3e} > {tol:.0e}");
}
