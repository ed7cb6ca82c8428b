//! The shape checks of the ops, written once: both backends call these before touching any
//! data, so a bad call fails the same way (same message) on every device.

use super::{dims2, AttnShape, ParamState, Region};
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

/// `linear`: `x [n, k] @ w [m, k]^T`. Returns `(n, k, m)`.
pub fn linear(x: &[usize], w: &[usize]) -> Result<(usize, usize, usize)> {
    let (n, k) = dims2(x)?;
    let (m, k2) = dims2(w)?;
    ensure!(
        k == k2,
        "linear: input {x:?} has {k} columns, weight {w:?} expects {k2}"
    );
    Ok((n, k, m))
}

/// `linear_bwd_input` (one part) and its sum over parts: every `dy_i [n, m_i]` with
/// `w_i [m_i, k]`, one `n` and one `k`. Returns `(n, k)`.
pub fn linear_bwd_input(parts: &[(&[usize], &[usize])]) -> Result<(usize, usize)> {
    let Some(&(dy0, w0)) = parts.first() else {
        bail!("linear_bwd_input: no parts");
    };
    let (n, _) = dims2(dy0)?;
    let (_, k) = dims2(w0)?;
    for (i, &(dy, w)) in parts.iter().enumerate() {
        let (n2, m) = dims2(dy)?;
        let (m2, k2) = dims2(w)?;
        ensure!(
            m == m2 && n2 == n && k2 == k,
            "linear_bwd_input: part {i}: dy {dy:?} and weight {w:?} do not make [{n}, {k}]"
        );
    }
    Ok((n, k))
}

/// `linear_bwd_weight`: `dy [n, m]`, `x [n, k]`, region `reg` inside `[m, k]`, the gradient
/// buffer of the region's size. Returns `(n, m, k)`.
pub fn linear_bwd_weight(
    dy: &[usize],
    x: &[usize],
    reg: Region,
    dw_numel: usize,
) -> Result<(usize, usize, usize)> {
    let (n, m) = dims2(dy)?;
    let (n2, k) = dims2(x)?;
    ensure!(
        n == n2,
        "linear_bwd_weight: dy {dy:?} and x {x:?} differ in rows"
    );
    reg.check(&[m, k])?;
    ensure!(
        dw_numel == reg.numel(&[m, k]),
        "linear_bwd_weight: grad buffer of {dw_numel} values for region {reg:?} of [{m}, {k}]"
    );
    Ok((n, m, k))
}

/// Token ids inside a vocabulary of `vocab` (`what`: the op).
fn ids_in_vocab(what: &str, ids: &[u32], vocab: usize) -> Result<()> {
    if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
        bail!("{what}: token id {id} is outside the vocabulary of {vocab}");
    }
    Ok(())
}

/// `embed`: a table `[vocab, d]`, every id inside it. Returns `(vocab, d)`.
pub fn embed(table: &[usize], ids: &[u32]) -> Result<(usize, usize)> {
    let (v, d) = dims2(table)?;
    ids_in_vocab("embed", ids, v)?;
    Ok((v, d))
}

/// `embed_bwd`: `dx [ids.len(), d]` into `dtable [vocab, d]`, every id inside the table.
/// Returns `(n, d)`.
pub fn embed_bwd(dx: &[usize], ids: &[u32], dtable: &[usize]) -> Result<(usize, usize)> {
    let (n, d) = dims2(dx)?;
    let (vocab, d2) = dims2(dtable)?;
    ensure!(
        n == ids.len() && d == d2,
        "embed_bwd: dx {dx:?} for {} ids, table {dtable:?}",
        ids.len()
    );
    ids_in_vocab("embed_bwd", ids, vocab)?;
    Ok((n, d))
}

/// `xent_fwd_bwd`: logits `[n, vocab]`, one target (or none) per row, inside the
/// vocabulary. Returns `(n, vocab)`.
pub fn xent(logits: &[usize], targets: &[Option<u32>]) -> Result<(usize, usize)> {
    let (n, vocab) = dims2(logits)?;
    ensure!(
        targets.len() == n,
        "xent: {} targets for {n} rows of logits {logits:?}",
        targets.len()
    );
    ensure!(n == 0 || vocab > 0, "xent: empty vocabulary");
    if let Some(t) = targets.iter().flatten().find(|&&t| t as usize >= vocab) {
        bail!("xent: target {t} outside the vocabulary of {vocab}");
    }
    Ok((n, vocab))
}

/// `rope` and `rope_bwd` (`what`): `x [n, heads * head_dim]`, one position per row,
/// `head_dim / 2` inverse frequencies. Returns `(n, c)`.
pub fn rope(
    what: &str,
    x: &[usize],
    head_dim: usize,
    positions: &[usize],
    inv_freq: &[f32],
) -> Result<(usize, usize)> {
    let (n, c) = dims2(x)?;
    ensure!(
        positions.len() == n
            && head_dim > 0
            && head_dim.is_multiple_of(2)
            && c.is_multiple_of(head_dim)
            && inv_freq.len() * 2 == head_dim,
        "{what}: {n} rows of width {c}, {} positions, head_dim {head_dim}, {} inverse frequencies",
        positions.len(),
        inv_freq.len()
    );
    Ok((n, c))
}

/// `gather_rows`: rows of `x [n, c]`, each below `n`. Returns `(n, c)`.
pub fn gather_rows(x: &[usize], rows: &[usize]) -> Result<(usize, usize)> {
    let (n, c) = dims2(x)?;
    if let Some(r) = rows.iter().find(|&&r| r >= n) {
        bail!("gather_rows: row {r} out of {n}");
    }
    Ok((n, c))
}

/// `scatter_rows`: `src [rows.len(), c]` into rows of `dst [n, c]`, each below `n`; all
/// checked before anything is written. Returns `(n, c)`.
pub fn scatter_rows(dst: &[usize], rows: &[usize], src: &[usize]) -> Result<(usize, usize)> {
    let (n, c) = dims2(dst)?;
    let (sn, sc) = dims2(src)?;
    ensure!(
        sc == c && sn == rows.len(),
        "scatter_rows: src {src:?} for {} rows of width {c}",
        rows.len()
    );
    if let Some(r) = rows.iter().find(|&&r| r >= n) {
        bail!("scatter_rows: row {r} out of {n}");
    }
    Ok((n, c))
}

/// `norm_dot`: rows `x [n, d]`, a norm weight of `d`, label rows `w [m, d]`. Returns
/// `(n, d, m)`.
pub fn norm_dot(x: &[usize], norm_numel: usize, w: &[usize]) -> Result<(usize, usize, usize)> {
    let (n, d) = dims2(x)?;
    let (m, d2) = dims2(w)?;
    ensure!(
        d > 0 && d == d2 && norm_numel == d,
        "norm_dot: rows of width {d}, norm of {norm_numel}, weights {w:?}"
    );
    Ok((n, d, m))
}

/// `write_region`: `src_numel` values for region `reg` of a tensor of `shape`.
pub fn write_region(shape: &[usize], reg: Region, src_numel: usize) -> Result<()> {
    reg.check(shape)?;
    ensure!(
        src_numel == reg.numel(shape),
        "write_region: {src_numel} values for {reg:?} of {shape:?}"
    );
    Ok(())
}

/// `opt_write`: a host state of the device state's `len` values.
pub fn opt_write(len: usize, host: &ParamState) -> Result<()> {
    ensure!(
        host.master.len() == len && host.m.len() == len && host.v.len() == len,
        "optimizer state of {len} values written with {}/{}/{}",
        host.master.len(),
        host.m.len(),
        host.v.len()
    );
    Ok(())
}

/// `adamw_update`: a gradient and a state of `state_len` values each, for region `reg`
/// (inside `w`) of as many values; checked before the state moves.
pub fn adamw(g_numel: usize, state_len: usize, reg: Region, w: &[usize]) -> Result<()> {
    reg.check(w)?;
    ensure!(
        g_numel == state_len && reg.numel(w) == state_len,
        "adamw: gradient of {g_numel} values, state of {state_len}, region {reg:?} of {w:?}"
    );
    Ok(())
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
