//! The packed and dot-product GEMMs against a naive f64 reference.

use super::packed::{gemm_avx512_ptr, pack_panels, KC_MAX, NR};
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

/// Both ways of packing A (whole, per block), A row-major, column-major and strided
/// both ways, several reduction passes, tail tiles, accumulate or not.
#[test]
#[cfg(target_arch = "x86_64")]
fn packed_a_layouts_match_naive() {
    if !std::arch::is_x86_feature_detected!("avx512f") {
        eprintln!("SKIPPED: no avx512f on this CPU");
        return;
    }
    let (n, k, m) = (31, 1700, 45);
    assert!(k > KC_MAX, "the test must span several reduction passes");
    let a: Vec<f32> = (0..n * k)
        .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
        .collect();
    let b: Vec<f32> = (0..k * m)
        .map(|i| ((i * 104729) % 89) as f32 / 89.0 - 0.5)
        .collect();
    // The same A stored three ways: element (r, c) at off + r * rs + c * cs.
    let row_major = a.clone();
    let col_major: Vec<f32> = (0..k * n).map(|i| a[(i % n) * k + i / n]).collect();
    let (pad_rs, pad_cs) = (2 * k + 3, 2);
    let mut strided = vec![f32::NAN; 1 + n * pad_rs];
    for r in 0..n {
        for c in 0..k {
            strided[1 + r * pad_rs + c * pad_cs] = a[r * k + c];
        }
    }
    let layouts = [
        (&row_major, 0, k, 1),
        (&col_major, 0, 1, n),
        (&strided, 1, pad_rs, pad_cs),
    ];
    let sb = Strided {
        data: &b,
        off: 0,
        rs: m,
        cs: 1,
    };
    for (data, off, rs, cs) in layouts {
        let sa = Strided { data, off, rs, cs };
        for whole_a_max in [0, usize::MAX] {
            for accumulate in [false, true] {
                let mut got = vec![1.0f32; n * m];
                unsafe {
                    gemm_avx512_ptr(got.as_mut_ptr(), accumulate, n, m, k, sa, sb, whole_a_max)
                };
                for i in 0..n {
                    for j in 0..m {
                        let dot: f64 = (0..k)
                            .map(|t| a[i * k + t] as f64 * b[t * m + j] as f64)
                            .sum();
                        let want = dot + if accumulate { 1.0 } else { 0.0 };
                        assert!(
                            (got[i * m + j] as f64 - want).abs() < 1e-3,
                            "rs {rs} cs {cs} whole {whole_a_max} acc {accumulate} \
                             ({i},{j}): {} vs {want}",
                            got[i * m + j]
                        );
                    }
                }
            }
        }
    }
}

#[test]
#[cfg(target_arch = "x86_64")]
fn small_gemm_matches_naive() {
    if !std::arch::is_x86_feature_detected!("avx512f") {
        eprintln!("SKIPPED: no avx512f on this CPU");
        return;
    }
    // a transposed in memory, b row-major with a row stride wider than m, dst strided.
    let (n, k, m, ld, brs) = (19, 300, 45, 50, 47);
    let at: Vec<f32> = (0..k * n)
        .map(|i| ((i * 31) % 53) as f32 / 53.0 - 0.5)
        .collect();
    let b: Vec<f32> = (0..k * brs)
        .map(|i| ((i * 17) % 41) as f32 / 41.0 - 0.5)
        .collect();
    let mut got = vec![2.0f32; n * ld];
    let sa = Strided {
        data: &at,
        off: 0,
        rs: 1,
        cs: n,
    };
    let sb = Strided {
        data: &b,
        off: 1,
        rs: brs,
        cs: 1,
    };
    unsafe { gemm_small(got.as_mut_ptr(), ld, true, n, m, k, sa, sb) };
    for i in 0..n {
        for j in 0..ld {
            let want: f64 = if j < m {
                2.0 + (0..k)
                    .map(|t| at[t * n + i] as f64 * b[1 + t * brs + j] as f64)
                    .sum::<f64>()
            } else {
                2.0
            };
            assert!((got[i * ld + j] as f64 - want).abs() < 1e-3, "({i},{j})");
        }
    }
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
