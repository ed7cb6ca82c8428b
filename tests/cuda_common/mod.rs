//! Helpers shared by the GPU test files (`mod cuda_common;`): the device (or a failure naming
//! why there is none),
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

/// The GPU backend with NaN-poisoned allocations. Every test that calls this is
/// `#[ignore = "needs a GPU"]` (the runner lists it as ignored, not ok, where no GPU ran it)
/// and runs with `--ignored` (scripts/gpu-check.sh); asked to run without a GPU, it fails
/// with the reason.
pub fn gpu(test: &str) -> CudaBackend {
    if let Err(why) = cuda_available() {
        panic!("{test} needs a GPU: no CUDA device ({why})");
    }
    let b = CudaBackend::new(0).expect("CUDA is available but the backend failed");
    b.set_poison(true);
    b
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

/// Print `<what>: rel err <e>` and require `e <= tol` (whole tensor) and, element by element,
/// `|a_i - b_i| <= 10 tol rms(b) + 2 tol |b_i|`: a norm alone lets one element be wrong by
/// several times its size in a large tensor; bf16 rounding (2^-8 relative per element) and
/// f32 sums stay far inside both bounds.
pub fn check(what: &str, a: &[f32], b: &[f32], tol: f32) {
    let e = nrel(what, a, b);
    eprintln!("{what}: rel err {e:.2e}");
    assert!(e <= tol, "{what}: rel err {e:.3e} > {tol:.0e}");
    check_elements(what, a, b, tol);
}

/// The per-element half of [`check`]: the first element outside
/// `10 tol rms(b) + 2 tol |b_i|` fails, named by index.
pub fn check_elements(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    if b.is_empty() {
        return;
    }
    let rms = (b.iter().map(|&y| (y as f64).powi(2)).sum::<f64>() / b.len() as f64).sqrt();
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let err = (x as f64 - y as f64).abs();
        let bound = 10.0 * tol as f64 * rms + 2.0 * tol as f64 * (y as f64).abs();
        assert!(
            err <= bound,
            "{what}: element {i} is {x}, expected {y} (error {err:.3e} > bound {bound:.3e})"
        );
    }
}
