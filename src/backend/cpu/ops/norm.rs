//! RMSNorm on the CPU: forward `y = w * x / rms(x)` and its backward.

use crate::backend::cpu::buf::rows_per_task;
use crate::backend::cpu::buf::{par_new, par_zeroed};
use crate::backend::cpu::simd;
use crate::backend::shapes;
use crate::backend::HostTensor;
use anyhow::Result;
use rayon::prelude::*;

pub(crate) fn rmsnorm(x: &HostTensor, w: &HostTensor, eps: f32) -> Result<HostTensor> {
    let (n, d) = shapes::rmsnorm(&x.shape, w.numel())?;
    let rows = rows_per_task(d);
    let out = par_new(n * d, rows * d, |c, o| {
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

pub(crate) fn rmsnorm_bwd(
    dy: &HostTensor,
    x: &HostTensor,
    w: &HostTensor,
    eps: f32,
    dw: Option<&mut HostTensor>,
) -> Result<HostTensor> {
    let (n, d) = shapes::rmsnorm_bwd(
        &dy.shape,
        &x.shape,
        w.numel(),
        dw.as_ref().map(|t| t.numel()),
    )?;
    // y = w * x * r, r = (mean(x^2) + eps)^-1/2; with g = w * dy:
    // dx = r * g - x * r^3 * (g . x) / d;  dw += dy * x * r (summed over rows).
    let want_dw = dw.is_some();
    let rows_per_task = (1usize << 14).div_ceil(d).max(1);
    let mut dx = par_zeroed(n * d);
    // Per task: dx of its rows (=) and their dw partial sum.
    let dw_sum = dx
        .par_chunks_mut(d * rows_per_task)
        .zip(x.data.par_chunks(d * rows_per_task))
        .zip(dy.data.par_chunks(d * rows_per_task))
        .map(|((dxs, xs), dys)| {
            let mut dw_part = if want_dw { vec![0.0f32; d] } else { vec![] };
            for ((dxi, xi), dyi) in dxs
                .chunks_exact_mut(d)
                .zip(xs.chunks_exact(d))
                .zip(dys.chunks_exact(d))
            {
                let ms = simd::dot(xi, xi) / d as f32;
                let r = 1.0 / (ms + eps).sqrt();
                for ((o, dy), w) in dxi.iter_mut().zip(dyi).zip(&w.data) {
                    *o = w * dy;
                }
                // g . x in SIMD lanes (a serial f32 sum cannot be vectorised).
                let gx = simd::dot(dxi, xi);
                let c = r * r * r * gx / d as f32;
                for (o, x) in dxi.iter_mut().zip(xi) {
                    *o = r * *o - x * c;
                }
                for ((a, x), dy) in dw_part.iter_mut().zip(xi).zip(dyi) {
                    *a += dy * x * r;
                }
            }
            dw_part
        })
        .reduce(Vec::new, |mut a, b| {
            if a.is_empty() {
                return b;
            }
            for (a, b) in a.iter_mut().zip(&b) {
                *a += b;
            }
            a
        });
    if let Some(dw) = dw {
        for (a, b) in dw.data.iter_mut().zip(&dw_sum) {
            *a += b;
        }
    }
    Ok(HostTensor::new(vec![n, d], dx))
}

/// `rmsnorm(x) * norm` of rows `x [n, d]` times label rows `w [m, d]^T`, in f64 (what
/// `Backend::norm_dot` returns): `[n, m]`.
pub fn norm_dot(x: &HostTensor, norm: &HostTensor, eps: f32, w: &HostTensor) -> Result<HostTensor> {
    let (n, d, m) = shapes::norm_dot(&x.shape, norm.numel(), &w.shape)?;
    let data: Vec<f32> = x
        .data
        .par_chunks(d)
        .flat_map_iter(|row| {
            let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / d as f64;
            let inv = 1.0 / (ms + eps as f64).sqrt();
            w.data.chunks(d).map(move |wr| {
                let mut acc = 0.0f64;
                for ((&xv, &g), &wv) in row.iter().zip(&norm.data).zip(wr) {
                    acc += xv as f64 * inv * g as f64 * wv as f64;
                }
                acc as f32
            })
        })
        .collect();
    Ok(HostTensor::new(vec![n, m], data))
}
