//! What `pinpoint bench` times with and measures against: repetitions between two
//! synchronizations and their median, GEMM timings, and the measured ceilings (the dense
//! GEMM rate, the device copy bandwidth).

use anyhow::Result;
use pinpoint::backend::{Backend, Gemm};
use std::time::Instant;

/// The median of `v` (the upper middle of an even count); `v` is not empty.
pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The GEMMs `bench gemm` compares, the first the ceiling's: the backend's list, or its one
/// `linear` (None, named "backend").
pub(super) fn gemms<B: Backend>(b: &B) -> Vec<Option<Gemm>> {
    match b.gemms() {
        [] => vec![None],
        g => g.iter().copied().map(Some).collect(),
    }
}

pub(super) fn gemm_name(g: Option<Gemm>) -> &'static str {
    g.map_or("backend", Gemm::name)
}

/// The square size of the GEMM ceiling: 1024 on the CPU, 8192 on a GPU (a backend with a
/// choice of GEMMs).
pub(super) fn ceiling_size<B: Backend>(b: &B) -> usize {
    if b.gemms().is_empty() {
        1024
    } else {
        8192
    }
}

/// Warm-up, then `reps` timed runs of `f`, each between two synchronizations.
pub(super) fn time_reps<B: Backend>(
    b: &B,
    reps: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Vec<f64>> {
    f()?;
    b.synchronize()?;
    let mut v = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        f()?;
        b.synchronize()?;
        v.push(t.elapsed().as_secs_f64());
    }
    Ok(v)
}

/// Measured ceilings of one backend, shared by every row (the fastest of the runs).
#[derive(Debug, Clone, Copy)]
pub(super) struct Ceil {
    /// Dense GEMM FLOP/s.
    pub(super) gemm: f64,
    /// Copy bytes/s (read + written).
    pub(super) copy: Option<f64>,
}

/// GEMM seconds of `x [n, k] @ w [m, k]^T` with `gemm`, timed over enough calls per run.
/// With `best`, the fastest run (a ceiling), else the median.
pub(super) fn time_gemm<B: Backend>(
    b: &B,
    (n, k, m): (usize, usize, usize),
    gemm: Option<Gemm>,
    reps: usize,
    best: bool,
) -> Result<f64> {
    let x = b.uniform(&[n, k], 1001, 1.0, 0.0)?;
    let w = b.uniform(&[m, k], 1002, 0.02, 0.0)?;
    let flops = 2.0 * (n * k * m) as f64;
    // About 20 ms of work per timed run on a 500 TFLOP/s card, at least one call.
    let inner = ((1e13 / flops) as usize).clamp(1, 50);
    let times = time_reps(b, reps.max(3), || {
        for _ in 0..inner {
            match gemm {
                Some(g) => b.linear_with_gemm(&x, &w, g)?,
                None => b.linear(&x, &w)?,
            };
        }
        Ok(())
    })?;
    let t = if best {
        times.iter().copied().fold(f64::INFINITY, f64::min)
    } else {
        median(times)
    };
    Ok(t / inner as f64)
}

/// The GEMM ceiling, and the copy bandwidth `copy_rate` measures where meaningful.
pub(super) fn ceilings<B: Backend>(b: &B, reps: usize, copy: Option<f64>) -> Result<Ceil> {
    let s = ceiling_size(b);
    let t = time_gemm(b, (s, s, s), gemms(b)[0], reps, true)?;
    Ok(Ceil {
        gemm: 2.0 * (s as f64).powi(3) / t,
        copy,
    })
}

/// Device copy bandwidth in bytes/s (read + written): 512 MiB of bf16 copied on the device.
#[cfg(feature = "cuda")]
pub(super) fn copy_rate(
    b: &pinpoint::backend::cuda::CudaBackend,
    reps: usize,
) -> Result<Option<f64>> {
    let n = 1usize << 28; // 512 MiB of bf16
    let src = b.uniform(&[n >> 14, 1 << 14], 77, 1.0, 0.0)?;
    let times = time_reps(b, reps.max(3), || {
        b.copy_tensor(&src)?;
        Ok(())
    })?;
    let best = times.iter().copied().fold(f64::INFINITY, f64::min);
    Ok(Some(2.0 * (2 * n) as f64 / best))
}
