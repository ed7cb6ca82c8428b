//! The f32 CPU backend: the reference oracle and the no-GPU default.
//! GEMMs go through the `gemm` crate (runtime SIMD dispatch); the rest is rayon loops.

pub mod buf;
pub mod gemm;
pub mod simd;

use super::{AttnShape, Backend, Pattern, SeqSpan};
use crate::model::HostTensor;
use anyhow::{bail, ensure, Result};
use rayon::prelude::*;

#[derive(Debug, Clone, Default)]
pub struct CpuBackend;

fn dims2(t: &HostTensor) -> Result<(usize, usize)> {
    match t.shape.as_slice() {
        [r, c] => Ok((*r, *c)),
        [c] => Ok((1, *c)),
        s => bail!("expected a 2-D tensor, got shape {s:?}"),
    }
}

pub use gemm::matmul_t;

/// RoPE inverse frequencies as HF computes them (f32): `1 / theta^(2i/D)`.
pub fn rope_inv_freq(head_dim: usize, theta: f64) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let e = (2 * i) as f32 / head_dim as f32;
            1.0f32 / (theta as f32).powf(e)
        })
        .collect()
}

/// `(cos, sin)` of one position: `[D/2]` each, angle = pos * inv_freq in f32 as HF.
pub fn rope_cos_sin(pos: usize, inv_freq: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let p = pos as f32;
    inv_freq
        .iter()
        .map(|f| {
            let a = (p * f) as f64;
            (a.cos() as f32, a.sin() as f32)
        })
        .unzip()
}

/// Rotate-half RoPE in place on rows of width `c` (heads of `head_dim`), row i at
/// `positions[i]`: a' = a cos - b sin, b' = b cos + a sin. `inverse` applies the transpose
/// (the backward): a = a' cos + b' sin, b = b' cos - a' sin.
pub fn rotate_half(
    data: &mut [f32],
    c: usize,
    head_dim: usize,
    positions: &[usize],
    theta: f64,
    inverse: bool,
) {
    let inv = rope_inv_freq(head_dim, theta);
    let half = head_dim / 2;
    let sign = if inverse { -1.0f32 } else { 1.0 };
    // (cos, sin) per distinct position, computed once: a packed batch repeats positions
    // (8 sequences of 128 tokens: 128 distinct of 1024 rows).
    let mut distinct: Vec<usize> = positions.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let table: Vec<(Vec<f32>, Vec<f32>)> =
        distinct.iter().map(|&p| rope_cos_sin(p, &inv)).collect();
    data.par_chunks_mut(c)
        .with_min_len(rows_per_task(c))
        .zip(positions)
        .for_each(|(row, &p)| {
            let (cos, sin) = &table[distinct
                .binary_search(&p)
                .expect("every position is in the table")];
            for head in row.chunks_exact_mut(head_dim) {
                let (a, b) = head.split_at_mut(half);
                for i in 0..half {
                    let (x1, x2, s) = (a[i], b[i], sign * sin[i]);
                    a[i] = x1 * cos[i] - x2 * s;
                    b[i] = x2 * cos[i] + x1 * s;
                }
            }
        });
}

/// Elementwise work below this many elements stays on one thread: waking the pool costs
/// more than it saves (decode steps are one row per sequence).
const ELEMS_PER_TASK: usize = 1 << 15;

/// Rows of width `cols` per parallel task for row-wise ops.
fn rows_per_task(cols: usize) -> usize {
    (ELEMS_PER_TASK / cols.max(1)).max(1)
}

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
    use gemm::{gemm_small, Strided};
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

#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

impl Backend for CpuBackend {
    type Tensor = HostTensor;

    fn name(&self) -> String {
        #[cfg(target_arch = "x86_64")]
        let matmul = gemm::amx::describe();
        #[cfg(not(target_arch = "x86_64"))]
        let matmul = "f32";
        format!("cpu ({matmul}, {} threads)", rayon::current_num_threads())
    }
    fn upload(&self, t: &HostTensor) -> Result<HostTensor> {
        Ok(t.clone())
    }
    fn download(&self, t: &HostTensor) -> Result<HostTensor> {
        Ok(t.clone())
    }
    fn shape<'a>(&self, t: &'a HostTensor) -> &'a [usize] {
        &t.shape
    }
    fn zeros(&self, shape: &[usize]) -> Result<HostTensor> {
        Ok(HostTensor::zeros(shape.to_vec()))
    }

    fn embed(&self, table: &HostTensor, ids: &[u32]) -> Result<HostTensor> {
        let (v, d) = dims2(table)?;
        let mut out = vec![0.0; ids.len() * d];
        for (row, &id) in out.chunks_exact_mut(d).zip(ids) {
            ensure!(
                (id as usize) < v,
                "token id {id} is outside the vocabulary of {v}"
            );
            row.copy_from_slice(&table.data[id as usize * d..(id as usize + 1) * d]);
        }
        Ok(HostTensor::new(vec![ids.len(), d], out))
    }

    fn rmsnorm(&self, x: &HostTensor, w: &HostTensor, eps: f32) -> Result<HostTensor> {
        let (n, d) = dims2(x)?;
        ensure!(
            w.numel() == d,
            "rmsnorm weight has {} elements, rows have {d}",
            w.numel()
        );
        let rows = rows_per_task(d);
        let out = buf::par_new(n * d, rows * d, |c, o| {
            for (o, xi) in o.chunks_exact_mut(d).zip(x.data[c * rows * d..].chunks(d)) {
                let ms = xi.iter().map(|v| v * v).sum::<f32>() / d as f32;
                let r = 1.0 / (ms + eps).sqrt();
                for ((o, xv), wv) in o.iter_mut().zip(xi).zip(&w.data) {
                    *o = wv * (xv * r);
                }
            }
        });
        Ok(HostTensor::new(vec![n, d], out))
    }

    fn linear(&self, x: &HostTensor, w: &HostTensor) -> Result<HostTensor> {
        let (n, k) = dims2(x)?;
        let (m, k2) = dims2(w)?;
        ensure!(
            k == k2,
            "linear: input has {k} columns, weight expects {k2}"
        );
        Ok(HostTensor::new(
            vec![n, m],
            matmul_t(&x.data, &w.data, n, k, m),
        ))
    }

    fn add_assign(&self, x: &mut HostTensor, y: &HostTensor) -> Result<()> {
        ensure!(
            x.shape == y.shape,
            "add: shapes {:?} and {:?} differ",
            x.shape,
            y.shape
        );
        x.data
            .par_iter_mut()
            .with_min_len(ELEMS_PER_TASK)
            .zip(&y.data)
            .for_each(|(a, b)| *a += b);
        Ok(())
    }

    fn rope(
        &self,
        x: &mut HostTensor,
        head_dim: usize,
        positions: &[usize],
        theta: f64,
    ) -> Result<()> {
        let (n, c) = dims2(x)?;
        ensure!(
            positions.len() == n && c % head_dim == 0,
            "rope: {n} rows, {} positions",
            positions.len()
        );
        rotate_half(&mut x.data, c, head_dim, positions, theta, false);
        Ok(())
    }

    fn attention(
        &self,
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
        let (n, qc) = dims2(q)?;
        let (kr, kc) = dims2(k)?;
        ensure!(
            qc == n_heads * dh && kc == n_kv_heads * dh,
            "attention: bad q/k widths {qc}/{kc}"
        );
        ensure!(k.shape == v.shape, "attention: k and v shapes differ");
        for s in spans {
            s.check(n, kr)?;
        }
        let group = n_heads / n_kv_heads;
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f")
            && spans.iter().all(|s| s.q_len >= ATT_BLOCKED_MIN_Q)
        {
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
            let mut z = buf::par_zeroed(n * qc);
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
            return Ok((HostTensor::new(vec![n, qc], z), patterns));
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

    fn swiglu(&self, gate: &HostTensor, up: &HostTensor) -> Result<HostTensor> {
        ensure!(
            gate.shape == up.shape,
            "swiglu: shapes {:?} and {:?} differ",
            gate.shape,
            up.shape
        );
        let data = buf::par_new(gate.data.len(), ELEMS_PER_TASK, |c, o| {
            let at = c * ELEMS_PER_TASK;
            let (g, u) = (&gate.data[at..][..o.len()], &up.data[at..][..o.len()]);
            simd::silu_mul(g, u, o)
        });
        Ok(HostTensor::new(gate.shape.clone(), data))
    }

    fn gather_rows(&self, x: &HostTensor, rows: &[usize]) -> Result<HostTensor> {
        let (n, c) = dims2(x)?;
        let mut out = Vec::with_capacity(rows.len() * c);
        for &r in rows {
            ensure!(r < n, "gather: row {r} out of {n}");
            out.extend_from_slice(&x.data[r * c..(r + 1) * c]);
        }
        Ok(HostTensor::new(vec![rows.len(), c], out))
    }

    fn scatter_rows(&self, dst: &mut HostTensor, rows: &[usize], src: &HostTensor) -> Result<()> {
        let (n, c) = dims2(dst)?;
        let (sn, sc) = dims2(src)?;
        ensure!(
            sc == c && sn == rows.len(),
            "scatter: src {:?} for {} rows of width {c}",
            src.shape,
            rows.len()
        );
        for (i, &r) in rows.iter().enumerate() {
            ensure!(r < n, "scatter: row {r} out of {n}");
            dst.data[r * c..(r + 1) * c].copy_from_slice(&src.data[i * c..(i + 1) * c]);
        }
        Ok(())
    }

    fn write_slices(
        &self,
        x: &mut HostTensor,
        rows: &[usize],
        col0: &[usize],
        values: &HostTensor,
    ) -> Result<()> {
        let (n, c) = dims2(x)?;
        let (vn, width) = dims2(values)?;
        ensure!(
            rows.len() == vn && col0.len() == vn,
            "write_slices: {vn} values for {} rows",
            rows.len()
        );
        for i in 0..vn {
            ensure!(
                rows[i] < n && col0[i] + width <= c,
                "write_slices: slice ({}, {}) out of {:?}",
                rows[i],
                col0[i],
                x.shape
            );
            x.data[rows[i] * c + col0[i]..][..width]
                .copy_from_slice(&values.data[i * width..(i + 1) * width]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::train::TrainBackend;

    fn rnd(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect()
    }

    /// f64 attention forward and backward, one query row at a time.
    #[allow(clippy::type_complexity)]
    fn naive(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        dz: &[f32],
        spans: &[SeqSpan],
        sh: AttnShape,
        kr: usize,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let dh = sh.head_dim;
        let (qc, kc) = (sh.n_heads * dh, sh.n_kv_heads * dh);
        let n = q.len() / qc;
        let group = sh.n_heads / sh.n_kv_heads;
        let scale = 1.0 / (dh as f64).sqrt();
        let (mut z, mut dq) = (vec![0.0; n * qc], vec![0.0; n * qc]);
        let (mut dk, mut dv) = (vec![0.0; kr * kc], vec![0.0; kr * kc]);
        for s in spans {
            for h in 0..sh.n_heads {
                let g = h / group;
                for i in 0..s.q_len {
                    let pos = s.pos0 + i;
                    let qi = (s.q_start + i) * qc + h * dh;
                    let keys: Vec<usize> = (key_lo(pos, sh.window)..=pos).collect();
                    let kr_ = |j: usize| s.kv_row(j) * kc + g * dh;
                    let sc: Vec<f64> = keys
                        .iter()
                        .map(|&j| {
                            (0..dh)
                                .map(|c| q[qi + c] as f64 * k[kr_(j) + c] as f64)
                                .sum::<f64>()
                                * scale
                        })
                        .collect();
                    let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = sc.iter().map(|x| (x - mx).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    let p: Vec<f64> = e.iter().map(|x| x / sum).collect();
                    let dp: Vec<f64> = keys
                        .iter()
                        .map(|&j| {
                            (0..dh)
                                .map(|c| dz[qi + c] as f64 * v[kr_(j) + c] as f64)
                                .sum()
                        })
                        .collect();
                    let pdp: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                    for (jj, &j) in keys.iter().enumerate() {
                        let ds = p[jj] * (dp[jj] - pdp) * scale;
                        for c in 0..dh {
                            z[qi + c] += p[jj] * v[kr_(j) + c] as f64;
                            dq[qi + c] += ds * k[kr_(j) + c] as f64;
                            dk[kr_(j) + c] += ds * q[qi + c] as f64;
                            dv[kr_(j) + c] += p[jj] * dz[qi + c] as f64;
                        }
                    }
                }
            }
        }
        (z, dq, dk, dv)
    }

    fn max_err(got: &[f32], want: &[f64]) -> f64 {
        assert_eq!(got.len(), want.len());
        got.iter()
            .zip(want)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max)
    }

    /// The attention forward and backward (blocked on AVX-512: spans of >= 16 queries,
    /// several query blocks, a cached prefix in separate rows, with and without a window)
    /// against an f64 reference.
    #[test]
    fn attention_and_backward_match_f64() {
        // Span 0: 40 fresh queries. Span 1: 20 queries at positions 10..30, their keys in
        // rows 40..60 and the cached prefix (positions 0..10) in rows 60..70.
        let spans = [
            SeqSpan {
                q_start: 0,
                q_len: 40,
                kv_start: 0,
                pos0: 0,
                kv_new: None,
            },
            SeqSpan {
                q_start: 40,
                q_len: 20,
                kv_start: 60,
                pos0: 10,
                kv_new: Some(40),
            },
        ];
        let (n, kr) = (60, 70);
        for window in [None, Some(13)] {
            let sh = AttnShape {
                n_heads: 6,
                n_kv_heads: 2,
                head_dim: 24,
                window,
            };
            let (qc, kc) = (6 * 24, 2 * 24);
            let q = rnd(n * qc, 1);
            let k = rnd(kr * kc, 2);
            let v = rnd(kr * kc, 3);
            let dz = rnd(n * qc, 4);
            let t = |d: &[f32], r, c| HostTensor::new(vec![r, c], d.to_vec());
            let (qt, kt, vt, dzt) = (t(&q, n, qc), t(&k, kr, kc), t(&v, kr, kc), t(&dz, n, qc));
            let (z, pats) = CpuBackend
                .attention(&qt, &kt, &vt, &spans, sh, &[(1, 4), (0, 1)])
                .unwrap();
            let (dq, dk, dv) = CpuBackend
                .attention_bwd(&dzt, &qt, &kt, &vt, &spans, sh)
                .unwrap();
            let (wz, wdq, wdk, wdv) = naive(&q, &k, &v, &dz, &spans, sh, kr);
            for (name, got, want) in [
                ("z", &z.data, &wz),
                ("dq", &dq.data, &wdq),
                ("dk", &dk.data, &wdk),
                ("dv", &dv.data, &wdv),
            ] {
                let e = max_err(got, want);
                assert!(e < 1e-5, "{name} (window {window:?}): max err {e}");
            }
            // Patterns in (seq, head) order, rows summing to one over the visible keys.
            assert_eq!(
                pats.iter().map(|p| (p.seq, p.head)).collect::<Vec<_>>(),
                [(0, 1), (1, 4)]
            );
            let p1 = &pats[1].probs;
            assert_eq!(p1.shape, [20, 30]);
            for i in 0..20 {
                let pos = 10 + i;
                let row = &p1.data[i * 30..(i + 1) * 30];
                let sum: f32 = row.iter().sum();
                assert!((sum - 1.0).abs() < 1e-5);
                assert!(row[pos + 1..].iter().all(|&x| x == 0.0));
                assert!(row[..key_lo(pos, window)].iter().all(|&x| x == 0.0));
            }
        }
    }
}
