//! f32 math on host buffers for code above the backends (merging LoRA factors into the
//! weights a tuned model saves, the optimizer's host step, path patching's label logits of
//! rows on the host, the cross-entropy of rows the training loss scores on the host),
//! computed by the CPU backend's kernels: callers name this module, not a backend, and the
//! CPU backend does not import it (no cycle).

use super::{AdamStep, HostTensor, ParamState};
use anyhow::Result;

/// `x [n, k] @ w [m, k]^T` on host f32 buffers: `[n, m]`, by the CPU backend's GEMM.
pub fn matmul_t(x: &[f32], w: &[f32], n: usize, k: usize, m: usize) -> Vec<f32> {
    super::cpu::gemm::matmul_t(x, w, n, k, m)
}

/// [`crate::backend::Backend::norm_dot`] of host tensors, in f64.
pub fn norm_dot(x: &HostTensor, norm: &HostTensor, eps: f32, w: &HostTensor) -> Result<HostTensor> {
    super::cpu::ops::norm::norm_dot(x, norm, eps, w)
}

/// One AdamW update of host state `s` by gradient `g` (the reference every backend
/// matches; see `cpu/ops/adamw.rs`).
pub fn adamw(a: &AdamStep, s: &mut ParamState, g: &[f32]) {
    super::cpu::ops::adamw::apply(a, s, g)
}

/// One row's cross-entropy and its gradient on the host, in f64 (see
/// `cpu/ops/xent.rs`): returns the NLL of `t`; the row becomes `scale * (q - onehot(t))`.
pub fn xent_row_f64(row: &mut [f32], t: u32, scale: f32) -> f64 {
    super::cpu::ops::xent::xent_row_f64(row, t, scale)
}

/// A row of logits' max and `sum exp(l - max)` in f64 (see `cpu/ops/xent.rs`).
pub fn softmax_norm_f64(row: &[f32]) -> (f32, f64) {
    super::cpu::ops::xent::softmax_norm_f64(row)
}
