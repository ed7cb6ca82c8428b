//! Rotate-half RoPE and its backward.

use super::*;

/// HF's f32 inverse frequencies of plain RoPE, `1 / theta^(2i / dh)`.
fn plain_inv(dh: usize, theta: f64) -> Vec<f32> {
    (0..dh / 2)
        .map(|i| 1.0f32 / (theta as f32).powf((2 * i) as f32 / dh as f32))
        .collect()
}

/// Rotate-half RoPE of `x [n, heads * dh]` by `sign * angle`, row i at `positions[i]`.
/// The angle as HF and both backends take it: the f32 inverse frequency `inv[i]` times the
/// position, an f32 product.
fn rope_ref(x: &[f64], dh: usize, positions: &[usize], inv: &[f32], sign: f64) -> Vec<f64> {
    let c = x.len() / positions.len();
    let half = dh / 2;
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
/// out of order and up to 5000; rope_bwd undoes rope on the device. The last case takes
/// Llama-3.1's scaled table (model/rope.rs, checked against HF in tests/rope_variants.rs):
/// the backends read any table.
fn rope_body<B: TrainBackend>(b: &B, tol: f32) {
    use pinpoint::model::rope::{Rope, RopeScaling};
    let llama3 = |theta: f64, dh: usize| {
        Rope {
            theta,
            head_dim: dh,
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            },
        }
        .table(0)
        .inv_freq
    };
    let cases = [
        (29, 3, 64, plain_inv(64, 10000.0)),
        (5, 4, 8, plain_inv(8, 10000.0)),
        (37, 3, 16, plain_inv(16, 10000.0)),
        (19, 5, 64, plain_inv(64, 1e6)),
        (3, 2, 128, plain_inv(128, 5e5)),
        (11, 3, 128, llama3(5e5, 128)),
    ];
    for (case, (n, heads, dh, inv)) in cases.into_iter().enumerate() {
        let s = 10 * case as u64;
        let x = rand_t(s + 8, &[n, heads * dh], 1.0);
        let mut r = rand::rngs::StdRng::seed_from_u64(s + 9);
        let positions: Vec<usize> = match case {
            0 => (0..n).map(|i| (i * 7 + 3) % 41).collect(),
            _ => (0..n).map(|_| r.gen_range(0..5000)).collect(),
        };
        let xf = f64s(&x);
        let fwd = rope_ref(&xf, dh, &positions, &inv, 1.0);
        let bwd = rope_ref(&xf, dh, &positions, &inv, -1.0);
        if case == 0 {
            // d/dx sum(r * rope(x)) = rope_bwd(r): with r = x, the backward of x.
            let f = |y: &[f64]| dot(&xf, &rope_ref(y, dh, &positions, &inv, 1.0));
            fd_check("rope ref bwd", &f, &xf, &bwd);
        }
        let what = format!("rope {n}x{heads}x{dh} case {case}");
        let mut t = up(b, &x);
        b.rope(&mut t, dh, &positions, &inv).unwrap();
        check(&what, &run(b, &t), &f32s(&fwd), tol);
        let mut t = up(b, &x);
        b.rope_bwd(&mut t, dh, &positions, &inv).unwrap();
        check(&format!("{what} bwd"), &run(b, &t), &f32s(&bwd), tol);
        let mut t = up(b, &x);
        b.rope(&mut t, dh, &positions, &inv).unwrap();
        b.rope_bwd(&mut t, dh, &positions, &inv).unwrap();
        check(&format!("{what} then bwd"), &run(b, &t), &x.data, tol);
    }
}
test_device!(rope_body, rope_cpu, rope_cuda);
