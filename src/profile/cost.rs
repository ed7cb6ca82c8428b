//! Analytic work of each op from its shapes: FLOPs (a multiply-add is 2) and the bytes an
//! ideal implementation must move (each input read once, each output written once, at the
//! backend's element size `e`; host transfers at 4 bytes). These place a measured call on
//! the roofline; they are not counted from the hardware.

use crate::backend::{AttnShape, Region, SeqSpan};

/// FLOPs and bytes of one call.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cost {
    pub flops: f64,
    pub bytes: f64,
}

impl Cost {
    pub fn new(flops: f64, bytes: f64) -> Self {
        Self { flops, bytes }
    }
    /// Pure data movement.
    pub fn bytes(bytes: f64) -> Self {
        Self { flops: 0.0, bytes }
    }
}

fn f(x: usize) -> f64 {
    x as f64
}

/// `x [n, k] @ w [m, k]^T`, and its input backward `dy [n, m] @ w [m, k]`.
pub fn linear(n: usize, k: usize, m: usize, e: usize) -> Cost {
    Cost::new(2.0 * f(n) * f(k) * f(m), f((n * k + m * k + n * m) * e))
}

/// The weight backward of `y = x w^T` restricted to a region of `w [m, k]`:
/// `dw[reg] += dy[:, rows]^T x[:, cols]`, `dy [n, m]`, `x [n, k]`; the f32 gradient region
/// is read and written.
pub fn linear_bwd_weight(n: usize, k: usize, m: usize, reg: Region, e: usize) -> Cost {
    let (mr, kr) = match reg {
        Region::Full => (m, k),
        Region::Rows { len, .. } => (len, k),
        Region::Cols { len, .. } => (m, len),
    };
    Cost::new(
        2.0 * f(n) * f(mr) * f(kr),
        f((n * mr + n * kr) * e + 2 * mr * kr * 4),
    )
}

/// RMSNorm of `[n, d]` rows: square, sum, scale, times the weight.
pub fn rmsnorm(n: usize, d: usize, e: usize) -> Cost {
    Cost::new(4.0 * f(n) * f(d), f((2 * n * d + d) * e))
}

/// Its backward (dx; dw when `dw`).
pub fn rmsnorm_bwd(n: usize, d: usize, dw: bool, e: usize) -> Cost {
    let extra = if dw { 2.0 * f(n) * f(d) } else { 0.0 };
    Cost::new(
        8.0 * f(n) * f(d) + extra,
        f((3 * n * d + d) * e + if dw { 2 * d * 4 } else { 0 }),
    )
}

/// Elementwise op over `numel` values reading `reads` and writing `writes` tensors of that
/// size, `flops_per` FLOPs each.
pub fn elementwise(numel: usize, flops_per: f64, reads: usize, writes: usize, e: usize) -> Cost {
    Cost::new(flops_per * f(numel), f(numel * (reads + writes) * e))
}

/// Query-key pairs attention computes: query i of a span (absolute position `pos0 + i`)
/// sees `min(pos + 1, window)` keys.
pub fn attention_pairs(spans: &[SeqSpan], window: Option<usize>) -> f64 {
    let w = window.unwrap_or(usize::MAX);
    let mut pairs = 0.0;
    for s in spans {
        // sum over pos in [pos0, pos0 + q_len) of min(pos + 1, w), in closed form.
        let (a, b) = (s.pos0 + 1, s.pos0 + s.q_len); // visible keys before the cap: a..=b
        let capped_from = w.max(a); // pos + 1 >= w from here on
        let lo_end = b.min(capped_from.saturating_sub(1)); // uncapped part: a..=lo_end
        if lo_end >= a {
            pairs += (f(a) + f(lo_end)) * f(lo_end - a + 1) / 2.0;
        }
        if b >= capped_from {
            pairs += f(w) * f(b - capped_from + 1);
        }
    }
    pairs
}

/// Attention forward: `S = Q K^T` and `Z = P V` over the visible pairs of every head,
/// plus the softmax (5 FLOPs per score); q, k, v read, z written.
pub fn attention(n: usize, kv_rows: usize, spans: &[SeqSpan], shape: AttnShape, e: usize) -> Cost {
    let pairs = attention_pairs(spans, shape.window) * f(shape.n_heads);
    let d = f(shape.head_dim);
    let q = n * shape.n_heads * shape.head_dim;
    let kv = kv_rows * shape.n_kv_heads * shape.head_dim;
    Cost::new(4.0 * d * pairs + 5.0 * pairs, f((2 * q + 2 * kv) * e))
}

/// Attention backward, recomputing the scores: `S`, `dV = P^T dZ`, `dP = dZ V^T`,
/// `dQ = dS K`, `dK = dS^T Q` (5 GEMM-like passes) plus the softmax backward.
pub fn attention_bwd(
    n: usize,
    kv_rows: usize,
    spans: &[SeqSpan],
    shape: AttnShape,
    e: usize,
) -> Cost {
    let pairs = attention_pairs(spans, shape.window) * f(shape.n_heads);
    let d = f(shape.head_dim);
    let q = n * shape.n_heads * shape.head_dim;
    let kv = kv_rows * shape.n_kv_heads * shape.head_dim;
    Cost::new(10.0 * d * pairs + 10.0 * pairs, f((3 * q + 4 * kv) * e))
}

/// Softmax cross-entropy forward and backward over `[n, v]` logits.
pub fn xent(n: usize, v: usize, e: usize) -> Cost {
    Cost::new(5.0 * f(n) * f(v), f(2 * n * v * e))
}

/// One AdamW update of `numel` values: gradient and weight at `e` bytes, the f32 master and
/// both moments read and written.
pub fn adamw(numel: usize, e: usize) -> Cost {
    Cost::new(12.0 * f(numel), f(numel * (2 * e + 6 * 4)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute(spans: &[SeqSpan], window: Option<usize>) -> f64 {
        let w = window.unwrap_or(usize::MAX);
        spans
            .iter()
            .flat_map(|s| (s.pos0..s.pos0 + s.q_len).map(move |p| (p + 1).min(w)))
            .sum::<usize>() as f64
    }

    #[test]
    fn attention_pairs_match_counting_every_pair() {
        let span = |pos0, q_len| SeqSpan {
            q_start: 0,
            q_len,
            kv_start: 0,
            pos0,
            kv_new: None,
        };
        for spans in [
            vec![span(0, 1)],
            vec![span(0, 128), span(0, 7)],
            vec![span(5, 1), span(40, 3), span(0, 33)],
        ] {
            for window in [None, Some(1), Some(2), Some(6), Some(40), Some(1000)] {
                assert_eq!(
                    attention_pairs(&spans, window),
                    brute(&spans, window),
                    "{window:?}"
                );
            }
        }
    }
}
