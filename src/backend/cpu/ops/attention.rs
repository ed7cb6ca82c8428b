//! Causal grouped-query attention on the CPU (sliding window, cached prefixes): the
//! forward (blocked GEMMs on AVX-512, a per-row form otherwise) and the backward, which
//! recomputes the probabilities.

use crate::backend::cpu::buf::par_zeroed;
use crate::backend::cpu::gemm::Strided;
use crate::backend::cpu::simd;
use crate::backend::HostTensor;
use crate::backend::{shapes, AttnShape, Pattern, SeqSpan};
use anyhow::Result;
use rayon::prelude::*;

/// Softmax of `row` in place (max-subtracted, f32).
pub fn softmax_in_place(row: &mut [f32]) {
    let max = simd::max(row);
    let sum = simd::exp_shifted_sum(row, max);
    simd::scale(row, 1.0 / sum);
}

/// Scale `row[a..b]` and softmax it in place (as [`softmax_in_place`] of the scaled
/// scores); entries outside `a..b` (masked keys) become 0.
pub(crate) fn softmax_masked(row: &mut [f32], a: usize, b: usize, scale: f32) {
    row[..a].fill(0.0);
    row[b..].fill(0.0);
    let valid = &mut row[a..b];
    for x in valid.iter_mut() {
        *x *= scale;
    }
    softmax_in_place(valid);
}

/// Query rows per block of the blocked attention (two micro-tiles of the GEMM kernel).
pub(crate) const ATT_QB: usize = 28;

/// Forward: the blocked attention when every span has at least this many queries (decode
/// steps keep the per-row form, which gathers nothing).
const ATT_BLOCKED_MIN_Q: usize = 16;

/// Keys (or values) of kv group `g` of span `s`, gathered to `[kv_len, dh]` rows, or to
/// `[dh, kv_len]` when `transpose`.
pub(crate) fn gather_kv(
    data: &[f32],
    kc: usize,
    s: &SeqSpan,
    g: usize,
    dh: usize,
    transpose: bool,
) -> Vec<f32> {
    let kv_len = s.pos0 + s.q_len;
    let mut out = vec![0.0f32; kv_len * dh];
    for j in 0..kv_len {
        let row = &data[s.kv_row(j) * kc + g * dh..][..dh];
        if transpose {
            for (c, &x) in row.iter().enumerate() {
                out[c * kv_len + j] = x;
            }
        } else {
            out[j * dh..(j + 1) * dh].copy_from_slice(row);
        }
    }
    out
}

/// First key position row `pos` attends to.
#[inline]
pub(crate) fn key_lo(pos: usize, window: Option<usize>) -> usize {
    window.map_or(0, |w| (pos + 1).saturating_sub(w))
}

/// Blocked attention of span `s`, kv group `g` (AVX-512): per head of the group and block
/// of [`ATT_QB`] queries, `S = Q K^T` and `Z = P V` as GEMMs over the block's causal key
/// range. Returns `z [group, q_len, dh]` and the probabilities `[q_len, kv_len]` of the
/// heads `keep` asks for.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn attention_group_blocked(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: &SeqSpan,
    g: usize,
    shape: AttnShape,
    qc: usize,
    kc: usize,
    keep: impl Fn(usize) -> bool,
) -> (Vec<f32>, Vec<Option<Vec<f32>>>) {
    use crate::backend::cpu::gemm::gemm_small;
    let dh = shape.head_dim;
    let group = shape.n_heads / shape.n_kv_heads;
    let scale = 1.0 / (dh as f32).sqrt();
    let kv_len = s.pos0 + s.q_len;
    let kt = gather_kv(k, kc, s, g, dh, true);
    let vg = gather_kv(v, kc, s, g, dh, false);
    let mut z = vec![0.0f32; group * s.q_len * dh];
    let mut sbuf = vec![0.0f32; ATT_QB * kv_len];
    let mut probs = Vec::with_capacity(group);
    for hh in 0..group {
        let h = g * group + hh;
        let mut ph = keep(h).then(|| vec![0.0f32; s.q_len * kv_len]);
        for i0 in (0..s.q_len).step_by(ATT_QB) {
            let nb = ATT_QB.min(s.q_len - i0);
            let lo = key_lo(s.pos0 + i0, shape.window);
            let w = s.pos0 + i0 + nb - lo;
            let qa = Strided {
                data: q,
                off: (s.q_start + i0) * qc + h * dh,
                rs: qc,
                cs: 1,
            };
            let kb = Strided {
                data: &kt,
                off: lo,
                rs: kv_len,
                cs: 1,
            };
            // SAFETY: avx512f checked by the caller; sbuf holds nb rows of w.
            unsafe { gemm_small(sbuf.as_mut_ptr(), w, false, nb, w, dh, qa, kb) };
            for r in 0..nb {
                let pos = s.pos0 + i0 + r;
                let lo_r = key_lo(pos, shape.window);
                let row = &mut sbuf[r * w..(r + 1) * w];
                softmax_masked(row, lo_r - lo, pos + 1 - lo, scale);
                if let Some(p) = ph.as_mut() {
                    p[(i0 + r) * kv_len + lo_r..(i0 + r) * kv_len + pos + 1]
                        .copy_from_slice(&row[lo_r - lo..pos + 1 - lo]);
                }
            }
            let pa = Strided {
                data: &sbuf,
                off: 0,
                rs: w,
                cs: 1,
            };
            let vb = Strided {
                data: &vg,
                off: lo * dh,
                rs: dh,
                cs: 1,
            };
            let zp = z[(hh * s.q_len + i0) * dh..].as_mut_ptr();
            // SAFETY: as above; z holds this head's nb rows of dh from (hh, i0).
            unsafe { gemm_small(zp, dh, false, nb, dh, w, pa, vb) };
        }
        probs.push(ph);
    }
    (z, probs)
}

/// Blocked attention backward of span `s`, kv group `g` (AVX-512): per head of the group
/// and block of [`ATT_QB`] queries, the probabilities are recomputed (`S = Q K^T`) and
/// `dP = dZ V^T`, `dQ = dS K`, `dK += dS^T Q`, `dV += P^T dZ` run as GEMMs over the block's
/// causal key range. Returns `dq [group, q_len, dh]`, `dk`, `dv [kv_len, dh]`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn attention_bwd_group_blocked(
    dz: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: &SeqSpan,
    g: usize,
    shape: AttnShape,
    qc: usize,
    kc: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    use crate::backend::cpu::gemm::gemm_small;
    let dh = shape.head_dim;
    let group = shape.n_heads / shape.n_kv_heads;
    let scale = 1.0 / (dh as f32).sqrt();
    let kv_len = s.pos0 + s.q_len;
    let kg = gather_kv(k, kc, s, g, dh, false);
    let kt = gather_kv(k, kc, s, g, dh, true);
    let vt = gather_kv(v, kc, s, g, dh, true);
    let mut dq = vec![0.0f32; group * s.q_len * dh];
    let mut dk = vec![0.0f32; kv_len * dh];
    let mut dv = vec![0.0f32; kv_len * dh];
    let mut p = vec![0.0f32; ATT_QB * kv_len];
    let mut ds = vec![0.0f32; ATT_QB * kv_len];
    fn rows(data: &[f32], off: usize, rs: usize) -> Strided<'_> {
        Strided {
            data,
            off,
            rs,
            cs: 1,
        }
    }
    // A transposed: element (i, j) at data[j * cs + i].
    fn t(data: &[f32], cs: usize) -> Strided<'_> {
        Strided {
            data,
            off: 0,
            rs: 1,
            cs,
        }
    }
    for hh in 0..group {
        let h = g * group + hh;
        for i0 in (0..s.q_len).step_by(ATT_QB) {
            let nb = ATT_QB.min(s.q_len - i0);
            let lo = key_lo(s.pos0 + i0, shape.window);
            let w = s.pos0 + i0 + nb - lo;
            let qoff = (s.q_start + i0) * qc + h * dh;
            // SAFETY (all gemm_small calls): avx512f checked by the caller; destinations are
            // local buffers holding the rows written, disjoint from the operands.
            unsafe {
                gemm_small(
                    p.as_mut_ptr(),
                    w,
                    false,
                    nb,
                    w,
                    dh,
                    rows(q, qoff, qc),
                    rows(&kt, lo, kv_len),
                );
                gemm_small(
                    ds.as_mut_ptr(),
                    w,
                    false,
                    nb,
                    w,
                    dh,
                    rows(dz, qoff, qc),
                    rows(&vt, lo, kv_len),
                );
            }
            for r in 0..nb {
                let pos = s.pos0 + i0 + r;
                let (a, b) = (key_lo(pos, shape.window) - lo, pos + 1 - lo);
                let prow = &mut p[r * w..(r + 1) * w];
                softmax_masked(prow, a, b, scale);
                // dS_j = P_j (dP_j - sum_j P_j dP_j) * scale; masked entries have P = 0.
                let drow = &mut ds[r * w..(r + 1) * w];
                let pdp: f32 = prow[a..b].iter().zip(&drow[a..b]).map(|(x, y)| x * y).sum();
                for (d, &pj) in drow.iter_mut().zip(prow.iter()) {
                    *d = pj * (*d - pdp) * scale;
                }
            }
            unsafe {
                gemm_small(
                    dq[(hh * s.q_len + i0) * dh..].as_mut_ptr(),
                    dh,
                    false,
                    nb,
                    dh,
                    w,
                    rows(&ds, 0, w),
                    rows(&kg, lo * dh, dh),
                );
                gemm_small(
                    dk[lo * dh..].as_mut_ptr(),
                    dh,
                    true,
                    w,
                    dh,
                    nb,
                    t(&ds, w),
                    rows(q, qoff, qc),
                );
                gemm_small(
                    dv[lo * dh..].as_mut_ptr(),
                    dh,
                    true,
                    w,
                    dh,
                    nb,
                    t(&p, w),
                    rows(dz, qoff, qc),
                );
            }
        }
    }
    (dq, dk, dv)
}

/// [`attention`] on AVX-512 when every span has at least [`ATT_BLOCKED_MIN_Q`] queries: one
/// task per (span, kv group) by [`attention_group_blocked`], then z and the wanted
/// probabilities put in place (patterns in (span, head) order, as the per-row form).
#[cfg(target_arch = "x86_64")]
fn attention_blocked(
    q: &HostTensor,
    k: &HostTensor,
    v: &HostTensor,
    spans: &[SeqSpan],
    shape: AttnShape,
    want: &[(usize, usize)],
    (n, qc, kc): (usize, usize, usize),
) -> (HostTensor, Vec<Pattern>) {
    let AttnShape {
        n_heads,
        n_kv_heads,
        head_dim: dh,
        ..
    } = shape;
    let group = n_heads / n_kv_heads;
    let tasks: Vec<(usize, usize)> = (0..spans.len())
        .flat_map(|s| (0..n_kv_heads).map(move |g| (s, g)))
        .collect();
    let results: Vec<_> = tasks
        .par_iter()
        .map(|&(si, g)| {
            attention_group_blocked(
                &q.data,
                &k.data,
                &v.data,
                &spans[si],
                g,
                shape,
                qc,
                kc,
                |h| want.contains(&(si, h)),
            )
        })
        .collect();
    let mut z = par_zeroed(n * qc);
    let mut patterns = Vec::new();
    for (&(si, g), (zg, probs)) in tasks.iter().zip(results) {
        let s = spans[si];
        let kv_len = s.pos0 + s.q_len;
        for (hh, ph) in probs.into_iter().enumerate() {
            let h = g * group + hh;
            for i in 0..s.q_len {
                z[(s.q_start + i) * qc + h * dh..][..dh]
                    .copy_from_slice(&zg[(hh * s.q_len + i) * dh..][..dh]);
            }
            if let Some(p) = ph {
                patterns.push(Pattern {
                    seq: si,
                    head: h,
                    probs: HostTensor::new(vec![s.q_len, kv_len], p),
                });
            }
        }
    }
    // Same order as the per-row form: by (span, head).
    patterns.sort_by_key(|p| (p.seq, p.head));
    (HostTensor::new(vec![n, qc], z), patterns)
}

pub(crate) fn attention(
    q: &HostTensor,
    k: &HostTensor,
    v: &HostTensor,
    spans: &[SeqSpan],
    shape: AttnShape,
    want: &[(usize, usize)],
) -> Result<(HostTensor, Vec<Pattern>)> {
    let AttnShape {
        n_heads,
        n_kv_heads,
        head_dim: dh,
        window,
    } = shape;
    let (n, qc, kr, kc) =
        shapes::attention("attention", &q.shape, &k.shape, &v.shape, None, shape)?;
    for s in spans {
        s.check(n, kr)?;
    }
    let group = n_heads / n_kv_heads;
    #[cfg(target_arch = "x86_64")]
    if crate::backend::cpu::select::avx512() && spans.iter().all(|s| s.q_len >= ATT_BLOCKED_MIN_Q) {
        return Ok(attention_blocked(q, k, v, spans, shape, want, (n, qc, kc)));
    }
    let scale = 1.0 / (dh as f32).sqrt();
    // One task per (span, head): z rows of that head and, if wanted, its probabilities.
    let tasks: Vec<(usize, usize)> = (0..spans.len())
        .flat_map(|s| (0..n_heads).map(move |h| (s, h)))
        .collect();
    let results: Vec<(Vec<f32>, Option<HostTensor>)> = tasks
        .par_iter()
        .map(|&(si, h)| {
            let s = spans[si];
            let g = h / group;
            let kv_len = s.pos0 + s.q_len;
            let keep = want.contains(&(si, h));
            let mut probs = if keep {
                vec![0.0f32; s.q_len * kv_len]
            } else {
                vec![]
            };
            let mut zh = vec![0.0f32; s.q_len * dh];
            let mut scores = Vec::with_capacity(kv_len);
            for i in 0..s.q_len {
                let pos = s.pos0 + i;
                let lo = window.map_or(0, |w| (pos + 1).saturating_sub(w));
                let qrow = &q.data[(s.q_start + i) * qc + h * dh..][..dh];
                scores.clear();
                for j in lo..=pos {
                    let krow = &k.data[s.kv_row(j) * kc + g * dh..][..dh];
                    let dot = simd::dot(qrow, krow);
                    scores.push(dot * scale);
                }
                softmax_in_place(&mut scores);
                let zi = &mut zh[i * dh..(i + 1) * dh];
                for (jj, &p) in scores.iter().enumerate() {
                    let vrow = &v.data[s.kv_row(lo + jj) * kc + g * dh..][..dh];
                    simd::axpy(p, vrow, zi);
                }
                if keep {
                    probs[i * kv_len + lo..i * kv_len + pos + 1].copy_from_slice(&scores);
                }
            }
            (
                zh,
                keep.then(|| HostTensor::new(vec![s.q_len, kv_len], probs)),
            )
        })
        .collect();
    let mut z = vec![0.0f32; n * qc];
    let mut patterns = Vec::new();
    for (&(si, h), (zh, probs)) in tasks.iter().zip(results) {
        let s = spans[si];
        for i in 0..s.q_len {
            z[(s.q_start + i) * qc + h * dh..][..dh].copy_from_slice(&zh[i * dh..(i + 1) * dh]);
        }
        if let Some(p) = probs {
            patterns.push(Pattern {
                seq: si,
                head: h,
                probs: p,
            });
        }
    }
    Ok((HostTensor::new(vec![n, qc], z), patterns))
}

/// The per-row attention backward of span `s`, kv group `g` (what the blocked form computes,
/// one query row at a time): `dq [group, q_len, dh]`, `dk`, `dv [kv_len, dh]`.
#[allow(clippy::too_many_arguments)]
fn attention_bwd_group_rows(
    dz: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: &SeqSpan,
    g: usize,
    shape: AttnShape,
    qc: usize,
    kc: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let dh = shape.head_dim;
    let group = shape.n_heads / shape.n_kv_heads;
    let window = shape.window;
    let scale = 1.0 / (dh as f32).sqrt();
    struct Out {
        dq: Vec<f32>, // [group, q_len, dh]
        dk: Vec<f32>, // [kv_len, dh]
        dv: Vec<f32>,
    }
    let kv_len = s.pos0 + s.q_len;
    let mut o = Out {
        dq: vec![0.0; group * s.q_len * dh],
        dk: vec![0.0; kv_len * dh],
        dv: vec![0.0; kv_len * dh],
    };
    let mut p = Vec::with_capacity(kv_len);
    let mut dp = Vec::with_capacity(kv_len);
    for hh in 0..group {
        let h = g * group + hh;
        for i in 0..s.q_len {
            let pos = s.pos0 + i;
            let lo = window.map_or(0, |w| (pos + 1).saturating_sub(w));
            let qrow = &q[(s.q_start + i) * qc + h * dh..][..dh];
            let dzrow = &dz[(s.q_start + i) * qc + h * dh..][..dh];
            p.clear();
            dp.clear();
            for j in lo..=pos {
                let krow = &k[s.kv_row(j) * kc + g * dh..][..dh];
                let vrow = &v[s.kv_row(j) * kc + g * dh..][..dh];
                p.push(qrow.iter().zip(krow).map(|(a, b)| a * b).sum::<f32>() * scale);
                dp.push(dzrow.iter().zip(vrow).map(|(a, b)| a * b).sum::<f32>());
            }
            softmax_in_place(&mut p);
            // dS_j = P_j (dP_j - sum_j P_j dP_j)
            let pdp: f32 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
            let dqrow = &mut o.dq[(hh * s.q_len + i) * dh..][..dh];
            for (jj, j) in (lo..=pos).enumerate() {
                let ds = p[jj] * (dp[jj] - pdp) * scale;
                let krow = &k[s.kv_row(j) * kc + g * dh..][..dh];
                for (a, b) in dqrow.iter_mut().zip(krow) {
                    *a += ds * b;
                }
                let dkrow = &mut o.dk[j * dh..(j + 1) * dh];
                for (a, b) in dkrow.iter_mut().zip(qrow) {
                    *a += ds * b;
                }
                let dvrow = &mut o.dv[j * dh..(j + 1) * dh];
                for (a, b) in dvrow.iter_mut().zip(dzrow) {
                    *a += p[jj] * b;
                }
            }
        }
    }
    (o.dq, o.dk, o.dv)
}

pub(crate) fn attention_bwd(
    dz: &HostTensor,
    q: &HostTensor,
    k: &HostTensor,
    v: &HostTensor,
    spans: &[SeqSpan],
    shape: AttnShape,
) -> Result<(HostTensor, HostTensor, HostTensor)> {
    let AttnShape {
        n_heads,
        n_kv_heads,
        head_dim: dh,
        ..
    } = shape;
    let (n, qc, kr, kc) = shapes::attention(
        "attention_bwd",
        &q.shape,
        &k.shape,
        &v.shape,
        Some(&dz.shape),
        shape,
    )?;
    for s in spans {
        s.check(n, kr)?;
    }
    let group = n_heads / n_kv_heads;
    #[cfg(target_arch = "x86_64")]
    let blocked = crate::backend::cpu::select::avx512();
    #[cfg(not(target_arch = "x86_64"))]
    let blocked = false;
    // One task per (span, kv group): it owns dK/dV of that group over the span's keys and
    // dQ of the group's query heads. Probabilities are recomputed as in the forward.
    let tasks: Vec<(usize, usize)> = (0..spans.len())
        .flat_map(|s| (0..n_kv_heads).map(move |g| (s, g)))
        .collect();
    let outs: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = tasks
        .par_iter()
        .map(|&(si, g)| {
            let s = spans[si];
            #[cfg(target_arch = "x86_64")]
            if blocked {
                return attention_bwd_group_blocked(
                    &dz.data, &q.data, &k.data, &v.data, &s, g, shape, qc, kc,
                );
            }
            attention_bwd_group_rows(&dz.data, &q.data, &k.data, &v.data, &s, g, shape, qc, kc)
        })
        .collect();
    let mut dq = par_zeroed(n * qc);
    let mut dk = par_zeroed(kr * kc);
    let mut dv = par_zeroed(kr * kc);
    for (&(si, g), (o_dq, o_dk, o_dv)) in tasks.iter().zip(outs) {
        let s = spans[si];
        for hh in 0..group {
            let h = g * group + hh;
            for i in 0..s.q_len {
                dq[(s.q_start + i) * qc + h * dh..][..dh]
                    .copy_from_slice(&o_dq[(hh * s.q_len + i) * dh..][..dh]);
            }
        }
        // Spans may share key rows (a cache); accumulate.
        for j in 0..s.pos0 + s.q_len {
            let base = s.kv_row(j) * kc + g * dh;
            for c in 0..dh {
                dk[base + c] += o_dk[j * dh + c];
                dv[base + c] += o_dv[j * dh + c];
            }
        }
    }
    Ok((
        HostTensor::new(vec![n, qc], dq),
        HostTensor::new(vec![kr, kc], dk),
        HostTensor::new(vec![kr, kc], dv),
    ))
}
