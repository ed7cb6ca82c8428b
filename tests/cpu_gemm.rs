//! The CPU GEMM kernels that need a CPU feature, against f64 references: the packed and
//! small AVX-512 GEMMs, and the AMX GEMM (AMX-BF16 tiles). Each trial reports "ignored",
//! with the reason, where this CPU lacks the feature (`harness = false`: libtest-mimic
//! trials can be ignored at run time, `#[test]` only at compile time). The kernels that
//! run everywhere are tested in `backend/cpu/gemm/tests.rs`; the dispatch against the
//! reference loops in `tests/cpu_reference.rs`.

use libtest_mimic::{Arguments, Completion, Failed, Trial};

#[cfg(target_arch = "x86_64")]
mod kernels {
    use pinpoint::backend::cpu::gemm::amx::{gemm_sum, split3, PIECES};
    use pinpoint::backend::cpu::gemm::packed::{gemm_avx512_ptr, KC_MAX};
    use pinpoint::backend::cpu::gemm::{gemm_small, GemmPart, Strided};
    use std::arch::x86_64::*;

    /// Both ways of packing A (whole, per block), A row-major, column-major and strided
    /// both ways, several reduction passes, tail tiles, accumulate or not.
    pub fn packed_a_layouts_match_naive() {
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

    pub fn small_gemm_matches_naive() {
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

    pub fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    }

    /// Every layout of A and B the engine passes (row-major, transposed, strided), tails in
    /// n, m and k, several tasks with blocks inside and overhanging the output (300 x 800),
    /// accumulate or not: the error against an f64 reference is at most that of a
    /// serial f32 FMA loop over the same products (plus a little slack), element by element
    /// summed over the matrix.
    pub fn matches_f64_reference_within_f32_error() {
        let mut seed = 7u64;
        for &(n, k, m) in &[
            (16, 32, 16),
            (37, 100, 45),
            (70, 577, 33),
            (33, 1000, 130),
            (300, 200, 800),
        ] {
            let a: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed) * 3.0).collect();
            let b: Vec<f32> = (0..k * m).map(|_| lcg(&mut seed) * 0.01).collect();
            let at: Vec<f32> = (0..k * n).map(|i| a[(i % n) * k + i / n]).collect();
            let bt: Vec<f32> = (0..m * k).map(|i| b[(i % k) * m + i / k]).collect();
            let (pad, gap) = (3, 2);
            let mut bs = vec![f32::NAN; pad + k * m * gap];
            for i in 0..k * m {
                bs[pad + i * gap] = b[i];
            }
            let a_ways = [
                Strided {
                    data: &a,
                    off: 0,
                    rs: k,
                    cs: 1,
                },
                Strided {
                    data: &at,
                    off: 0,
                    rs: 1,
                    cs: n,
                },
            ];
            let b_ways = [
                Strided {
                    data: &b,
                    off: 0,
                    rs: m,
                    cs: 1,
                },
                Strided {
                    data: &bt,
                    off: 0,
                    rs: 1,
                    cs: k,
                },
                Strided {
                    data: &bs,
                    off: pad,
                    rs: m * gap,
                    cs: gap,
                },
            ];
            for sa in a_ways {
                for sb in b_ways {
                    for accumulate in [false, true] {
                        let mut got = vec![0.25f32; n * m];
                        let part = [GemmPart { a: sa, b: sb, k }];
                        unsafe { gemm_sum(got.as_mut_ptr(), accumulate, n, m, &part) };
                        let (mut err, mut serial_err) = (0f64, 0f64);
                        for i in 0..n {
                            for j in 0..m {
                                let init = if accumulate { 0.25 } else { 0.0 };
                                let (mut exact, mut serial) = (init as f64, init);
                                for t in 0..k {
                                    exact += a[i * k + t] as f64 * b[t * m + j] as f64;
                                    serial = a[i * k + t].mul_add(b[t * m + j], serial);
                                }
                                err += (got[i * m + j] as f64 - exact).abs();
                                serial_err += (serial as f64 - exact).abs();
                            }
                        }
                        assert!(
                            err <= 1.5 * serial_err + 1e-9,
                            "{n}x{k}x{m} a {:?} b {:?} acc {accumulate}: error {err:.3e} vs \
                             serial f32 {serial_err:.3e}",
                            (sa.rs, sa.cs),
                            (sb.rs, sb.cs)
                        );
                    }
                }
            }
        }
    }

    /// A sum of parts with different depths and layouts equals the sum of the f64 products,
    /// within the error of serial f32 over all the parts' products.
    pub fn sum_of_parts_matches_f64_reference() {
        let mut seed = 11u64;
        let (n, m) = (70, 50);
        // Part 0 is empty (k = 0): the next part must still start the outputs from zero.
        let ks = [0, 576, 40, 192];
        let a: Vec<Vec<f32>> = ks
            .iter()
            .map(|&k| (0..n * k).map(|_| lcg(&mut seed)).collect())
            .collect();
        let b: Vec<Vec<f32>> = ks
            .iter()
            .map(|&k| (0..k * m).map(|_| lcg(&mut seed)).collect())
            .collect();
        // Part 2's A column-major, the others row-major.
        let col_major = 2;
        let a_stored: Vec<Vec<f32>> = (0..ks.len())
            .map(|p| {
                let k = ks[p];
                if p == col_major {
                    (0..k * n).map(|i| a[p][(i % n) * k + i / n]).collect()
                } else {
                    a[p].clone()
                }
            })
            .collect();
        let parts: Vec<GemmPart> = (0..ks.len())
            .map(|p| {
                let (rs, cs) = if p == col_major { (1, n) } else { (ks[p], 1) };
                GemmPart {
                    a: Strided {
                        data: &a_stored[p],
                        off: 0,
                        rs,
                        cs,
                    },
                    b: Strided {
                        data: &b[p],
                        off: 0,
                        rs: m,
                        cs: 1,
                    },
                    k: ks[p],
                }
            })
            .collect();
        for accumulate in [false, true] {
            let mut got = vec![-1.5f32; n * m];
            unsafe { gemm_sum(got.as_mut_ptr(), accumulate, n, m, &parts) };
            let (mut err, mut serial_err) = (0f64, 0f64);
            for i in 0..n {
                for j in 0..m {
                    let init = if accumulate { -1.5f32 } else { 0.0 };
                    let (mut exact, mut serial) = (init as f64, init);
                    for (p, &k) in ks.iter().enumerate() {
                        for t in 0..k {
                            exact += a[p][i * k + t] as f64 * b[p][t * m + j] as f64;
                            serial = a[p][i * k + t].mul_add(b[p][t * m + j], serial);
                        }
                    }
                    err += (got[i * m + j] as f64 - exact).abs();
                    serial_err += (serial as f64 - exact).abs();
                }
            }
            assert!(
                err <= 1.5 * serial_err,
                "accumulate {accumulate}: error {err:.3e} vs serial f32 {serial_err:.3e}"
            );
        }
    }

    /// A bf16 GEMM (one piece) would be ~1000x off; the split keeps x exactly.
    pub fn pieces_sum_back_to_the_value() {
        let mut seed = 3u64;
        let x: Vec<f32> = (0..32)
            .map(|i| lcg(&mut seed) * 10f32.powi(i % 9 - 4))
            .collect();
        unsafe {
            let p = split3(
                _mm512_loadu_ps(x.as_ptr()),
                _mm512_loadu_ps(x.as_ptr().add(16)),
            );
            let p: [[u16; 32]; PIECES] = std::mem::transmute(p);
            for (i, &v) in x.iter().enumerate() {
                let back: f32 = (0..PIECES)
                    .map(|q| f32::from_bits((p[q][i] as u32) << 16))
                    .rev()
                    .sum();
                assert_eq!(back, v, "lane {i}");
            }
        }
    }
}

/// `body` where `have` (the feature's name `what`) holds; ignored with the reason elsewhere.
fn needs(
    what: &'static str,
    have: bool,
    body: fn(),
) -> impl FnOnce() -> Result<Completion, Failed> {
    move || {
        if !have {
            return Ok(Completion::ignored_with(format!("this CPU has no {what}")));
        }
        body();
        Ok(Completion::Completed)
    }
}

fn main() {
    let args = Arguments::from_args();
    #[cfg(target_arch = "x86_64")]
    let trials = {
        let avx512 = std::arch::is_x86_feature_detected!("avx512f");
        let amx = pinpoint::backend::cpu::gemm::amx::supported();
        let t = |name: &str, what, have, body| Trial::ignorable_test(name, needs(what, have, body));
        vec![
            t(
                "packed_a_layouts_match_naive",
                "AVX-512",
                avx512,
                kernels::packed_a_layouts_match_naive,
            ),
            t(
                "small_gemm_matches_naive",
                "AVX-512",
                avx512,
                kernels::small_gemm_matches_naive,
            ),
            t(
                "amx_matches_f64_reference_within_f32_error",
                "AMX-BF16 (or the OS withholds the tiles)",
                amx,
                kernels::matches_f64_reference_within_f32_error,
            ),
            t(
                "amx_sum_of_parts_matches_f64_reference",
                "AMX-BF16 (or the OS withholds the tiles)",
                amx,
                kernels::sum_of_parts_matches_f64_reference,
            ),
            t(
                "amx_pieces_sum_back_to_the_value",
                "AMX-BF16 (or the OS withholds the tiles)",
                amx,
                kernels::pieces_sum_back_to_the_value,
            ),
        ]
    };
    #[cfg(not(target_arch = "x86_64"))]
    let trials = vec![Trial::ignorable_test(
        "x86_64_kernels",
        needs("x86-64 kernels", false, || ()),
    )];
    libtest_mimic::run(&args, trials).exit();
}
