//! Rotate-half RoPE on the CPU: forward and backward (the rotation by `-angle`).

use crate::backend::cpu::buf::rows_per_task;
use crate::backend::{shapes, HostTensor};
use anyhow::Result;
use rayon::prelude::*;

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
/// `positions[i]` with inverse frequencies `inv` (`[head_dim / 2]`): a' = a cos - b sin, b' = b cos + a sin. `inverse` applies the transpose
/// (the backward): a = a' cos + b' sin, b = b' cos - a' sin.
pub fn rotate_half(
    data: &mut [f32],
    c: usize,
    head_dim: usize,
    positions: &[usize],
    inv: &[f32],
    inverse: bool,
) {
    let half = head_dim / 2;
    let sign = if inverse { -1.0f32 } else { 1.0 };
    if crate::backend::cpu::select::reference() {
        // The plain loop: (cos, sin) of each row's position, computed for that row.
        for (row, &p) in data.chunks_mut(c).zip(positions) {
            let (cos, sin) = rope_cos_sin(p, inv);
            for head in row.chunks_exact_mut(head_dim) {
                let (a, b) = head.split_at_mut(half);
                for i in 0..half {
                    let (x1, x2, s) = (a[i], b[i], sign * sin[i]);
                    a[i] = x1 * cos[i] - x2 * s;
                    b[i] = x2 * cos[i] + x1 * s;
                }
            }
        }
        return;
    }
    // (cos, sin) per distinct position, computed once: a packed batch repeats positions
    // (8 sequences of 128 tokens: 128 distinct of 1024 rows).
    let mut distinct: Vec<usize> = positions.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let table: Vec<(Vec<f32>, Vec<f32>)> = distinct.iter().map(|&p| rope_cos_sin(p, inv)).collect();
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

pub(crate) fn rope(
    x: &mut HostTensor,
    head_dim: usize,
    positions: &[usize],
    inv_freq: &[f32],
) -> Result<()> {
    let (_, c) = shapes::rope("rope", &x.shape, head_dim, positions, inv_freq)?;
    rotate_half(&mut x.data, c, head_dim, positions, inv_freq, false);
    Ok(())
}

pub(crate) fn rope_bwd(
    dx: &mut HostTensor,
    head_dim: usize,
    positions: &[usize],
    inv_freq: &[f32],
) -> Result<()> {
    let (_, c) = shapes::rope("rope_bwd", &dx.shape, head_dim, positions, inv_freq)?;
    rotate_half(&mut dx.data, c, head_dim, positions, inv_freq, true);
    Ok(())
}
