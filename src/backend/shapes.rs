//! The shape checks of the ops, written once: both backends call these before touching any
//! data, so a bad call fails the same way (same message) on every device.

use super::{dims2, AttnShape};
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

/// Attention (`what`: `attention` or `attention_bwd`): `q [n, H*D]`, `k` and `v`
/// `[rows, G*D]` alike, `dz` (backward) shaped as `q`, H a multiple of G, no empty window.
/// Returns `(n, H*D, rows, G*D)`.
pub fn attention(
    what: &str,
    q: &[usize],
    k: &[usize],
    v: &[usize],
    dz: Option<&[usize]>,
    shape: AttnShape,
) -> Result<(usize, usize, usize, usize)> {
    let AttnShape {
        n_heads,
        n_kv_heads,
        head_dim: dh,
        window,
    } = shape;
    let (n, qc) = dims2(q)?;
    let (kr, kc) = dims2(k)?;
    ensure!(
        qc == n_heads * dh && kc == n_kv_heads * dh && dz.is_none_or(|d| d == q),
        "{what}: bad widths: q {q:?}, k {k:?}{} for {n_heads} heads, {n_kv_heads} kv heads \
         of {dh}",
        dz.map_or(String::new(), |d| format!(", dz {d:?}"))
    );
    ensure!(k == v, "{what}: k {k:?} and v {v:?} differ");
    ensure!(
        n_kv_heads > 0 && n_heads.is_multiple_of(n_kv_heads),
        "{what}: {n_heads} query heads over {n_kv_heads} key/value heads"
    );
    ensure!(
        window != Some(0),
        "{what}: a sliding window of 0 hides every key"
    );
    Ok((n, qc, kr, kc))
}

#[cfg(test)]
mod attention_tests {
    use super::*;

    #[test]
    fn attention_checks_name_the_op_and_the_problem() {
        let sh = |h, g, w| AttnShape {
            n_heads: h,
            n_kv_heads: g,
            head_dim: 4,
            window: w,
        };
        let ok = attention(
            "attention",
            &[5, 16],
            &[7, 8],
            &[7, 8],
            None,
            sh(4, 2, None),
        );
        assert_eq!(ok.unwrap(), (5, 16, 7, 8));
        let err = |r: Result<(usize, usize, usize, usize)>| r.unwrap_err().to_string();
        let e = err(attention(
            "attention",
            &[5, 12],
            &[7, 8],
            &[7, 8],
            None,
            sh(4, 2, None),
        ));
        assert!(e.starts_with("attention: bad widths"), "{e}");
        let e = err(attention(
            "attention_bwd",
            &[5, 16],
            &[7, 8],
            &[7, 8],
            Some(&[4, 16]),
            sh(4, 2, None),
        ));
        assert!(
            e.contains("attention_bwd: bad widths") && e.contains("dz [4, 16]"),
            "{e}"
        );
        let e = err(attention(
            "attention",
            &[5, 16],
            &[7, 8],
            &[6, 8],
            None,
            sh(4, 2, None),
        ));
        assert!(e.contains("differ"), "{e}");
        let e = err(attention(
            "attention",
            &[5, 12],
            &[7, 8],
            &[7, 8],
            None,
            sh(3, 2, None),
        ));
        assert!(e.contains("3 query heads over 2"), "{e}");
        let e = err(attention(
            "attention",
            &[5, 16],
            &[7, 8],
            &[7, 8],
            None,
            sh(4, 2, Some(0)),
        ));
        assert!(e.contains("window of 0"), "{e}");
    }
}
