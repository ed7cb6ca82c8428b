//! The GEMMs that run on every CPU against a naive f64 reference (the AVX-512 and AMX
//! kernels: tests/cpu_gemm.rs, ignored at run time where the CPU lacks them).

use super::packed::{pack_panels, NR};
use super::*;

/// Naive f64 reference.
fn naive(x: &[f32], w: &[f32], n: usize, k: usize, m: usize) -> Vec<f32> {
    let mut out = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..m {
            out[i * m + j] = (0..k)
                .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                .sum::<f64>() as f32;
        }
    }
    out
}

#[test]
fn pack_panels_of_transposed_and_row_major_b() {
    let (k, m) = (37, 75);
    let w: Vec<f32> = (0..k * m).map(|i| i as f32).collect();
    for (rs, cs) in [(1, k), (m, 1)] {
        let b = Strided {
            data: &w,
            off: 0,
            rs,
            cs,
        };
        let p = pack_panels(b, k, m);
        let p = p.as_slice();
        for pi in 0..m.div_ceil(NR) {
            for kk in 0..k {
                for j in 0..NR {
                    let c = pi * NR + j;
                    let want = if c < m { w[kk * rs + c * cs] } else { 0.0 };
                    assert_eq!(p[(pi * k + kk) * NR + j], want, "p{pi} k{kk} j{j}");
                }
            }
        }
    }
}

#[test]
fn matches_naive_on_awkward_shapes() {
    let mut seed = 1u64;
    let mut rnd = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    for &(n, k, m) in &[
        (1, 1, 1),
        (3, 17, 5),
        (5, 33, 7),
        (67, 129, 70),
        (130, 64, 9),
        (1, 576, 131),
        (8, 15, 65),
        (150, 530, 700),
    ] {
        let x: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
        let w: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
        let want = naive(&x, &w, n, k, m);
        for (name, got) in [
            ("dispatch", matmul_t(&x, &w, n, k, m)),
            ("gemm crate", {
                let mut o = vec![0.0; n * m];
                matmul_t_gemm_crate(&x, &w, n, k, m, &mut o);
                o
            }),
        ] {
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                err < 1e-4 * (k as f32).sqrt(),
                "{name} {n}x{k}x{m}: max err {err}"
            );
        }
    }
}
