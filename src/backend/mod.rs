//! The layer-level compute interface. Model math (`transformer.rs`) is written once against
//! [`Backend`]; the CPU backend (f32, the oracle) and a CUDA backend implement it.
//!
//! Activations are row-major 2-D tensors `[rows, cols]` where a row is one token of the
//! packed batch (sequences concatenated, no padding). Per-head tensors keep heads
//! contiguous inside a row: `[rows, heads * head_dim]`, i.e. `[batch, pos, head, head_dim]`
//! when the sequences are of equal length (TransformerLens' `hook_z` layout).

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod train;

use crate::model::HostTensor;
use anyhow::Result;

/// One sequence's place in an attention call.
///
/// Query row `q_start + i` (i < q_len) has absolute position `pos0 + i` and attends to
/// the keys of positions `j <= pos0 + i` (and `pos0 + i - j < window`). The key/value row of
/// position j is `kv_start + j`, except that with `kv_new = Some(s)` the positions
/// `j >= pos0` (this call's own tokens) live at rows `s + (j - pos0)`: a shared prefix in
/// one place, each continuation's new keys in another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqSpan {
    pub q_start: usize,
    pub q_len: usize,
    pub kv_start: usize,
    pub pos0: usize,
    pub kv_new: Option<usize>,
}

impl SeqSpan {
    /// Row of the key/value of absolute position `j`.
    #[inline]
    pub fn kv_row(&self, j: usize) -> usize {
        match self.kv_new {
            Some(s) if j >= self.pos0 => s + (j - self.pos0),
            _ => self.kv_start + j,
        }
    }
    /// Check the span against `q_rows` query rows and `kv_rows` key/value rows.
    pub fn check(&self, q_rows: usize, kv_rows: usize) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.q_start + self.q_len <= q_rows,
            "attention: span {self:?} runs past {q_rows} query rows"
        );
        anyhow::ensure!(
            self.kv_end() <= kv_rows,
            "attention: span {self:?} runs past {kv_rows} key rows"
        );
        Ok(())
    }

    /// Largest key/value row this span reads, plus one.
    pub fn kv_end(&self) -> usize {
        let last = self.pos0 + self.q_len - 1;
        match self.kv_new {
            Some(s) => (s + self.q_len).max(if self.pos0 > 0 {
                self.kv_start + self.pos0
            } else {
                0
            }),
            None => self.kv_start + last + 1,
        }
    }
}

/// Shape facts of an attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Mistral's sliding window: key j is visible from query i iff 0 <= i - j < window.
    pub window: Option<usize>,
}

/// Attention probabilities of one head of one sequence: `[q_len, kv_len]` where
/// `kv_len = pos0 + q_len` (masked entries are 0).
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    pub seq: usize,
    pub head: usize,
    pub probs: HostTensor,
}

/// Layer-level operations. `Tensor` is a device buffer of a 2-D shape.
pub trait Backend: Send + Sync {
    type Tensor: Send + Sync;

    fn name(&self) -> String;
    fn upload(&self, t: &HostTensor) -> Result<Self::Tensor>;
    fn download(&self, t: &Self::Tensor) -> Result<HostTensor>;
    fn shape<'a>(&self, t: &'a Self::Tensor) -> &'a [usize];
    fn zeros(&self, shape: &[usize]) -> Result<Self::Tensor>;

    /// `table[ids[i]]` for each i: `[ids.len(), d]`.
    fn embed(&self, table: &Self::Tensor, ids: &[u32]) -> Result<Self::Tensor>;
    /// RMSNorm over the last dim, then scale by `w` `[d]`.
    fn rmsnorm(&self, x: &Self::Tensor, w: &Self::Tensor, eps: f32) -> Result<Self::Tensor>;
    /// `x [n, k] @ w [m, k]^T -> [n, m]`.
    fn linear(&self, x: &Self::Tensor, w: &Self::Tensor) -> Result<Self::Tensor>;
    /// `x += y`, same shape.
    fn add_assign(&self, x: &mut Self::Tensor, y: &Self::Tensor) -> Result<()>;
    /// Rotate-half RoPE in place on `x [n, heads * head_dim]`, row i at `positions[i]`.
    fn rope(
        &self,
        x: &mut Self::Tensor,
        head_dim: usize,
        positions: &[usize],
        theta: f64,
    ) -> Result<()>;
    /// Causal grouped-query attention. `q [n, H*D]`, `k`,`v` `[rows, G*D]`.
    /// Returns `z [n, H*D]` and the probabilities of `(seq, head)` pairs in `want`.
    fn attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        spans: &[SeqSpan],
        shape: AttnShape,
        want: &[(usize, usize)],
    ) -> Result<(Self::Tensor, Vec<Pattern>)>;
    /// `silu(gate) * up`, same shape.
    fn swiglu(&self, gate: &Self::Tensor, up: &Self::Tensor) -> Result<Self::Tensor>;
    /// Rows `rows` of `x`: `[rows.len(), cols]`.
    fn gather_rows(&self, x: &Self::Tensor, rows: &[usize]) -> Result<Self::Tensor>;
    /// `dst[rows[i]] = src[i]` for each i.
    fn scatter_rows(
        &self,
        dst: &mut Self::Tensor,
        rows: &[usize],
        src: &Self::Tensor,
    ) -> Result<()>;
    /// Overwrite `x[rows[i], col0[i] .. col0[i] + width]` with `values[i]` (`values [n, width]`).
    fn write_slices(
        &self,
        x: &mut Self::Tensor,
        rows: &[usize],
        col0: &[usize],
        values: &HostTensor,
    ) -> Result<()>;

    /// `rmsnorm(x) * norm` of rows `x [n, d]`, times `w [m, d]^T` (m small: label rows of
    /// lm_head), with nothing rounded on the way (the normalized rows and the outputs
    /// stay f32 or better): `[n, m]` on the host. Path patching scores small differences
    /// of large label logits, which a bf16 output would round to 1/16.
    fn norm_dot(
        &self,
        x: &Self::Tensor,
        norm: &Self::Tensor,
        eps: f32,
        w: &Self::Tensor,
    ) -> Result<HostTensor> {
        norm_dot_host(
            &self.download(x)?,
            &self.download(norm)?,
            eps,
            &self.download(w)?,
        )
    }
}

/// [`Backend::norm_dot`] on host tensors, in f64.
pub fn norm_dot_host(
    x: &HostTensor,
    norm: &HostTensor,
    eps: f32,
    w: &HostTensor,
) -> Result<HostTensor> {
    use rayon::prelude::*;
    let d = norm.numel();
    anyhow::ensure!(
        d > 0 && x.numel().is_multiple_of(d) && w.numel().is_multiple_of(d),
        "norm_dot: rows of {:?}, norm of {d}, weights of {:?}",
        x.shape,
        w.shape
    );
    let (n, m) = (x.numel() / d, w.numel() / d);
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
