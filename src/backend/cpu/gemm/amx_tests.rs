//! The AMX GEMM against an f64 reference.

use super::*;

fn lcg(seed: &mut u64) -> f32 {
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
#[test]
fn matches_f64_reference_within_f32_error() {
    if !supported() {
        eprintln!("SKIPPED: no AMX-BF16 on this CPU/OS");
        return;
    }
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
#[test]
fn sum_of_parts_matches_f64_reference() {
    if !supported() {
        eprintln!("SKIPPED: no AMX-BF16 on this CPU/OS");
        return;
    }
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
#[test]
fn pieces_sum_back_to_the_value() {
    if !supported() {
        eprintln!("SKIPPED: no AMX-BF16 on this CPU/OS");
        return;
    }
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
