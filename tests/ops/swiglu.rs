//! SwiGLU forward and backward.

use super::*;

fn silu_up(g: f64, u: f64) -> f64 {
    g / (1.0 + (-g).exp()) * u
}

/// SwiGLU forward and backward.
fn swiglu_body<B: TrainBackend>(b: &B, tol: f32) {
    let shapes = [(37, 1531), (1, 48), (7, 333), (33, 4100), (300, 64)];
    for (case, (n, d)) in shapes.into_iter().enumerate() {
        let s = 10 * case as u64;
        let (g, u, da) = (
            rand_t(s + 5, &[n, d], 4.0),
            rand_t(s + 6, &[n, d], 2.0),
            rand_t(s + 7, &[n, d], 1.0),
        );
        let (gf, uf, daf) = (f64s(&g), f64s(&u), f64s(&da));
        let act: Vec<f64> = gf.iter().zip(&uf).map(|(&g, &u)| silu_up(g, u)).collect();
        let (mut dg, mut du) = (vec![0.0; n * d], vec![0.0; n * d]);
        for i in 0..n * d {
            let (gv, uv, dv) = (gf[i], uf[i], daf[i]);
            let s = 1.0 / (1.0 + (-gv).exp());
            dg[i] = dv * uv * s * (1.0 + gv * (1.0 - s));
            du[i] = dv * gv * s;
        }
        if case == 1 {
            let fwd = |g: &[f64], u: &[f64]| -> f64 {
                g.iter()
                    .zip(u)
                    .zip(&daf)
                    .map(|((&g, &u), r)| r * silu_up(g, u))
                    .sum()
            };
            fd_check("swiglu ref dgate", &|g| fwd(g, &uf), &gf, &dg);
            fd_check("swiglu ref dup", &|u| fwd(&gf, u), &uf, &du);
        }
        let (gt, ut, dat) = (up(b, &g), up(b, &u), up(b, &da));
        let what = format!("swiglu {n}x{d}");
        check(
            &what,
            &run(b, &b.swiglu(&gt, &ut).unwrap()),
            &f32s(&act),
            tol,
        );
        let (dgt, dut) = b.swiglu_bwd(&dat, &gt, &ut).unwrap();
        check(&format!("{what} bwd dgate"), &run(b, &dgt), &f32s(&dg), tol);
        check(&format!("{what} bwd dup"), &run(b, &dut), &f32s(&du), tol);
    }
}
test_device!(swiglu_body, swiglu_cpu, swiglu_cuda);
