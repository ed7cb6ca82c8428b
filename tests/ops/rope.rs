//! Rotate-half RoPE and its backward.

use super::*;

/// Rotate-half RoPE of `x [n, heads * dh]` by `sign * angle`, row i at `positions[i]`.
/// The angle as HF and both backends take it: HF's f32 inverse frequencies
/// `1 / theta^(2i / dh)` times the position, an f32 product.
fn rope_ref(x: &[f64], dh: usize, positions: &[usize], theta: f64, sign: f64) -> Vec<f64> {
    let c = x.len() / positions.len();
    let half = dh / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0f32 / (theta as f32).powf((2 * i) as f32 / dh as f32))
        .collect();
    let mut out = vec![0.0f64; x.len()];
    for (row, &p) in positions.iter().enumerate() {
        for h in 0..c / dh {
            for (i, &f) in inv.iter().enumerate() {
                let a = (p as f32 * f) as f64;
                let (cs, sn) = (a.cos(), sign * a.sin());
                let at = row * c + h * dh + i;
                let (x1, x2) = (x[at], x[at + half]);
                out[at] = x1 * cs - x2 * sn;
                out[at + half] = x2 * cs + x1 * sn;
            }
        }
    }
    out
}

/// RoPE and its backward (the rotation by -angle, the transpose of the forward), positions
/// out of order and up to 5000; rope_bwd undoes rope on the device.
fn rope_body<B: TrainBackend>(b: &B, tol: f32) {
    let cases = [
        (29, 3, 64, 10000.0),
        (5, 4, 8, 10000.0),
        (37, 3, 16, 10000.0),
        (19, 5, 64, 1e6),
        (3, 2, 128, 5e5),
    ];
    for (case, (n, heads, dh, theta)) in cases.into_iter().enumerate() {
        let s = 10 * case as u64;
        let x = rand_t(s + 8, &[n, heads * dh], 1.0);
        let mut r = rand::rngs::StdRng::seed_from_u64(s + 9);
        let positions: Vec<usize> = match case {
            0 => (0..n).map(|i| (i * 7 + 3) % 41).collect(),
            _ => (0..n).map(|_| r.gen_range(0..5000)).collect(),
        };
        let xf = f64s(&x);
        let fwd = rope_ref(&xf, dh, &positions, theta, 1.0);
        let bwd = rope_ref(&xf, dh, &positions, theta, -1.0);
        if case == 0 {
            // d/dx sum(r * rope(x)) = rope_bwd(r): with r = x, the backward of x.
            let f = |y: &[f64]| dot(&xf, &rope_ref(y, dh, &positions, theta, 1.0));
            fd_check("rope ref bwd", &f, &xf, &bwd);
        }
        let what = format!("rope {n}x{heads}x{dh} theta {theta}");
        let mut t = up(b, &x);
        b.rope(&mut t, dh, &positions, theta).unwrap();
        check(&what, &run(b, &t), &f32s(&fwd), tol);
        let mut t = up(b, &x);
        b.rope_bwd(&mut t, dh, &positions, theta).unwrap();
        check(&format!("{what} bwd"), &run(b, &t), &f32s(&bwd), tol);
        let mut t = up(b, &x);
        b.rope(&mut t, dh, &positions, theta).unwrap();
        b.rope_bwd(&mut t, dh, &positions, theta).unwrap();
        check(&format!("{what} then bwd"), &run(b, &t), &x.data, tol);
    }
}
test_device!(rope_body, rope_cpu, rope_cuda);
