//! The accuracy checks every device test uses: the whole-tensor relative error (the
//! `rel err` lines scripts/gpu-check.sh collects) and a per-element bound.
#![allow(dead_code)]

/// ||a - b|| / ||b||; panics on NaN/inf in `a` (an unwritten, poisoned element) or length.
pub fn nrel(what: &str, a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "{what}: length");
    if let Some(i) = a.iter().position(|x| !x.is_finite()) {
        panic!("{what}: element {i} is {} (not written?)", a[i]);
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        num += ((x - y) as f64).powi(2);
        den += (*y as f64).powi(2);
    }
    (num.sqrt() / den.sqrt().max(1e-30)) as f32
}

/// Print `<what>: rel err <e>` and require `e <= tol` (whole tensor) and, element by element,
/// `|a_i - b_i| <= 10 tol rms(b) + 2 tol |b_i|`: a norm alone lets one element be wrong by
/// several times its size in a large tensor; bf16 rounding (2^-8 relative per element) and
/// f32 sums stay far inside both bounds.
pub fn check(what: &str, a: &[f32], b: &[f32], tol: f32) {
    let e = nrel(what, a, b);
    eprintln!("{what}: rel err {e:.2e}");
    assert!(e <= tol, "{what}: rel err {e:.3e} > {tol:.0e}");
    check_elements(what, a, b, tol);
}

/// The per-element half of [`check`]: the first element outside
/// `10 tol rms(b) + 2 tol |b_i|` fails, named by index.
pub fn check_elements(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    if b.is_empty() {
        return;
    }
    let rms = (b.iter().map(|&y| (y as f64).powi(2)).sum::<f64>() / b.len() as f64).sqrt();
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let err = (x as f64 - y as f64).abs();
        let bound = 10.0 * tol as f64 * rms + 2.0 * tol as f64 * (y as f64).abs();
        assert!(
            err <= bound,
            "{what}: element {i} is {x}, expected {y} (error {err:.3e} > bound {bound:.3e})"
        );
    }
}
