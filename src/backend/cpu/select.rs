//! Which CPU kernels run. `fast` (the default): the AVX-512 kernels (packed and small GEMMs,
//! blocked attention, vector loops) where the CPU has AVX-512, the AMX GEMM where it has
//! AMX-BF16, the `gemm` crate and 8-lane loops elsewhere. `reference`: the plain loops on
//! every CPU, the oracle the fast paths are tested against (`tests/cpu_reference.rs`): the
//! naive GEMM (`gemm/naive.rs`), the per-row attention forward and backward, scalar
//! dot products, softmax, RMSNorm and SwiGLU, RoPE's cos/sin per row. Both are f32; they
//! differ only in the order of f32 sums (and the AMX GEMM's bf16x6 products).
//!
//! `PINPOINT_CPU_KERNELS=reference` (or `fast`) chooses, read once; [`set_kernels`]
//! switches the whole process (tests). Kernels already running finish on the set they
//! started with, one call at a time: a switch between calls is safe.

use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuKernels {
    Fast,
    Reference,
}

/// 0: not read yet; 1: fast; 2: reference.
static CHOICE: AtomicU8 = AtomicU8::new(0);

/// The kernels in use: [`set_kernels`]'s, else `PINPOINT_CPU_KERNELS`'s (default fast).
pub fn kernels() -> CpuKernels {
    match CHOICE.load(Ordering::Relaxed) {
        1 => CpuKernels::Fast,
        2 => CpuKernels::Reference,
        _ => {
            let k = match std::env::var("PINPOINT_CPU_KERNELS").as_deref() {
                Ok("reference") => CpuKernels::Reference,
                Ok("fast") | Err(_) => CpuKernels::Fast,
                Ok(other) => {
                    eprintln!(
                        "PINPOINT_CPU_KERNELS={other:?} is not fast or reference; using fast"
                    );
                    CpuKernels::Fast
                }
            };
            // A racing set_kernels wins: only an unset choice is filled in.
            let _ = CHOICE.compare_exchange(0, code(k), Ordering::Relaxed, Ordering::Relaxed);
            kernels()
        }
    }
}

/// Use `k` from now on, in the whole process.
pub fn set_kernels(k: CpuKernels) {
    CHOICE.store(code(k), Ordering::Relaxed);
}

fn code(k: CpuKernels) -> u8 {
    match k {
        CpuKernels::Fast => 1,
        CpuKernels::Reference => 2,
    }
}

/// Whether the reference loops run.
#[inline]
pub fn reference() -> bool {
    kernels() == CpuKernels::Reference
}

/// Whether the AVX-512 kernels run: the fast set on a CPU with AVX-512F.
#[inline]
pub fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        !reference() && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
