//! Small f32 vector kernels with AVX-512 variants chosen at run time (the crate is built
//! for baseline x86-64, so wide vectors need explicit target features); the reference
//! kernel set (`select.rs`) runs the plain loops.

/// `sum_i a[i] * b[i]`.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if super::select::avx512() {
        // SAFETY: avx512f detected; slices of equal length.
        return unsafe { dot_avx512(a, b) };
    }
    if super::select::reference() {
        return a.iter().zip(b).map(|(x, y)| x * y).sum();
    }
    dot_portable(a, b)
}

/// `y += alpha * x`.
#[inline]
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len());
    #[cfg(target_arch = "x86_64")]
    if super::select::avx512() {
        // SAFETY: avx512f detected; slices of equal length.
        return unsafe { axpy_avx512(alpha, x, y) };
    }
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm512_setzero_ps();
    let mut acc1 = _mm512_setzero_ps();
    let mut i = 0;
    while i + 32 <= n {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
        acc1 = _mm512_fmadd_ps(
            _mm512_loadu_ps(pa.add(i + 16)),
            _mm512_loadu_ps(pb.add(i + 16)),
            acc1,
        );
        i += 32;
    }
    while i < n {
        let rem = (n - i).min(16);
        let mask: __mmask16 = ((1u32 << rem) - 1) as __mmask16;
        acc0 = _mm512_fmadd_ps(
            _mm512_maskz_loadu_ps(mask, pa.add(i)),
            _mm512_maskz_loadu_ps(mask, pb.add(i)),
            acc0,
        );
        i += rem;
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn axpy_avx512(alpha: f32, x: &[f32], y: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = x.len();
    let (px, py) = (x.as_ptr(), y.as_mut_ptr());
    let a = _mm512_set1_ps(alpha);
    let mut i = 0;
    while i < n {
        let rem = (n - i).min(16);
        let mask: __mmask16 = if rem == 16 {
            0xffff
        } else {
            ((1u32 << rem) - 1) as __mmask16
        };
        let yv = _mm512_maskz_loadu_ps(mask, py.add(i));
        let r = _mm512_fmadd_ps(a, _mm512_maskz_loadu_ps(mask, px.add(i)), yv);
        _mm512_mask_storeu_ps(py.add(i), mask, r);
        i += rem;
    }
}

/// `row[i] = exp(row[i] - shift)`; returns the f32 sum of the results.
#[inline]
pub fn exp_shifted_sum(row: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::select::avx512() {
        // SAFETY: avx512f detected.
        return unsafe { exp_shifted_sum_avx512(row, shift) };
    }
    if super::select::reference() {
        // The reference sums in f64: a serial f32 sum of a 32k vocabulary's exponentials
        // is off by ~2e-6 relative, more than the 16 lanes of the AVX-512 loop.
        let mut sum = 0.0f64;
        for x in row.iter_mut() {
            *x = (*x - shift).exp();
            sum += *x as f64;
        }
        return sum as f32;
    }
    let mut sum = 0.0f32;
    for x in row.iter_mut() {
        *x = (*x - shift).exp();
        sum += *x;
    }
    sum
}

/// Largest element (NaNs ignored, as `f32::max`); `-inf` for an empty row.
#[inline]
pub fn max(row: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::select::avx512() {
        // SAFETY: avx512f detected.
        return unsafe { max_avx512(row) };
    }
    row.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// `x *= s` elementwise.
#[inline]
pub fn scale(x: &mut [f32], s: f32) {
    for v in x.iter_mut() {
        *v *= s;
    }
}

/// `out = silu(g) * u` elementwise.
#[inline]
pub fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
    debug_assert!(g.len() == u.len() && g.len() == out.len());
    #[cfg(target_arch = "x86_64")]
    if super::select::avx512() {
        // SAFETY: avx512f detected; equal lengths.
        return unsafe { silu_mul_avx512(g, u, out) };
    }
    for ((o, g), u) in out.iter_mut().zip(g).zip(u) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// Backward of `act = silu(g) * u`: `dg = d * u * s * (1 + g (1 - s))`, `du = d * g * s`
/// with `s = sigmoid(g)`.
#[inline]
pub fn silu_mul_bwd(d: &[f32], g: &[f32], u: &[f32], dg: &mut [f32], du: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::select::avx512() {
        // SAFETY: avx512f detected; equal lengths.
        return unsafe { silu_mul_bwd_avx512(d, g, u, dg, du) };
    }
    for i in 0..d.len() {
        let s = 1.0 / (1.0 + (-g[i]).exp());
        dg[i] = d[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
        du[i] = d[i] * g[i] * s;
    }
}

/// `exp(x)` in 16 lanes, within 2 ulp of the f32 result (Cephes' expf polynomial, 2^n by
/// `scalef`): `exp(-inf) = 0`, `exp(+inf) = inf`, NaN stays NaN.
///
/// # Safety
/// The CPU must support avx512f.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub unsafe fn exp_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // Clamp (NaN passes through: max/min return the second operand when one is NaN).
    let x = _mm512_min_ps(_mm512_set1_ps(88.8), x);
    let x = _mm512_max_ps(_mm512_set1_ps(-104.0), x);
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.398_2e-3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.333_452e-3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.166_579_6e-2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.666_666_5e-1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5));
    let r2 = _mm512_mul_ps(r, r);
    let y = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
    _mm512_scalef_ps(y, n)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn mask_of(rem: usize) -> std::arch::x86_64::__mmask16 {
    if rem >= 16 {
        0xffff
    } else {
        ((1u32 << rem) - 1) as std::arch::x86_64::__mmask16
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_shifted_sum_avx512(row: &mut [f32], shift: f32) -> f32 {
    use std::arch::x86_64::*;
    let n = row.len();
    let p = row.as_mut_ptr();
    let sh = _mm512_set1_ps(shift);
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i < n {
        let m = mask_of(n - i);
        let e = exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, p.add(i)), sh));
        let e = _mm512_maskz_mov_ps(m, e);
        _mm512_mask_storeu_ps(p.add(i), m, e);
        acc = _mm512_add_ps(acc, e);
        i += 16;
    }
    _mm512_reduce_add_ps(acc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn max_avx512(row: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = row.len();
    let p = row.as_ptr();
    let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut acc = ninf;
    let mut i = 0;
    while i < n {
        let m = mask_of(n - i);
        // A NaN lane leaves acc as it was (max returns the second operand).
        acc = _mm512_max_ps(_mm512_mask_loadu_ps(ninf, m, p.add(i)), acc);
        i += 16;
    }
    _mm512_reduce_max_ps(acc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_mul_avx512(g: &[f32], u: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = g.len().min(u.len()).min(out.len());
    let one = _mm512_set1_ps(1.0);
    let mut i = 0;
    while i < n {
        let m = mask_of(n - i);
        let gv = _mm512_maskz_loadu_ps(m, g.as_ptr().add(i));
        let uv = _mm512_maskz_loadu_ps(m, u.as_ptr().add(i));
        let e = exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), gv));
        let silu = _mm512_div_ps(gv, _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), m, _mm512_mul_ps(silu, uv));
        i += 16;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_mul_bwd_avx512(d: &[f32], g: &[f32], u: &[f32], dg: &mut [f32], du: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = d.len();
    assert!(g.len() == n && u.len() == n && dg.len() == n && du.len() == n);
    let one = _mm512_set1_ps(1.0);
    let mut i = 0;
    while i < n {
        let m = mask_of(n - i);
        let dv = _mm512_maskz_loadu_ps(m, d.as_ptr().add(i));
        let gv = _mm512_maskz_loadu_ps(m, g.as_ptr().add(i));
        let uv = _mm512_maskz_loadu_ps(m, u.as_ptr().add(i));
        let e = exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), gv));
        let s = _mm512_div_ps(one, _mm512_add_ps(one, e));
        // dg = d * u * s * (1 + g * (1 - s)); du = d * g * s
        let t = _mm512_fmadd_ps(gv, _mm512_sub_ps(one, s), one);
        let dgv = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(dv, uv), s), t);
        let duv = _mm512_mul_ps(_mm512_mul_ps(dv, gv), s);
        _mm512_mask_storeu_ps(dg.as_mut_ptr().add(i), m, dgv);
        _mm512_mask_storeu_ps(du.as_mut_ptr().add(i), m, duv);
        i += 16;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_silu_match_f64() {
        let xs: Vec<f32> = (0..4000)
            .map(|i| (i as f32 - 2000.0) * 0.05)
            .chain([-1e30, -200.0, -104.5, -87.5, 88.5, 88.7, 0.0, -0.0, 1e-30])
            .collect();
        let mut e = xs.clone();
        exp_shifted_sum(&mut e, 0.0);
        for (x, got) in xs.iter().zip(&e) {
            let want = (*x as f64).exp();
            if want as f32 == f32::INFINITY {
                assert_eq!(*got, f32::INFINITY, "exp({x})");
                continue;
            }
            let tol = 3.0 * f32::EPSILON as f64 * want + 1e-37;
            assert!(
                ((*got as f64) - want).abs() <= tol,
                "exp({x}) = {got}, want {want}"
            );
        }
        let finite: Vec<f32> = xs.iter().copied().filter(|&x| x < 60.0).collect();
        let mut e = finite.clone();
        let sum = exp_shifted_sum(&mut e, 1.0);
        let want_sum: f64 = finite.iter().map(|&x| (x as f64 - 1.0).exp()).sum();
        assert!(((sum as f64) - want_sum).abs() <= 1e-5 * want_sum);
        let mut special = [f32::NEG_INFINITY, f32::INFINITY, f32::NAN];
        exp_shifted_sum(&mut special, 0.0);
        assert_eq!(special[0], 0.0);
        assert_eq!(special[1], f32::INFINITY);
        assert!(special[2].is_nan());
        assert_eq!(max(&xs[..37]), xs[36]);
        assert_eq!(max(&[1.0, f32::NAN, 3.0]), 3.0);
        let g: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.7).collect();
        let u: Vec<f32> = (0..37).map(|i| (i as f32 * 0.3).sin()).collect();
        let d: Vec<f32> = (0..37).map(|i| (i as f32 * 0.7).cos()).collect();
        let mut o = vec![0.0; 37];
        let (mut dg, mut du) = (vec![0.0; 37], vec![0.0; 37]);
        silu_mul(&g, &u, &mut o);
        silu_mul_bwd(&d, &g, &u, &mut dg, &mut du);
        for i in 0..37 {
            let (g, u, d) = (g[i] as f64, u[i] as f64, d[i] as f64);
            let s = 1.0 / (1.0 + (-g).exp());
            assert!((o[i] as f64 - g * s * u).abs() < 1e-5, "silu {i}");
            assert!((dg[i] as f64 - d * u * s * (1.0 + g * (1.0 - s))).abs() < 1e-5);
            assert!((du[i] as f64 - d * g * s).abs() < 1e-5);
        }
    }

    #[test]
    fn dot_and_axpy_match_f64() {
        for n in [0usize, 1, 7, 16, 31, 32, 33, 64, 100] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.37).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.21).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - want).abs() < 1e-4, "dot n={n}");
            assert!(
                (dot_portable(&a, &b) as f64 - want).abs() < 1e-4,
                "portable dot n={n}"
            );
            let mut y = b.clone();
            axpy(0.5, &a, &mut y);
            for i in 0..n {
                assert!(
                    (y[i] - (b[i] + 0.5 * a[i])).abs() < 1e-6,
                    "axpy n={n} i={i}"
                );
            }
        }
    }
}
