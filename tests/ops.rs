//! One body per op, run on every device (the way candle's `test_device!` does it): the op
//! on the device against an f64 reference computed here on the host, per element and over
//! the whole tensor (`checks::check`). The CPU variant runs everywhere (tolerance of f32
//! arithmetic); the CUDA variant is `#[ignore = "needs a GPU"]` (bf16 storage) and runs with
//! `--include-ignored` (scripts/gpu-check.sh). Inputs are bf16-exact, so both devices see
//! the same values. Awkward sizes: no dimension is a multiple of a tile.

#[cfg(feature = "cuda")]
mod cuda_common;
#[cfg(feature = "cuda")]
use cuda_common::check;
#[cfg(not(feature = "cuda"))]
#[path = "checks/mod.rs"]
mod checks;
#[cfg(not(feature = "cuda"))]
use checks::check;
use pinpoint::backend::{rope_inv_freq, TrainBackend};
use pinpoint::model::HostTensor;
use rand::{Rng, SeedableRng};

/// Relative tolerance of an f32 op against f64, and of a bf16 op.
const CPU_TOL: f32 = 1e-5;
#[cfg(feature = "cuda")]
const GPU_TOL: f32 = 1e-2;

/// `#[test] fn $cpu` runs `$body` on the CPU backend; `$cuda` (ignored without a GPU) on
/// the CUDA backend.
macro_rules! test_device {
    ($body:ident, $cpu:ident, $cuda:ident) => {
        #[test]
        fn $cpu() {
            $body(&pinpoint::backend::cpu::CpuBackend, CPU_TOL);
        }
        #[cfg(feature = "cuda")]
        #[test]
        #[ignore = "needs a GPU"]
        fn $cuda() {
            $body(&cuda_common::gpu(stringify!($cuda)), GPU_TOL);
        }
    };
}

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

fn run<B: TrainBackend>(b: &B, t: &B::Tensor) -> Vec<f32> {
    b.download(t).unwrap().data
}

const EPS: f32 = 1e-5;

/// RMSNorm forward and backward (dx, and dw accumulated onto a nonzero buffer).
fn rmsnorm_body<B: TrainBackend>(b: &B, tol: f32) {
    let (n, d) = (33, 4100);
    let x = rand_t(1, &[n, d], 2.0);
    let w = rand_t(2, &[d], 1.0);
    let dy = rand_t(3, &[n, d], 1.0);
    let dw0 = rand_t(4, &[d], 0.5);
    let (mut y, mut dx) = (vec![0.0f64; n * d], vec![0.0f64; n * d]);
    let mut dw: Vec<f64> = dw0.data.iter().map(|&v| v as f64).collect();
    for i in 0..n {
        let xr = &x.data[i * d..(i + 1) * d];
        let dyr = &dy.data[i * d..(i + 1) * d];
        let ms = xr.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / d as f64;
        let r = 1.0 / (ms + EPS as f64).sqrt();
        let gx: f64 = (0..d)
            .map(|j| w.data[j] as f64 * dyr[j] as f64 * xr[j] as f64)
            .sum();
        for j in 0..d {
            let (xv, wv, dyv) = (xr[j] as f64, w.data[j] as f64, dyr[j] as f64);
            y[i * d + j] = wv * xv * r;
            dx[i * d + j] = r * wv * dyv - xv * r.powi(3) * gx / d as f64;
            dw[j] += dyv * xv * r;
        }
    }
    let (xt, wt, dyt) = (
        b.upload(&x).unwrap(),
        b.upload(&w).unwrap(),
        b.upload(&dy).unwrap(),
    );
    check(
        "rmsnorm",
        &run(b, &b.rmsnorm(&xt, &wt, EPS).unwrap()),
        &f32s(&y),
        tol,
    );
    let mut dwt = b.upload(&dw0).unwrap();
    let dxt = b.rmsnorm_bwd(&dyt, &xt, &wt, EPS, Some(&mut dwt)).unwrap();
    check("rmsnorm_bwd dx", &run(b, &dxt), &f32s(&dx), tol);
    check("rmsnorm_bwd dw", &run(b, &dwt), &f32s(&dw), tol);
}
test_device!(rmsnorm_body, rmsnorm_cpu, rmsnorm_cuda);

/// SwiGLU forward and backward.
fn swiglu_body<B: TrainBackend>(b: &B, tol: f32) {
    let shape = [37, 1531];
    let (g, u, da) = (
        rand_t(5, &shape, 4.0),
        rand_t(6, &shape, 2.0),
        rand_t(7, &shape, 1.0),
    );
    let n = g.numel();
    let (mut act, mut dg, mut du) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    for i in 0..n {
        let (gv, uv, dv) = (g.data[i] as f64, u.data[i] as f64, da.data[i] as f64);
        let s = 1.0 / (1.0 + (-gv).exp());
        act[i] = gv * s * uv;
        dg[i] = dv * uv * s * (1.0 + gv * (1.0 - s));
        du[i] = dv * gv * s;
    }
    let (gt, ut, dat) = (
        b.upload(&g).unwrap(),
        b.upload(&u).unwrap(),
        b.upload(&da).unwrap(),
    );
    check(
        "swiglu",
        &run(b, &b.swiglu(&gt, &ut).unwrap()),
        &f32s(&act),
        tol,
    );
    let (dgt, dut) = b.swiglu_bwd(&dat, &gt, &ut).unwrap();
    check("swiglu_bwd dgate", &run(b, &dgt), &f32s(&dg), tol);
    check("swiglu_bwd dup", &run(b, &dut), &f32s(&du), tol);
}
test_device!(swiglu_body, swiglu_cpu, swiglu_cuda);

/// Rotate-half RoPE and its backward (the rotation by -angle), positions out of order.
fn rope_body<B: TrainBackend>(b: &B, tol: f32) {
    let (n, heads, dh, theta) = (29, 3, 64, 10000.0);
    let c = heads * dh;
    let x = rand_t(8, &[n, c], 1.0);
    let positions: Vec<usize> = (0..n).map(|i| (i * 7 + 3) % 41).collect();
    let inv = rope_inv_freq(dh, theta);
    let half = dh / 2;
    let rotate = |sign: f64| {
        let mut out = vec![0.0f64; n * c];
        for (row, &p) in positions.iter().enumerate() {
            for h in 0..heads {
                for (i, &f) in inv.iter().enumerate() {
                    // The angle as HF and both backends take it: an f32 product.
                    let a = (p as f32 * f) as f64;
                    let (cs, sn) = (a.cos(), sign * a.sin());
                    let at = row * c + h * dh + i;
                    let (x1, x2) = (x.data[at] as f64, x.data[at + half] as f64);
                    out[at] = x1 * cs - x2 * sn;
                    out[at + half] = x2 * cs + x1 * sn;
                }
            }
        }
        f32s(&out)
    };
    let mut t = b.upload(&x).unwrap();
    b.rope(&mut t, dh, &positions, &inv).unwrap();
    check("rope", &run(b, &t), &rotate(1.0), tol);
    let mut t = b.upload(&x).unwrap();
    b.rope_bwd(&mut t, dh, &positions, &inv).unwrap();
    check("rope_bwd", &run(b, &t), &rotate(-1.0), tol);
}
test_device!(rope_body, rope_cpu, rope_cuda);
