//! Linear `y = x @ w^T`: the forward on every GEMM of the device, the input gradient and
//! the weight gradient of a region.

use super::*;
use pinpoint::backend::Gemm;

/// `x [n, k] @ w [m, k]^T` in f64.
fn matmul_t(x: &[f64], w: &[f64], k: usize) -> Vec<f64> {
    x.chunks(k)
        .flat_map(|xr| w.chunks(k).map(move |wr| dot(xr, wr)))
        .collect()
}

/// `a^T [c, r] @ b [r, d]` for `a [r, c]`, `b [r, d]`, in f64.
fn t_matmul(a: &[f64], b: &[f64], c: usize, d: usize) -> Vec<f64> {
    let mut out = vec![0.0; c * d];
    for (ar, br) in a.chunks(c).zip(b.chunks(d)) {
        for (i, &av) in ar.iter().enumerate() {
            for (o, &bv) in out[i * d..(i + 1) * d].iter_mut().zip(br) {
                *o += av * bv;
            }
        }
    }
    out
}

/// The forward on every GEMM the device lists (decode-sized, tile edges, `k % 8 != 0`).
fn linear_body<B: TrainBackend>(b: &B, tol: f32) {
    let shapes = [
        (1, 48, 80),
        (3, 64, 130),
        (8, 96, 33),
        (9, 40, 70),
        (65, 72, 129),
        (130, 200, 67),
        (257, 1000, 515),
        (17, 45, 31),
        (5, 13, 7),
        (70, 13, 9),
    ];
    let gemms: Vec<Option<Gemm>> = match b.gemms() {
        [] => vec![None],
        g => g.iter().copied().map(Some).collect(),
    };
    for (case, (n, k, m)) in shapes.into_iter().enumerate() {
        let s = 10 * case as u64;
        let (x, w) = (rand_t(s + 90, &[n, k], 1.0), rand_t(s + 91, &[m, k], 0.5));
        let want = f32s(&matmul_t(&f64s(&x), &f64s(&w), k));
        let (xt, wt) = (up(b, &x), up(b, &w));
        for gemm in &gemms {
            let y = match gemm {
                None => b.linear(&xt, &wt).unwrap(),
                Some(g) => b.linear_with_gemm(&xt, &wt, *g).unwrap(),
            };
            assert_eq!(b.shape(&y), &[n, m]);
            check(
                &format!("linear {gemm:?} {n}x{k}x{m}"),
                &run(b, &y),
                &want,
                tol,
            );
        }
    }
}
test_device!(linear_body, linear_cpu, linear_cuda);

/// `dx = dy @ w`, and `dw[reg] += (dy^T @ x)[reg]` onto a nonzero buffer, twice, for the
/// whole weight and row and column regions (one row or column included); a gradient
/// buffer of the wrong size and a region outside the weight refused.
fn linear_bwd_body<B: TrainBackend>(b: &B, tol: f32) {
    let shapes = [
        (1, 8, 5),
        (7, 33, 19),
        (65, 72, 129),
        (130, 200, 67),
        (257, 1000, 515),
        (3, 13, 7),
    ];
    for (case, (n, k, m)) in shapes.into_iter().enumerate() {
        let s = 10 * case as u64;
        let x = rand_t(s + 100, &[n, k], 1.0);
        let w = rand_t(s + 101, &[m, k], 0.5);
        let dy = rand_t(s + 102, &[n, m], 1.0);
        let (xf, wf, dyf) = (f64s(&x), f64s(&w), f64s(&dy));
        let mut dx = vec![0.0; n * k];
        for (i, dr) in dyf.chunks(m).enumerate() {
            for (o, &g) in dr.iter().enumerate() {
                for j in 0..k {
                    dx[i * k + j] += g * wf[o * k + j];
                }
            }
        }
        let dw = t_matmul(&dyf, &xf, m, k);
        if case == 1 {
            fd_check(
                "linear ref dx",
                &|x| dot(&dyf, &matmul_t(x, &wf, k)),
                &xf,
                &dx,
            );
            fd_check(
                "linear ref dw",
                &|w| dot(&dyf, &matmul_t(&xf, w, k)),
                &wf,
                &dw,
            );
        }
        let (xt, wt, dyt) = (up(b, &x), up(b, &w), up(b, &dy));
        let what = format!("linear_bwd {n}x{k}x{m}");
        let dxt = b.linear_bwd_input(&dyt, &wt).unwrap();
        assert_eq!(b.shape(&dxt), &[n, k]);
        check(&format!("{what} input"), &run(b, &dxt), &f32s(&dx), tol);
        let regions = [
            Region::Full,
            Region::Rows {
                start: m / 3,
                len: (m / 2).max(1),
            },
            Region::Cols {
                start: k / 4,
                len: (k / 3).max(1),
            },
            Region::Rows {
                start: m - 1,
                len: 1,
            },
            Region::Cols {
                start: k - 1,
                len: 1,
            },
        ];
        for (ri, reg) in regions.into_iter().enumerate() {
            let start = rand_t(s + 103 + ri as u64, &reg.shape(&[m, k]), 3.0);
            let want: Vec<f64> = region(&dw, &[m, k], reg)
                .iter()
                .zip(&start.data)
                .map(|(g, &s)| s as f64 + 2.0 * g)
                .collect();
            let mut got = up(b, &start);
            b.linear_bwd_weight(&dyt, &xt, reg, &mut got).unwrap();
            b.linear_bwd_weight(&dyt, &xt, reg, &mut got).unwrap();
            check(
                &format!("{what} weight {reg:?} (+= twice)"),
                &run(b, &got),
                &f32s(&want),
                tol,
            );
        }
        let mut bad = b.zeros(&[m, k + 1]).unwrap();
        assert!(b
            .linear_bwd_weight(&dyt, &xt, Region::Full, &mut bad)
            .is_err());
        let mut part = b.zeros(&[2, k]).unwrap();
        let outside = Region::Rows {
            start: m - 1,
            len: 2,
        };
        assert!(b.linear_bwd_weight(&dyt, &xt, outside, &mut part).is_err());
    }
}
test_device!(linear_bwd_body, linear_bwd_cpu, linear_bwd_cuda, 2e-2);
