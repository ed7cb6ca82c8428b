//! f32 GEMMs for the CPU backend.
//!
//! On AVX-512 machines: for few rows (decode steps, single-position sweeps) a
//! register-tiled dot-product kernel over `x [n, k]` and `W [m, k]` rows; otherwise a packed
//! GEMM (`gemm_packed`): B packed into 32-column panels, A into 14-row micro-panels
//! interleaved along k, 14 x 32 register tiles, reduction passes of up to `KC_MAX`, tasks of
//! row blocks by column groups on rayon. Without AVX-512 the `gemm` crate does the work;
//! with `PINPOINT_CPU_KERNELS=reference`, the naive loops of `naive.rs` on every CPU.
//! Within a pass each output sums its products in k order, whatever the blocking.
//! Where the CPU has AMX-BF16, large packed GEMMs go to `amx` instead (still f32:
//! 6-pass bf16 with f32 accumulation); `PINPOINT_CPU_MATMUL` chooses (see `amx::mode`).

#[cfg(target_arch = "x86_64")]
pub mod amx;
mod common;
#[cfg(target_arch = "x86_64")]
mod dot;
pub mod naive;
#[doc(hidden)] // public for tests/cpu_gemm.rs
pub mod packed;
#[cfg(test)]
mod tests;

use super::buf::{with_capacity_huge, zeroed};
use super::select;
pub use common::{GemmPart, Strided};
#[cfg(target_arch = "x86_64")]
use dot::matmul_t_blocked;
#[cfg(target_arch = "x86_64")]
pub use packed::gemm_small;
#[cfg(target_arch = "x86_64")]
use packed::{gemm_avx512_ptr, WHOLE_A_BYTES};

/// Below this many rows (decode steps, single-position sweeps) the dot-product kernel wins;
/// above it the packed kernel (or AMX) does.
const SMALL_N: usize = 16;

/// `out [n, m] = x [n, k] @ w [m, k]^T`, f32 accumulate.
pub fn matmul_t(x: &[f32], w: &[f32], n: usize, k: usize, m: usize) -> Vec<f32> {
    assert!(
        x.len() >= n * k && w.len() >= m * k,
        "matmul_t: operands shorter than their shapes"
    );
    if select::reference() {
        return naive::matmul_t(x, w, n, k, m);
    }
    #[cfg(target_arch = "x86_64")]
    if n >= SMALL_N && select::avx512() {
        let (a, b) = t_operands(x, w, k);
        // SAFETY: avx512f detected.
        return unsafe { gemm_packed_new(n, m, k, a, b) };
    }
    let mut out = zeroed(n * m);
    if n == 0 || m == 0 || k == 0 {
        return out;
    }
    #[cfg(target_arch = "x86_64")]
    if select::avx512() {
        if n < SMALL_N {
            matmul_t_blocked(x, w, n, k, m, &mut out);
        } else {
            matmul_t_packed(x, w, n, k, m, &mut out);
        }
        return out;
    }
    matmul_t_gemm_crate(x, w, n, k, m, &mut out);
    out
}

/// Portable path through the `gemm` crate.
pub fn matmul_t_gemm_crate(x: &[f32], w: &[f32], n: usize, k: usize, m: usize, out: &mut [f32]) {
    let threads = rayon::current_num_threads();
    let par = if threads > 1 && n * m * k > 32 * 1024 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the pointers cover exactly the strided extents given: out n*m, x n*k, w m*k.
    unsafe {
        gemm::gemm(
            n,
            m,
            k,
            out.as_mut_ptr(),
            1,
            m as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// `x [n, k]` and `w [m, k]` read as the operands of `x @ w^T`.
fn t_operands<'a>(x: &'a [f32], w: &'a [f32], k: usize) -> (Strided<'a>, Strided<'a>) {
    let a = Strided {
        data: x,
        off: 0,
        rs: k,
        cs: 1,
    };
    let b = Strided {
        data: w,
        off: 0,
        rs: 1,
        cs: k,
    };
    (a, b)
}

#[cfg(target_arch = "x86_64")]
fn matmul_t_packed(x: &[f32], w: &[f32], n: usize, k: usize, m: usize, out: &mut [f32]) {
    let (a, b) = t_operands(x, w, k);
    // SAFETY: avx512f was detected by the caller.
    unsafe { gemm_packed(out, false, n, m, k, a, b) };
}

/// `a [n, k] @ b [k, m]` into a new buffer that is never zero-filled: the kernel's first
/// reduction pass stores every output element (a memset of each output cost ~0.1 s of a
/// SmolLM2 training step).
///
/// # Safety
/// The CPU must support avx512f; `a` and `b` must cover their extents (checked).
#[cfg(target_arch = "x86_64")]
pub unsafe fn gemm_packed_new(
    n: usize,
    m: usize,
    k: usize,
    a: Strided<'_>,
    b: Strided<'_>,
) -> Vec<f32> {
    let mut out = with_capacity_huge(n * m);
    gemm_packed_ptr(out.as_mut_ptr(), n * m, false, n, m, k, a, b, WHOLE_A_BYTES);
    // Every one of the n * m elements was stored above.
    out.set_len(n * m);
    out
}

/// `sum_i a_i [n, k_i] @ b_i [k_i, m]` into a new buffer: on AMX one pass over the output
/// for all parts, else the first part stored and the rest accumulated (no add passes).
///
/// # Safety
/// The CPU must support avx512f; the operands must cover their extents (checked).
#[cfg(target_arch = "x86_64")]
pub unsafe fn gemm_packed_sum_new(n: usize, m: usize, parts: &[GemmPart<'_>]) -> Vec<f32> {
    let mut out = with_capacity_huge(n * m);
    let k_total: usize = parts.iter().map(|p| p.k).sum();
    if parts.len() > 1 && amx::use_for(n, m, k_total) {
        // SAFETY: AMX granted (use_for); out has room for n * m; bounds checked inside.
        amx::gemm_sum(out.as_mut_ptr(), false, n, m, parts);
    } else if parts.is_empty() {
        out.resize(n * m, 0.0);
        return out;
    } else {
        for (i, p) in parts.iter().enumerate() {
            gemm_packed_ptr(
                out.as_mut_ptr(),
                n * m,
                i > 0,
                n,
                m,
                p.k,
                p.a,
                p.b,
                WHOLE_A_BYTES,
            );
        }
    }
    // Every one of the n * m elements was stored above.
    out.set_len(n * m);
    out
}

/// `dst [n, m] (+)= a [n, k] @ b [k, m]` for strided a and b (AVX-512 only).
///
/// # Safety
/// The CPU must support avx512f; `dst` must hold `n * m` elements; `a` and `b` must cover
/// their extents (checked).
#[cfg(target_arch = "x86_64")]
pub unsafe fn gemm_packed(
    dst: &mut [f32],
    accumulate: bool,
    n: usize,
    m: usize,
    k: usize,
    a: Strided<'_>,
    b: Strided<'_>,
) {
    gemm_packed_ptr(
        dst.as_mut_ptr(),
        dst.len(),
        accumulate,
        n,
        m,
        k,
        a,
        b,
        WHOLE_A_BYTES,
    )
}

/// [`gemm_packed`] into `dst_len` elements at `dst`, which may be uninitialized when not
/// accumulating (every element of `[n, m]` is then stored, never read). An A of at most
/// `whole_a_max` bytes is packed whole up front, a larger one block by block.
///
/// # Safety
/// As [`gemm_packed`]; `dst` must be valid for writes (and reads when accumulating) of
/// `dst_len` elements.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_packed_ptr(
    dst: *mut f32,
    dst_len: usize,
    accumulate: bool,
    n: usize,
    m: usize,
    k: usize,
    a: Strided<'_>,
    b: Strided<'_>,
    whole_a_max: usize,
) {
    assert!(
        dst_len >= n * m && a.end(n, k) <= a.data.len() && b.end(k, m) <= b.data.len(),
        "gemm_packed: operand out of bounds"
    );
    if n == 0 || m == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            std::ptr::write_bytes(dst, 0, n * m);
        }
        return;
    }
    if amx::use_for(n, m, k) {
        // SAFETY: AMX granted (use_for checks supported()); dst's extent asserted above.
        amx::gemm_sum(dst, accumulate, n, m, &[GemmPart { a, b, k }]);
        return;
    }
    gemm_avx512_ptr(dst, accumulate, n, m, k, a, b, whole_a_max)
}

/// `dst [m, n] (+)= lhs [m, k] @ rhs [k, n]`, dst row-major contiguous, f32.
pub fn gemm_into(
    dst: &mut [f32],
    accumulate: bool,
    m: usize,
    n: usize,
    k: usize,
    lhs: Strided,
    rhs: Strided,
) {
    assert!(dst.len() >= m * n, "gemm: dst too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    assert!(lhs.end(m, k) <= lhs.data.len(), "gemm: lhs out of bounds");
    assert!(rhs.end(k, n) <= rhs.data.len(), "gemm: rhs out of bounds");
    if select::reference() {
        return naive::gemm_into(dst, accumulate, m, n, k, lhs, rhs);
    }
    #[cfg(target_arch = "x86_64")]
    if m >= 16 && select::avx512() {
        // SAFETY: avx512f detected; bounds asserted above and inside.
        unsafe { gemm_packed(dst, accumulate, m, n, k, lhs, rhs) };
        return;
    }
    let threads = rayon::current_num_threads();
    let par = if threads > 1 && m * n * k > 32 * 1024 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above bound every element the strided views address; dst covers
    // m*n contiguous elements.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr().add(lhs.off),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr().add(rhs.off),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}
