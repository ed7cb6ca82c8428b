//! One body per op, run on every device (the way candle's `test_device!` does it): the op
//! on the device against an f64 reference written here on the host (never a backend's own
//! output), per element and over the whole tensor (`checks::check`). The references'
//! gradients are themselves checked against central differences of their forwards
//! ([`fd_check`]), so a backward is held to the derivative of the forward, not to a
//! formula copied twice. The CPU variant runs everywhere (tolerance of f32 arithmetic); the
//! CUDA variant is `#[ignore = "needs a GPU"]` (bf16 storage) and runs with
//! `--include-ignored` (scripts/gpu-check.sh). Inputs are bf16-exact, so both devices see
//! the same values. Awkward sizes: no dimension is a multiple of a tile.
//!
//! One file per op: norm, swiglu, rope, attention, embed, xent, adamw, linear; rows.rs: a
//! bad index writes nothing.

#[cfg(feature = "cuda")]
#[path = "../cuda_common/mod.rs"]
mod cuda_common;
#[cfg(feature = "cuda")]
use cuda_common::check;
#[cfg(not(feature = "cuda"))]
#[path = "../checks/mod.rs"]
mod checks;
#[cfg(not(feature = "cuda"))]
use checks::check;
use pinpoint::backend::{Region, TrainBackend};
use pinpoint::model::HostTensor;
use rand::{Rng, SeedableRng};

/// Relative tolerance of an f32 op against f64.
const CPU_TOL: f32 = 1e-5;
/// Relative tolerance of a bf16 op (one forward op: bf16 operands, f32 accumulation).
#[cfg(feature = "cuda")]
const GPU_TOL: f32 = 1e-2;

/// `#[test] fn $cpu` runs `$body` on the CPU backend with [`CPU_TOL`]; `$cuda` (ignored
/// without a GPU) on the CUDA backend with [`GPU_TOL`], or `$gpu_tol` where given (a
/// backward op, an f32 optimizer state).
macro_rules! test_device {
    ($body:ident, $cpu:ident, $cuda:ident) => {
        test_device!($body, $cpu, $cuda, $crate::GPU_TOL);
    };
    ($body:ident, $cpu:ident, $cuda:ident, $gpu_tol:expr) => {
        #[test]
        fn $cpu() {
            $body(&pinpoint::backend::cpu::CpuBackend, $crate::CPU_TOL);
        }
        #[cfg(feature = "cuda")]
        #[test]
        #[ignore = "needs a GPU"]
        fn $cuda() {
            $body(&$crate::cuda_common::gpu(stringify!($cuda)), $gpu_tol);
        }
    };
}

mod adamw;
mod attention;
mod embed;
mod linear;
mod norm;
mod rope;
mod rows;
mod swiglu;
mod xent;

/// Uniform(-scale, scale) values rounded to bf16 (exact on every device).
fn rand_t(seed: u64, shape: &[usize], scale: f32) -> HostTensor {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let n = shape.iter().product();
    let data = (0..n)
        .map(|_| half::bf16::from_f32(r.gen_range(-1.0f32..1.0) * scale).to_f32())
        .collect();
    HostTensor::new(shape.to_vec(), data)
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn f64s(t: &HostTensor) -> Vec<f64> {
    t.data.iter().map(|&x| x as f64).collect()
}

fn run<B: TrainBackend>(b: &B, t: &B::Tensor) -> Vec<f32> {
    b.download(t).unwrap().data
}

fn up<B: TrainBackend>(b: &B, t: &HostTensor) -> B::Tensor {
    b.upload(t).unwrap()
}

/// `sum(r * y)` in f64: the scalar whose gradient a backward computes, given the output
/// gradient `r`.
fn dot(r: &[f64], y: &[f64]) -> f64 {
    assert_eq!(r.len(), y.len());
    r.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// Check the reference gradient `g = d f / d x` against central differences of `f` in f64,
/// at the three largest-|g| coordinates and three spread ones.
fn fd_check(what: &str, f: &dyn Fn(&[f64]) -> f64, x: &[f64], g: &[f64]) {
    assert_eq!(x.len(), g.len(), "{what}: gradient length");
    let gmax = g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(gmax > 0.0, "{what}: zero gradient");
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
    let mut pick = idx[..3.min(idx.len())].to_vec();
    pick.extend([x.len() / 3, x.len() / 2, x.len() - 1]);
    let mut p = x.to_vec();
    for i in pick {
        let h = 1e-4 * x[i].abs().max(1.0);
        p[i] = x[i] + h;
        let fp = f(&p);
        p[i] = x[i] - h;
        let fm = f(&p);
        p[i] = x[i];
        let num = (fp - fm) / (2.0 * h);
        assert!(
            (num - g[i]).abs() <= 1e-5 * (g[i].abs() + gmax),
            "{what}[{i}]: reference gradient {:e} vs finite difference {num:e}",
            g[i]
        );
    }
}

/// Region `reg` of a row-major `[rows, cols]` buffer (1-D: `Full` only), row-major.
fn region<T: Copy>(data: &[T], shape: &[usize], reg: Region) -> Vec<T> {
    let (rows, cols) = match shape {
        [r, c] => (*r, *c),
        _ => (1, data.len()),
    };
    let (r0, r1, c0, c1) = match reg {
        Region::Full => (0, rows, 0, cols),
        Region::Rows { start, len } => (start, start + len, 0, cols),
        Region::Cols { start, len } => (0, rows, start, start + len),
    };
    (r0..r1)
        .flat_map(|r| data[r * cols + c0..r * cols + c1].iter().copied())
        .collect()
}
