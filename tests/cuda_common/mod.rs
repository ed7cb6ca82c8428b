//! Helpers shared by the GPU test files (`mod cuda_common;`): the device (or a failure naming
//! why there is none),
//! bf16-exact random inputs, and the relative-error check whose `rel err` lines
//! scripts/gpu-check.sh collects.
#![allow(dead_code)]

use pinpoint::backend::cuda::{cuda_available, CudaBackend};
use pinpoint::model::HostTensor;
use rand::{Rng, SeedableRng};

#[path = "../checks/mod.rs"]
mod checks;
#[allow(unused_imports)] // not every GPU test file uses every check
pub use checks::{check, check_elements, nrel};

/// A fixture folder. `PINPOINT_REPO` points at the checkout when the test binary was built
/// elsewhere (scripts/gpu-check.sh runs prebuilt binaries on the device machine).
#[path = "../common/models.rs"]
mod models;
#[allow(unused_imports)] // not every test file uses it
pub use models::TINY_MODELS;

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
