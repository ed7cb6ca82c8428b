//! The shape checks of the ops, written once: both backends call these before touching any
//! data, so a bad call fails the same way (same message) on every device.

use super::dims2;
use anyhow::{bail, ensure, Result};

/// Elementwise ops (`add`, `swiglu`, ...): `a` and `b` of the same shape.
pub fn same_shape(what: &str, a: &[usize], b: &[usize]) -> Result<()> {
    ensure!(a == b, "{what}: shapes {a:?} and {b:?} differ");
    Ok(())
}

/// RMSNorm forward: rows `x [n, d]`, weight of `d` elements. Returns `(n, d)`.
pub fn rmsnorm(x: &[usize], w_numel: usize) -> Result<(usize, usize)> {
    let (n, d) = dims2(x)?;
    ensure!(
        w_numel == d,
        "rmsnorm weight has {w_numel} elements, rows have {d}"
    );
    Ok((n, d))
}

/// RMSNorm backward: `dy` shaped as `x [n, d]`, weight (and its gradient, if any) of `d`
/// elements. Returns `(n, d)`.
pub fn rmsnorm_bwd(
    dy: &[usize],
    x: &[usize],
    w_numel: usize,
    dw_numel: Option<usize>,
) -> Result<(usize, usize)> {
    let (n, d) = dims2(x)?;
    ensure!(dy == x, "rmsnorm_bwd: dy {dy:?} vs x {x:?}");
    ensure!(
        w_numel == d,
        "rmsnorm_bwd: weight of {w_numel} for rows of {d}"
    );
    if let Some(dw) = dw_numel {
        ensure!(dw == d, "rmsnorm_bwd: dw has {dw} elements, rows {d}");
    }
    Ok((n, d))
}

/// SwiGLU backward: `dact`, `gate` and `up` of one shape.
pub fn swiglu_bwd(dact: &[usize], gate: &[usize], up: &[usize]) -> Result<()> {
    ensure!(
        gate == up && dact == gate,
        "swiglu_bwd: shapes {dact:?} {gate:?} {up:?}"
    );
    Ok(())
}

/// `write_slices`: `values [vn, width]` (or `[width]`) into `x [n, c]` at `(rows[i],
/// col0[i])`, every slice inside `x`; all checked before anything is written. Returns
/// `(c, vn, width)`.
pub fn write_slices(
    x: &[usize],
    values: &[usize],
    rows: &[usize],
    col0: &[usize],
) -> Result<(usize, usize, usize)> {
    let (n, c) = dims2(x)?;
    let (vn, width) = match values {
        [r, w] => (*r, *w),
        [w] => (1, *w),
        s => bail!("write_slices: values of shape {s:?}"),
    };
    ensure!(
        rows.len() == vn && col0.len() == vn,
        "write_slices: {vn} values for {} rows",
        rows.len()
    );
    for (&r, &c0) in rows.iter().zip(col0) {
        ensure!(
            r < n && c0 + width <= c,
            "write_slices: slice ({r}, {c0}) out of {x:?}"
        );
    }
    Ok((c, vn, width))
}
