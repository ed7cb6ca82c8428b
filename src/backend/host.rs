//! f32 math on host buffers for code above the backends (merging LoRA factors into the
//! weights a tuned model saves), computed by the CPU backend's kernels: callers name this
//! module, not a backend, and the CPU backend does not import it (no cycle).

/// `x [n, k] @ w [m, k]^T` on host f32 buffers: `[n, m]`, by the CPU backend's GEMM.
pub fn matmul_t(x: &[f32], w: &[f32], n: usize, k: usize, m: usize) -> Vec<f32> {
    super::cpu::gemm::matmul_t(x, w, n, k, m)
}
