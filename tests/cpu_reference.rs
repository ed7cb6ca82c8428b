//! The CPU backend's fast kernels against its reference loops (`backend/cpu/select.rs`),
//! on the same inputs, on every machine: on AVX-512 the packed/small GEMMs, the blocked
//! attention forward and backward and the vector loops; on AMX the bf16x6 GEMM; elsewhere
//! the `gemm` crate and 8-lane loops. The reference path is itself held to f64 by
//! tests/ops (run with `PINPOINT_CPU_KERNELS=reference`, scripts/test) and to torch by
//! tests/grad.
//!
//! Tolerances. Both paths are f32 and differ only in the order of their sums (and, on AMX,
//! in products split into bf16 pieces, whose error is below f32's own, see gemm/amx.rs).
//! An f32 sum of L terms in any order is within `L * eps * sum|terms|` of the exact sum
//! (eps = 2^-23 bounds each rounding; the classic `gamma_L` bound), so two orders differ
//! by at most twice that. Per element, for a GEMM output: `2 * L * eps * sum_t |x_t w_t|`,
//! computed here in f64. Attention chains a dot product (L = head_dim) into a softmax
//! (a sum over at most kv_len keys) into a weighted sum (kv_len terms), each term bounded
//! by the largest input: per element, `4 * (head_dim + kv_len) * eps * scale`, with
//! `scale` the largest magnitude of that output tensor (plus 1). The elementwise ops (RoPE,
//! SwiGLU) use the same formula in both sets and must agree to the bit, except SwiGLU
//! whose AVX-512 exp is a polynomial (`2 * eps` relative plus `1e-30`).
//!
//! The kernel set is process-wide, so every comparison holds one lock.

use pinpoint::backend::cpu::select::{set_kernels, CpuKernels};
use pinpoint::backend::cpu::CpuBackend;
use pinpoint::backend::{AttnShape, Backend, HostTensor, Region, SeqSpan, TrainBackend};
use rand::{Rng, SeedableRng};
use std::sync::Mutex;

static LOCK: Mutex<()> = Mutex::new(());
const EPS: f64 = f32::EPSILON as f64;

/// `f` under the fast kernels, then under the reference loops.
fn both<T>(f: impl Fn() -> T) -> (T, T) {
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    set_kernels(CpuKernels::Fast);
    let fast = f();
    set_kernels(CpuKernels::Reference);
    let reference = f();
    set_kernels(CpuKernels::Fast);
    (fast, reference)
}

fn rand_t(seed: u64, shape: &[usize]) -> HostTensor {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let n = shape.iter().product();
    HostTensor::new(
        shape.to_vec(),
        (0..n).map(|_| r.gen_range(-1.0f32..1.0)).collect(),
    )
}

/// Every element within its bound; names the first that is not.
fn within(what: &str, fast: &[f32], reference: &[f32], bound: impl Fn(usize) -> f64) {
    assert_eq!(fast.len(), reference.len(), "{what}: lengths");
    for (i, (&a, &b)) in fast.iter().zip(reference).enumerate() {
        let d = (a as f64 - b as f64).abs();
        assert!(
            d <= bound(i),
            "{what}: element {i}: fast {a} vs reference {b} (|d| {d:.3e} > {:.3e})",
            bound(i)
        );
    }
}

/// `sum_t |x[i, t] w[j, t]|` of `x [n, k] @ w [m, k]^T` per output element.
fn abs_products(x: &HostTensor, w: &HostTensor) -> Vec<f64> {
    let (n, k, m) = (x.shape[0], x.shape[1], w.shape[0]);
    let mut out = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..m {
            out[i * m + j] = (0..k)
                .map(|t| (x.data[i * k + t] as f64 * w.data[j * k + t] as f64).abs())
                .sum();
        }
    }
    out
}

/// Small (dot-product kernel), tall (packed, AMX where worth it) and odd shapes.
#[test]
fn linear_forward_and_backward_match_the_reference() {
    let b = CpuBackend;
    for (case, &(n, k, m)) in [(3, 70, 45), (37, 300, 70), (200, 520, 300)]
        .iter()
        .enumerate()
    {
        let s = 10 * case as u64;
        let (x, w) = (rand_t(s + 1, &[n, k]), rand_t(s + 2, &[m, k]));
        let (f, r) = both(|| b.linear(&x, &w).unwrap());
        let sums = abs_products(&x, &w);
        within(&format!("linear {n}x{k}x{m}"), &f.data, &r.data, |i| {
            2.0 * k as f64 * EPS * sums[i] + 1e-30
        });
        // dx [n, k] = dy [n, m] @ w [m, k]: sums of m terms.
        let dy = rand_t(s + 3, &[n, m]);
        let wt = transpose(&w);
        let (f, r) = both(|| b.linear_bwd_input(&dy, &w).unwrap());
        let sums = abs_products(&dy, &wt);
        within(
            &format!("linear_bwd_input {n}x{k}x{m}"),
            &f.data,
            &r.data,
            |i| 2.0 * m as f64 * EPS * sums[i] + 1e-30,
        );
        // dw [m, k] += dy^T @ x, for a row region: sums of n terms onto a start value of 1
        // (one more term).
        let reg = Region::Rows {
            start: 1,
            len: m - 2,
        };
        let (f, r) = both(|| {
            let mut dw = HostTensor::new(vec![m - 2, k], vec![1.0; (m - 2) * k]);
            b.linear_bwd_weight(&dy, &x, reg, &mut dw).unwrap();
            dw
        });
        let sums = abs_products(&transpose(&dy), &transpose(&x));
        within(
            &format!("linear_bwd_weight {n}x{k}x{m}"),
            &f.data,
            &r.data,
            |i| {
                let (row, col) = (i / k + 1, i % k);
                2.0 * (n + 1) as f64 * EPS * (sums[row * k + col] + 1.0) + 1e-30
            },
        );
    }
}

fn transpose(t: &HostTensor) -> HostTensor {
    let (r, c) = (t.shape[0], t.shape[1]);
    let mut out = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = t.data[i * c + j];
        }
    }
    HostTensor::new(vec![c, r], out)
}

fn max_abs(v: &[f32]) -> f64 {
    v.iter().fold(0.0f64, |a, &x| a.max((x as f64).abs()))
}

/// Two sequences of 40 and 23 queries (the blocked kernels need 16), GQA 4 over 2, with
/// and without a sliding window; the forward and the backward (per-row on the reference).
#[test]
fn attention_forward_and_backward_match_the_reference() {
    let b = CpuBackend;
    let (h, g, dh) = (4, 2, 16);
    let spans = [
        SeqSpan {
            q_start: 0,
            q_len: 40,
            kv_start: 0,
            pos0: 0,
            kv_new: None,
        },
        SeqSpan {
            q_start: 40,
            q_len: 23,
            kv_start: 40,
            pos0: 0,
            kv_new: None,
        },
    ];
    let n = 63;
    for window in [None, Some(9)] {
        let shape = AttnShape {
            n_heads: h,
            n_kv_heads: g,
            head_dim: dh,
            window,
        };
        let q = rand_t(21, &[n, h * dh]);
        let k = rand_t(22, &[n, g * dh]);
        let v = rand_t(23, &[n, g * dh]);
        let dz = rand_t(24, &[n, h * dh]);
        let bound = |scale: f64| 4.0 * (dh + 40) as f64 * EPS * (scale + 1.0);
        let (f, r) = both(|| b.attention(&q, &k, &v, &spans, shape, &[(0, 1)]).unwrap());
        let tol = bound(max_abs(&r.0.data));
        within(
            &format!("attention z {window:?}"),
            &f.0.data,
            &r.0.data,
            |_| tol,
        );
        within(
            &format!("attention pattern {window:?}"),
            &f.1[0].probs.data,
            &r.1[0].probs.data,
            |_| tol,
        );
        let (f, r) = both(|| b.attention_bwd(&dz, &q, &k, &v, &spans, shape).unwrap());
        for (name, a, c) in [("dq", &f.0, &r.0), ("dk", &f.1, &r.1), ("dv", &f.2, &r.2)] {
            let tol = bound(max_abs(&c.data));
            within(
                &format!("attention_bwd {name} {window:?}"),
                &a.data,
                &c.data,
                |_| tol,
            );
        }
    }
}

/// RMSNorm (a sum of squares over d), its backward (two more sums over d and the weight
/// gradient over n rows), SwiGLU, the cross-entropy (a sum over the vocabulary) and RoPE.
#[test]
fn row_ops_match_the_reference() {
    let b = CpuBackend;
    let (n, d, vocab) = (29, 150, 1000);
    let x = rand_t(31, &[n, d]);
    let w = rand_t(32, &[d]);
    let dy = rand_t(33, &[n, d]);
    let (f, r) = both(|| b.rmsnorm(&x, &w, 1e-5).unwrap());
    // y = w x r: r's sum of d squares (relative error d eps), times at most |w x r| <= the
    // output's scale.
    let tol = 4.0 * d as f64 * EPS * (max_abs(&r.data) + 1.0);
    within("rmsnorm", &f.data, &r.data, |_| tol);
    let (f, r) = both(|| {
        let mut dw = HostTensor::zeros(vec![d]);
        let dx = b.rmsnorm_bwd(&dy, &x, &w, 1e-5, Some(&mut dw)).unwrap();
        (dx, dw)
    });
    let tol = 8.0 * d as f64 * EPS * (max_abs(&r.0.data) + 1.0);
    within("rmsnorm_bwd dx", &f.0.data, &r.0.data, |_| tol);
    let tol = 4.0 * n as f64 * EPS * (max_abs(&r.1.data) + 1.0);
    within("rmsnorm_bwd dw", &f.1.data, &r.1.data, |_| tol);

    let (gate, up) = (rand_t(34, &[n, d]), rand_t(35, &[n, d]));
    let (f, r) = both(|| b.swiglu(&gate, &up).unwrap());
    within("swiglu", &f.data, &r.data, |i| {
        4.0 * EPS * (r.data[i] as f64).abs() + 1e-30
    });
    let (f, r) = both(|| b.swiglu_bwd(&dy, &gate, &up).unwrap());
    within("swiglu_bwd dgate", &f.0.data, &r.0.data, |i| {
        8.0 * EPS * (r.0.data[i] as f64).abs() + 1e-30
    });
    within("swiglu_bwd dup", &f.1.data, &r.1.data, |i| {
        4.0 * EPS * (r.1.data[i] as f64).abs() + 1e-30
    });

    let logits = HostTensor::new(
        vec![n, vocab],
        rand_t(36, &[n, vocab])
            .data
            .iter()
            .map(|v| v * 8.0)
            .collect(),
    );
    let targets: Vec<Option<u32>> = (0..n)
        .map(|i| (i % 3 != 0).then_some(i as u32 * 7))
        .collect();
    let (f, r) = both(|| b.xent_fwd_bwd(&logits, &targets, 0.5).unwrap());
    // Each row's loss is log(sum of V exponentials) + max - l_t: error V eps of the log's
    // argument, relative; summed over n rows.
    let loss_tol = 4.0 * vocab as f64 * EPS * (r.0.abs() + n as f64);
    assert!(
        (f.0 - r.0).abs() <= loss_tol,
        "xent loss {} vs {}",
        f.0,
        r.0
    );
    within("xent dlogits", &f.1.data, &r.1.data, |_| {
        4.0 * vocab as f64 * EPS
    });

    let positions: Vec<usize> = (0..n).map(|i| (i * 37) % 500).collect();
    let inv: Vec<f32> = (0..8)
        .map(|i| 1.0 / 10000f32.powf(i as f32 / 8.0))
        .collect();
    let (f, r) = both(|| {
        let mut t = rand_t(37, &[n, 64]);
        b.rope(&mut t, 16, &positions, &inv).unwrap();
        b.rope_bwd(&mut t, 16, &positions, &inv).unwrap();
        t
    });
    assert_eq!(f.data, r.data, "rope: one formula, bit for bit");
}
