//! The f32 CPU backend: the reference oracle and the no-GPU default.
//! GEMMs go through the `gemm` crate (runtime SIMD dispatch); the rest is rayon loops.

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

pub use super::cpu_gemm::matmul_t;

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
    data.par_chunks_mut(c)
        .with_min_len(rows_per_task(c))
        .zip(positions)
        .for_each(|(row, &p)| {
            let (cos, sin) = rope_cos_sin(p, &inv);
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
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for x in row.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        *x *= inv;
    }
}

#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

impl Backend for CpuBackend {
    type Tensor = HostTensor;

    fn name(&self) -> String {
        format!("cpu (f32, {} threads)", rayon::current_num_threads())
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
        let mut out = vec![0.0; n * d];
        out.par_chunks_mut(d)
            .with_min_len(rows_per_task(d))
            .zip(x.data.par_chunks(d))
            .for_each(|(o, xi)| {
                let ms = xi.iter().map(|v| v * v).sum::<f32>() / d as f32;
                let r = 1.0 / (ms + eps).sqrt();
                for ((o, xv), wv) in o.iter_mut().zip(xi).zip(&w.data) {
                    *o = wv * (xv * r);
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
                        let dot = super::simd::dot(qrow, krow);
                        scores.push(dot * scale);
                    }
                    softmax_in_place(&mut scores);
                    let zi = &mut zh[i * dh..(i + 1) * dh];
                    for (jj, &p) in scores.iter().enumerate() {
                        let vrow = &v.data[s.kv_row(lo + jj) * kc + g * dh..][..dh];
                        super::simd::axpy(p, vrow, zi);
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
        let data = gate
            .data
            .par_iter()
            .with_min_len(ELEMS_PER_TASK)
            .zip(&up.data)
            .map(|(g, u)| silu(*g) * u)
            .collect();
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
