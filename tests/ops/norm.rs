//! RMSNorm forward and backward.

use super::*;

const EPS: f32 = 1e-5;

/// `w * x / rms(x)` per row of `d`.
fn rmsnorm_ref(x: &[f64], w: &[f64]) -> Vec<f64> {
    let d = w.len();
    x.chunks(d)
        .flat_map(|xr| {
            let r = 1.0 / (xr.iter().map(|v| v * v).sum::<f64>() / d as f64 + EPS as f64).sqrt();
            xr.iter().zip(w).map(move |(xv, wv)| wv * xv * r)
        })
        .collect()
}

/// `(dx, dw)` of [`rmsnorm_ref`] for the output gradient `dy`.
fn rmsnorm_bwd_ref(dy: &[f64], x: &[f64], w: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let d = w.len();
    let (mut dx, mut dw) = (vec![0.0; x.len()], vec![0.0; d]);
    for (i, (xr, dyr)) in x.chunks(d).zip(dy.chunks(d)).enumerate() {
        let r = 1.0 / (xr.iter().map(|v| v * v).sum::<f64>() / d as f64 + EPS as f64).sqrt();
        let gx: f64 = (0..d).map(|j| w[j] * dyr[j] * xr[j]).sum();
        for j in 0..d {
            dx[i * d + j] = r * w[j] * dyr[j] - xr[j] * r.powi(3) * gx / d as f64;
            dw[j] += dyr[j] * xr[j] * r;
        }
    }
    (dx, dw)
}

/// RMSNorm forward and backward: dx, dw accumulated onto a nonzero buffer, and dx alone.
fn rmsnorm_body<B: TrainBackend>(b: &B, tol: f32) {
    for (case, (n, d)) in [(1, 48), (7, 333), (33, 4100), (300, 64)]
        .into_iter()
        .enumerate()
    {
        let s = 10 * case as u64;
        let x = rand_t(s + 1, &[n, d], 2.0);
        let w = rand_t(s + 2, &[d], 1.5);
        let dy = rand_t(s + 3, &[n, d], 1.0);
        let dw0 = rand_t(s + 4, &[d], 2.0);
        let (xf, wf, dyf) = (f64s(&x), f64s(&w), f64s(&dy));
        let y = rmsnorm_ref(&xf, &wf);
        let (dx, mut dw) = rmsnorm_bwd_ref(&dyf, &xf, &wf);
        if case == 0 {
            fd_check(
                "rmsnorm ref dx",
                &|x| dot(&dyf, &rmsnorm_ref(x, &wf)),
                &xf,
                &dx,
            );
            fd_check(
                "rmsnorm ref dw",
                &|w| dot(&dyf, &rmsnorm_ref(&xf, w)),
                &wf,
                &dw,
            );
        }
        dw.iter_mut()
            .zip(&dw0.data)
            .for_each(|(a, &b)| *a += b as f64);
        let (xt, wt, dyt) = (up(b, &x), up(b, &w), up(b, &dy));
        let what = format!("rmsnorm {n}x{d}");
        check(
            &what,
            &run(b, &b.rmsnorm(&xt, &wt, EPS).unwrap()),
            &f32s(&y),
            tol,
        );
        let mut dwt = up(b, &dw0);
        let dxt = b.rmsnorm_bwd(&dyt, &xt, &wt, EPS, Some(&mut dwt)).unwrap();
        check(&format!("{what} bwd dx"), &run(b, &dxt), &f32s(&dx), tol);
        check(
            &format!("{what} bwd dw (+=)"),
            &run(b, &dwt),
            &f32s(&dw),
            tol,
        );
        let dxt = b.rmsnorm_bwd(&dyt, &xt, &wt, EPS, None).unwrap();
        check(
            &format!("{what} bwd dx (no dw)"),
            &run(b, &dxt),
            &f32s(&dx),
            tol,
        );
    }
}
test_device!(rmsnorm_body, rmsnorm_cpu, rmsnorm_cuda);
