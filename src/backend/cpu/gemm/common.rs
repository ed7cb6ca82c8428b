//! What the GEMM kernels share: strided operands, the packing-buffer pool, the output
//! pointer of parallel tasks and the AVX-512 16 x 16 transpose.

use crate::backend::cpu::buf::par_zeroed;

/// Raw output pointer shared by tasks that write disjoint blocks.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// One product of a sum of GEMMs, `a [n, k] @ b [k, m]` (n and m shared by the parts).
#[derive(Clone, Copy)]
pub struct GemmPart<'a> {
    pub a: Strided<'a>,
    pub b: Strided<'a>,
    pub k: usize,
}

/// A strided read-only matrix: element (r, c) is `data[off + r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub struct Strided<'a> {
    pub data: &'a [f32],
    pub off: usize,
    pub rs: usize,
    pub cs: usize,
}

impl Strided<'_> {
    /// One past the highest index an `r x c` matrix touches.
    pub fn end(&self, r: usize, c: usize) -> usize {
        if r == 0 || c == 0 {
            return self.off;
        }
        self.off + (r - 1) * self.rs + (c - 1) * self.cs + 1
    }
}

/// Packing buffers kept between calls: a fresh multi-MiB buffer per GEMM costs a page
/// fault per 4 KiB page (the lm_head's packed weight is 113 MB).
static SCRATCH: std::sync::Mutex<Vec<Vec<f32>>> = std::sync::Mutex::new(Vec::new());

/// A buffer of `len` elements from the pool (contents unspecified; every caller overwrites
/// all of it). Invariant of pooled buffers: their whole capacity is initialized, so taking
/// one never zero-fills (a serial memset of up to 200 MB).
fn scratch_take_vec(len: usize) -> Vec<f32> {
    let mut pool = SCRATCH.lock().unwrap_or_else(|e| e.into_inner());
    let best = (0..pool.len())
        .filter(|&i| pool[i].capacity() >= len)
        .min_by_key(|&i| pool[i].capacity());
    let v = best.map(|i| pool.swap_remove(i));
    drop(pool);
    match v {
        Some(mut v) => {
            // SAFETY: the pool invariant: all `capacity` elements are initialized.
            unsafe { v.set_len(v.capacity()) };
            v.truncate(len);
            v
        }
        None => {
            // Zeroed in parallel, whole capacity (the pool invariant).
            let mut v = par_zeroed(len);
            let cap = v.capacity();
            v.resize(cap, 0.0);
            v.truncate(len);
            v
        }
    }
}

/// A pooled buffer of `len` elements (contents unspecified) whose view starts on a 64-byte
/// boundary: a packed 16-lane row is one cache line, not two (glibc's large blocks start
/// 16 bytes into a page). Back to the pool on drop.
pub(crate) struct Scratch {
    v: Vec<f32>,
    off: usize,
    len: usize,
}

impl Scratch {
    pub(crate) fn take(len: usize) -> Self {
        let v = scratch_take_vec(len + 15);
        let off = v.as_ptr().align_offset(64);
        assert!(off <= 15, "f32 buffers are 4-byte aligned");
        Self { v, off, len }
    }
    pub(crate) fn as_slice(&self) -> &[f32] {
        &self.v[self.off..self.off + self.len]
    }
    pub(crate) fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.v[self.off..self.off + self.len]
    }
    pub(crate) fn as_ptr(&self) -> *const f32 {
        self.as_slice().as_ptr()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        scratch_give(std::mem::take(&mut self.v));
    }
}

/// Return a buffer to the pool (at most a few are kept).
fn scratch_give(v: Vec<f32>) {
    let mut pool = SCRATCH.lock().unwrap_or_else(|e| e.into_inner());
    pool.push(v);
    if pool.len() > 4 {
        let i = (0..pool.len()).min_by_key(|&i| pool[i].capacity()).unwrap();
        pool.swap_remove(i);
    }
}

/// 16 x 16 transpose: `out[i]` lane j = `r[j]` lane i.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn transpose16(
    r: [std::arch::x86_64::__m512; 16],
) -> [std::arch::x86_64::__m512; 16] {
    use std::arch::x86_64::*;
    let mut t = [_mm512_setzero_ps(); 16];
    // 32-bit interleave of row pairs.
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // 64-bit interleave of pair-pairs.
    let mut u = [_mm512_setzero_ps(); 16];
    for i in 0..4 {
        let (a0, a1, b0, b1) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
        let pd = _mm512_castps_pd;
        u[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(a0), pd(b0)));
        u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(a0), pd(b0)));
        u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(a1), pd(b1)));
        u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(a1), pd(b1)));
    }
    // Now u[4i + q] holds, in each 128-bit lane L, column 4L + q of rows 4i..4i+4.
    // 128-bit lane shuffles: gather lanes across the four row groups.
    let mut v = [_mm512_setzero_ps(); 16];
    for q in 0..4 {
        v[q] = _mm512_shuffle_f32x4::<0x88>(u[q], u[4 + q]); // lanes 0,2 of u[q], u[4+q]
        v[4 + q] = _mm512_shuffle_f32x4::<0xdd>(u[q], u[4 + q]); // lanes 1,3
        v[8 + q] = _mm512_shuffle_f32x4::<0x88>(u[8 + q], u[12 + q]);
        v[12 + q] = _mm512_shuffle_f32x4::<0xdd>(u[8 + q], u[12 + q]);
    }
    let mut out = [_mm512_setzero_ps(); 16];
    for q in 0..4 {
        // Column 4L + q for L = 0..4: lanes (L=0: v[q] lanes 0,2 -> out[q]), ...
        out[q] = _mm512_shuffle_f32x4::<0x88>(v[q], v[8 + q]);
        out[8 + q] = _mm512_shuffle_f32x4::<0xdd>(v[q], v[8 + q]);
        out[4 + q] = _mm512_shuffle_f32x4::<0x88>(v[4 + q], v[12 + q]);
        out[12 + q] = _mm512_shuffle_f32x4::<0xdd>(v[4 + q], v[12 + q]);
    }
    out
}
