//! f32 GEMMs for the CPU backend.
//!
//! On AVX-512 machines: for few rows (decode steps, single-position sweeps) a
//! register-tiled dot-product kernel over `x [n, k]` and `W [m, k]` rows; otherwise a packed
//! GEMM (`gemm_packed`): B packed into 32-column panels, A into 14-row micro-panels
//! interleaved along k, 14 x 32 register tiles, reduction passes of up to `KC_MAX`, tasks of
//! row blocks by column groups on rayon. Without AVX-512 the `gemm` crate does the work.
//! Within a pass each output sums its products in k order, whatever the blocking.
//! Where the CPU has AMX-BF16, large packed GEMMs go to `cpu_amx` instead (still f32:
//! 6-pass bf16 with f32 accumulation); `PINPOINT_CPU_MATMUL` chooses (see `cpu_amx::mode`).

use rayon::prelude::*;

/// Below this many rows (decode steps, single-position sweeps) the dot-product kernel wins;
/// above it the `gemm` crate's packed kernels do.
const SMALL_N: usize = 16;

/// Output rows (tokens) and columns (features) per parallel task.
const ROW_BLOCK: usize = 64;
const COL_BLOCK: usize = 64;

/// `out [n, m] = x [n, k] @ w [m, k]^T`, f32 accumulate.
pub fn matmul_t(x: &[f32], w: &[f32], n: usize, k: usize, m: usize) -> Vec<f32> {
    assert!(
        x.len() >= n * k && w.len() >= m * k,
        "matmul_t: operands shorter than their shapes"
    );
    #[cfg(target_arch = "x86_64")]
    if n >= SMALL_N && std::arch::is_x86_feature_detected!("avx512f") {
        let (a, b) = t_operands(x, w, k);
        // SAFETY: avx512f detected.
        return unsafe { gemm_packed_new(n, m, k, a, b) };
    }
    let mut out = zeroed(n * m);
    if n == 0 || m == 0 || k == 0 {
        return out;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
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

/// `vec![0.0; len]`, on transparent huge pages when large: such a buffer is a fresh
/// mapping (glibc maps allocations above 32 MiB), and 4 KiB pages would cost one page fault
/// each on first touch (the lm_head's 200 MB of logits: ~50k faults).
pub fn zeroed(len: usize) -> Vec<f32> {
    let mut v = with_capacity_huge(len);
    v.resize(len, 0.0);
    v
}

/// An empty `Vec` with room for `len` elements, on transparent huge pages when large (see
/// [`zeroed`]); advised before the first touch, so the first touch faults 2 MiB at a time.
pub fn with_capacity_huge(len: usize) -> Vec<f32> {
    let v: Vec<f32> = Vec::with_capacity(len);
    #[cfg(target_os = "linux")]
    if len * 4 >= 32 << 20 {
        const HUGE: usize = 2 << 20;
        let start = v.as_ptr() as usize;
        let (a, b) = (
            start.next_multiple_of(HUGE),
            (start + len * 4) / HUGE * HUGE,
        );
        if b > a {
            // SAFETY: advice only, on whole pages inside the allocation.
            unsafe { libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_HUGEPAGE) };
        }
    }
    v
}

/// `len` values made in parallel chunks of `chunk`: `fill(i, c)` gets chunk i (zeroed; it
/// is where the chunk's lines come into cache) and writes it. Unlike `vec![0.0; len]`, no
/// serial memset of the whole buffer on the calling thread (calloc of reused heap memory:
/// ~1 GB per SmolLM2 training step).
pub fn par_new(len: usize, chunk: usize, fill: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut v = with_capacity_huge(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, c)| fill(i, init_zero(c)));
    // SAFETY: the chunks cover all len elements, each initialized by `init_zero`.
    unsafe { v.set_len(len) };
    v
}

/// Two buffers made as [`par_new`] in the same chunks: `fill(i, c1, c2)`.
pub fn par_new2(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [f32], &mut [f32]) + Sync,
) -> (Vec<f32>, Vec<f32>) {
    let (mut v1, mut v2) = (with_capacity_huge(len), with_capacity_huge(len));
    v1.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk.max(1))
        .zip(v2.spare_capacity_mut()[..len].par_chunks_mut(chunk.max(1)))
        .enumerate()
        .for_each(|(i, (c1, c2))| fill(i, init_zero(c1), init_zero(c2)));
    // SAFETY: as in `par_new`, for both buffers.
    unsafe {
        v1.set_len(len);
        v2.set_len(len);
    }
    (v1, v2)
}

/// Zeroes `c` and returns it as initialized values.
fn init_zero(c: &mut [std::mem::MaybeUninit<f32>]) -> &mut [f32] {
    for x in c.iter_mut() {
        x.write(0.0);
    }
    // SAFETY: every element of c was initialized just above.
    unsafe { &mut *(c as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) }
}

/// `vec![0.0; len]`, zeroed in parallel chunks (see [`par_new`]).
pub fn par_zeroed(len: usize) -> Vec<f32> {
    par_new(len, 1 << 16, |_, _| {})
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

/// Raw output pointer shared by tasks that write disjoint blocks.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

#[cfg(target_arch = "x86_64")]
fn matmul_t_blocked(x: &[f32], w: &[f32], n: usize, k: usize, m: usize, out: &mut [f32]) {
    let row_blocks = n.div_ceil(ROW_BLOCK);
    let col_blocks = m.div_ceil(COL_BLOCK);
    let ptr = OutPtr(out.as_mut_ptr());
    (0..row_blocks * col_blocks).into_par_iter().for_each(|t| {
        let (rb, cb) = (t % row_blocks, t / row_blocks);
        let (r0, c0) = (rb * ROW_BLOCK, cb * COL_BLOCK);
        let (r1, c1) = ((r0 + ROW_BLOCK).min(n), (c0 + COL_BLOCK).min(m));
        let p = ptr;
        // SAFETY: avx512f was detected; each task writes only out[r0..r1, c0..c1].
        unsafe { block_avx512(x, w, k, m, r0, r1, c0, c1, p.0) };
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn block_avx512(
    x: &[f32],
    w: &[f32],
    k: usize,
    m: usize,
    r0: usize,
    r1: usize,
    c0: usize,
    c1: usize,
    out: *mut f32,
) {
    // Column tiles outside, row tiles inside: a 4-row slab of W stays in L1 while the x
    // rows of the block stream from L2.
    let mut c = c0;
    while c < c1 {
        let cw = if c1 - c >= 4 { 4 } else { 1 };
        let mut r = r0;
        while r < r1 {
            let rh = if r1 - r >= 4 { 4 } else { 1 };
            match (rh, cw) {
                (4, 4) => tile::<4, 4>(x, w, k, m, r, c, out),
                (4, _) => tile::<4, 1>(x, w, k, m, r, c, out),
                (_, 4) => tile::<1, 4>(x, w, k, m, r, c, out),
                _ => tile::<1, 1>(x, w, k, m, r, c, out),
            }
            r += rh;
        }
        c += cw;
    }
}

/// `out[r..r+R, c..c+C] = x[r..r+R] . w[c..c+C]` over all of k.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::needless_range_loop)]
unsafe fn tile<const R: usize, const C: usize>(
    x: &[f32],
    w: &[f32],
    k: usize,
    m: usize,
    r: usize,
    c: usize,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    let xp = x.as_ptr().add(r * k);
    let wp = w.as_ptr().add(c * k);
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let mut kk = 0;
    while kk + 16 <= k {
        let mut wv = [_mm512_setzero_ps(); C];
        for j in 0..C {
            wv[j] = _mm512_loadu_ps(wp.add(j * k + kk));
        }
        for i in 0..R {
            let xv = _mm512_loadu_ps(xp.add(i * k + kk));
            for j in 0..C {
                acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
            }
        }
        kk += 16;
    }
    if kk < k {
        let mask: __mmask16 = ((1u32 << (k - kk)) - 1) as __mmask16;
        let mut wv = [_mm512_setzero_ps(); C];
        for j in 0..C {
            wv[j] = _mm512_maskz_loadu_ps(mask, wp.add(j * k + kk));
        }
        for i in 0..R {
            let xv = _mm512_maskz_loadu_ps(mask, xp.add(i * k + kk));
            for j in 0..C {
                acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
            }
        }
    }
    for i in 0..R {
        for j in 0..C {
            *out.add((r + i) * m + c + j) = _mm512_reduce_add_ps(acc[i][j]);
        }
    }
}

/// Output columns per packed panel (two 16-lane vectors) and rows per micro-tile.
const NR: usize = 32;
const MR: usize = 14;
/// Reduction depth per pass of [`gemm_small`]: a 32-column panel of KC rows (32 KiB)
/// stays in L1.
const KC: usize = 256;
/// Deepest reduction pass of the packed GEMM. Deep passes mean fewer loads and stores of
/// the output (with k = 576 one pass instead of three; measured ~10% faster): the packed
/// A micro-panel (14 x KC) and the B panel (KC x 32) stream from L2.
const KC_MAX: usize = 768;
/// Rows of A per inner block (its pass slice stays in L2 across a task's panels).
const MC: usize = MR * 8;
/// A task's slice of B for one reduction pass (the pass's rows by its panels) stays in L2
/// while all the task's rows go by: at most this many bytes of it.
const B_BLOCK_BYTES: usize = 640 << 10;

/// Largest A packed whole, up front (see `gemm_packed_ptr`).
const WHOLE_A_BYTES: usize = 32 << 20;

/// Reduction depth of each pass of the packed GEMM over `k`: all of it up to [`KC_MAX`],
/// else equal passes (the last may be shorter).
fn pass_depth(k: usize) -> usize {
    k.div_ceil(k.div_ceil(KC_MAX).max(1)).max(1)
}

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
    fn as_slice(&self) -> &[f32] {
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

/// `B [k, m]` packed as panels of NR columns: `panel[p][kk][j] = B[kk][p*NR + j]`,
/// zero-padded past m. `[ceil(m/NR), k, NR]`.
fn pack_panels(b: Strided<'_>, k: usize, m: usize) -> Scratch {
    let panels = m.div_ceil(NR);
    let mut out = Scratch::take(panels * k * NR);
    out.as_mut_slice()
        .par_chunks_mut(k * NR)
        .enumerate()
        .for_each(|(p, panel)| {
            let cols = NR.min(m - p * NR);
            #[cfg(target_arch = "x86_64")]
            if b.rs == 1 && cols == NR && std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: avx512f detected; the panel's 32 columns of b are in bounds
                // (checked by the caller) and `panel` holds k * NR elements.
                unsafe { pack_transposed_avx512(b, k, p * NR, panel) };
                return;
            }
            #[cfg(target_arch = "x86_64")]
            if b.cs == 1 && std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: avx512f detected; the panel's `cols` columns of b are in bounds.
                unsafe { pack_rows_avx512(b, k, p * NR, cols, panel) };
                return;
            }
            for kk in 0..k {
                let dst = &mut panel[kk * NR..(kk + 1) * NR];
                dst[cols..].fill(0.0);
                let dst = &mut dst[..cols];
                let base = b.off + kk * b.rs + p * NR * b.cs;
                if b.cs == 1 {
                    dst.copy_from_slice(&b.data[base..base + cols]);
                } else {
                    for (j, d) in dst.iter_mut().enumerate() {
                        *d = b.data[base + j * b.cs];
                    }
                }
            }
        });
    out
}

/// One full panel of a column-major B (`b.rs == 1`: column j is contiguous along k at
/// `b.off + j * b.cs`, e.g. a weight `[m, k]` used as `W^T`): 16 x 16 blocks transposed in
/// registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_transposed_avx512(b: Strided<'_>, k: usize, c0: usize, panel: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(panel.len() >= k * NR && b.end(k, c0 + NR) <= b.data.len());
    let src = b.data.as_ptr().add(b.off);
    let dst = panel.as_mut_ptr();
    for half in 0..2 {
        let col = |j: usize| src.add((c0 + half * 16 + j) * b.cs);
        let mut kk = 0;
        while kk < k {
            let w = (k - kk).min(16);
            let mask: __mmask16 = if w == 16 {
                0xffff
            } else {
                ((1u32 << w) - 1) as __mmask16
            };
            // r[j] = column j's elements kk..kk+16.
            let mut r = [_mm512_setzero_ps(); 16];
            for (j, x) in r.iter_mut().enumerate() {
                *x = _mm512_maskz_loadu_ps(mask, col(j).add(kk));
            }
            let t = transpose16(r);
            for (i, x) in t.iter().enumerate().take(w) {
                _mm512_storeu_ps(dst.add((kk + i) * NR + half * 16), *x);
            }
            kk += 16;
        }
    }
}

/// One panel of a row-major B (`b.cs == 1`): row kk's `cols` columns from `c0` are
/// contiguous; lanes past `cols` are zeroed.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_rows_avx512(b: Strided<'_>, k: usize, c0: usize, cols: usize, panel: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(panel.len() >= k * NR && cols <= NR && b.end(k, c0 + cols) <= b.data.len());
    let (m_lo, m_hi) = lane_masks(cols);
    let src = b.data.as_ptr().add(b.off + c0);
    let dst = panel.as_mut_ptr();
    for kk in 0..k {
        let row = src.add(kk * b.rs);
        _mm512_storeu_ps(dst.add(kk * NR), _mm512_maskz_loadu_ps(m_lo, row));
        _mm512_storeu_ps(
            dst.add(kk * NR + 16),
            _mm512_maskz_loadu_ps(m_hi, row.add(16)),
        );
    }
}

/// Masks of the first `cols` lanes (at most 32) of two 16-lane vectors.
fn lane_masks(cols: usize) -> (u16, u16) {
    let m_lo = if cols >= 16 {
        0xffff
    } else {
        ((1u32 << cols) - 1) as u16
    };
    let m_hi = if cols >= 32 {
        0xffff
    } else if cols > 16 {
        ((1u32 << (cols - 16)) - 1) as u16
    } else {
        0
    };
    (m_lo, m_hi)
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
    if parts.len() > 1 && super::cpu_amx::use_for(n, m, k_total) {
        // SAFETY: AMX granted (use_for); out has room for n * m; bounds checked inside.
        super::cpu_amx::gemm_sum(out.as_mut_ptr(), false, n, m, parts);
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
    if super::cpu_amx::use_for(n, m, k) {
        // SAFETY: AMX granted (use_for checks supported()); dst's extent asserted above.
        super::cpu_amx::gemm_sum(dst, accumulate, n, m, &[GemmPart { a, b, k }]);
        return;
    }
    gemm_avx512_ptr(dst, accumulate, n, m, k, a, b, whole_a_max)
}

/// The f32 FMA GEMM behind [`gemm_packed_ptr`] (bounds checked there; `k > 0`).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_avx512_ptr(
    dst: *mut f32,
    accumulate: bool,
    n: usize,
    m: usize,
    k: usize,
    a: Strided<'_>,
    b: Strided<'_>,
    whole_a_max: usize,
) {
    // B is packed into panels of NR columns (contiguous, no cache-set aliasing of long
    // row strides; measured as fast or faster than reading contiguous rows in place).
    let packed = pack_panels(b, k, m);

    let src = BSrc {
        ptr: packed.as_ptr(),
        panel: k * NR,
        rs: NR,
    };
    let kc = pass_depth(k);
    let panels = m.div_ceil(NR);
    let threads = rayon::current_num_threads();
    // Tasks: row blocks (about two per thread, so a descheduled thread's share can be taken
    // over) by column groups (as many panels as keep the B block within budget). Row
    // blocks are whole MR-tiles, so every task's micro-tiles are the global ones of
    // [`pack_a_rows`].
    let row_block = n.div_ceil(2 * threads).div_ceil(MR).max(1) * MR;
    let row_blocks = n.div_ceil(row_block);
    // A is packed too. A large A (the 200 MB logits gradient) is packed by each task, block
    // by block, into a buffer that stays in cache, and each task then takes every column
    // panel (B streams from L3). Otherwise A is packed once up front and tasks split the
    // columns into groups whose B block stays in L2.
    let whole_a = n * k * 4 <= whole_a_max;
    let per_group = if whole_a {
        (B_BLOCK_BYTES / (kc * NR * 4)).clamp(1, panels)
    } else {
        panels
    };
    let col_groups = panels.div_ceil(per_group);
    let per_group = panels.div_ceil(col_groups);
    let packed_a = whole_a.then(|| pack_a(a, n, k, kc));
    let a_src = match &packed_a {
        Some(g) => ASrc::Whole(g.as_ptr()),
        None => ASrc::PerBlock(a),
    };
    let ptr = OutPtr(dst);
    (0..row_blocks * col_groups).into_par_iter().for_each(|t| {
        let (rb, cg) = (t % row_blocks, t / row_blocks);
        let rows = (rb * row_block, ((rb + 1) * row_block).min(n));
        let (p0, p1) = (cg * per_group, ((cg + 1) * per_group).min(panels));
        let p = ptr;
        // SAFETY: this task writes only dst[rows, p0*NR..p1*NR) (clipped to m).
        unsafe { packed_block(a_src, n, src, k, kc, m, rows, (p0, p1), accumulate, p.0) };
    });
}

/// Where the packed GEMM's tasks get A: packed whole by [`pack_a`], or packed block by
/// block by each task.
#[derive(Clone, Copy)]
enum ASrc<'a> {
    Whole(*const f32),
    PerBlock(Strided<'a>),
}
unsafe impl Send for ASrc<'_> {}
unsafe impl Sync for ASrc<'_> {}

/// Rows `$r0..$r1` in micro-tiles of [`tile_rows`]: `$kernel::<R, P>(args)` per tile, with
/// `$r` bound to the tile's first row.
macro_rules! for_each_tile {
    ($r0:expr, $r1:expr, $r:ident, $kernel:ident::<$p:literal>($($arg:expr),*)) => {{
        let mut $r = $r0;
        while $r < $r1 {
            let step = tile_rows($r1 - $r);
            match step {
                MR => $kernel::<MR, $p>($($arg),*),
                8 => $kernel::<8, $p>($($arg),*),
                4 => $kernel::<4, $p>($($arg),*),
                _ => $kernel::<1, $p>($($arg),*),
            }
            $r += step;
        }
    }};
}

/// Rows of the micro-tile that starts with `left` rows to go: MR, then 8, 4, 1 at the tail.
fn tile_rows(left: usize) -> usize {
    match left {
        MR.. => MR,
        8.. => 8,
        4.. => 4,
        _ => 1,
    }
}

/// `A [n, k]` packed for the micro-kernels: the pass at `k0` (width `kc'` = the pass
/// width) at offset `n * k0`, laid out as [`pack_a_rows`] of all n rows. `[n * k]`.
fn pack_a(a: Strided<'_>, n: usize, k: usize, kc: usize) -> Scratch {
    let mut out = Scratch::take(n * k);
    // Chunks of whole MR-tiles (the last holds the tail tiles).
    const ROWS: usize = MR * 8;
    let mut k0 = 0;
    while k0 < k {
        let w = kc.min(k - k0);
        out.as_mut_slice()[n * k0..n * (k0 + w)]
            .par_chunks_mut(ROWS * w)
            .enumerate()
            .for_each(|(c, chunk)| {
                let r0 = c * ROWS;
                let r1 = (r0 + ROWS).min(n);
                // SAFETY: avx512f was detected by the GEMM's caller; `chunk` holds
                // (r1 - r0) * w elements; r0 starts a tile and r1 ends one.
                unsafe { pack_a_rows(a, r0, r1, k0, w, chunk.as_mut_ptr()) };
            });
        k0 += w;
    }
    out
}

/// Rows `r0..r1` (r0 starts a micro-tile, r1 ends one) of the reduction slice
/// `k0..k0 + kc` of A packed at `dst [(r1 - r0) * kc]`: the tile of R rows that starts at
/// row r at `(r - r0) * kc`, element `(r + i, k0 + kk)` at `kk * R + i`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_a_rows(a: Strided<'_>, r0: usize, r1: usize, k0: usize, kc: usize, dst: *mut f32) {
    use std::arch::x86_64::*;
    assert!(
        a.end(r1, k0 + kc) <= a.data.len(),
        "pack_a_rows: A out of bounds"
    );
    let src = a.data.as_ptr().add(a.off);
    let mut r = r0;
    while r < r1 {
        let rows = tile_rows(r1 - r);
        let d = dst.add((r - r0) * kc);
        let row_mask: __mmask16 = ((1u32 << rows) - 1) as __mmask16;
        if a.cs == 1 {
            // 16 x 16 blocks transposed in registers: rows in, k-steps out.
            let mut kb = 0;
            while kb < kc {
                let w = (kc - kb).min(16);
                let k_mask: __mmask16 = ((1u32 << w) - 1) as __mmask16;
                let mut v = [_mm512_setzero_ps(); 16];
                for (i, x) in v.iter_mut().enumerate().take(rows) {
                    *x = _mm512_maskz_loadu_ps(k_mask, src.add((r + i) * a.rs + k0 + kb));
                }
                let t = transpose16(v);
                for (j, x) in t.iter().enumerate().take(w) {
                    _mm512_mask_storeu_ps(d.add((kb + j) * rows), row_mask, *x);
                }
                kb += 16;
            }
        } else if a.rs == 1 {
            // Column-major A: a k-step's rows are contiguous.
            for kk in 0..kc {
                let x = _mm512_maskz_loadu_ps(row_mask, src.add(r + (k0 + kk) * a.cs));
                _mm512_mask_storeu_ps(d.add(kk * rows), row_mask, x);
            }
        } else {
            for i in 0..rows {
                for kk in 0..kc {
                    *d.add(kk * rows + i) = *src.add((r + i) * a.rs + (k0 + kk) * a.cs);
                }
            }
        }
        r += rows;
    }
}

thread_local! {
    /// A task's packed block of A (`ASrc::PerBlock`): MC rows by one pass.
    static A_BLOCK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `dst[i * ld + j] (+)= sum_kk a(i, kk) * b(kk, j)` for `i < n`, `j < m`, serially and
/// without packing: for small blocks inside a parallel task (attention). `b`'s rows must be
/// contiguous (`b.cs == 1`).
///
/// # Safety
/// The CPU must support avx512f; `dst` must be valid for reads and writes of `n` rows of
/// `m` elements at stride `ld`, and not overlap `a` or `b`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_small(
    dst: *mut f32,
    ld: usize,
    accumulate: bool,
    n: usize,
    m: usize,
    k: usize,
    a: Strided<'_>,
    b: Strided<'_>,
) {
    assert!(
        b.cs == 1 && a.end(n, k) <= a.data.len() && b.end(k, m) <= b.data.len(),
        "gemm_small: operand out of bounds"
    );
    if n == 0 || m == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..n {
                std::ptr::write_bytes(dst.add(i * ld), 0, m);
            }
        }
        return;
    }
    let bp = b.data.as_ptr().add(b.off);
    for p in 0..m.div_ceil(NR) {
        let mut k0 = 0;
        while k0 < k {
            let kc = KC.min(k - k0);
            let add = accumulate || k0 > 0;
            let tile = Tile::new(k0, kc, ld, p * NR, NR.min(m - p * NR), add, b.rs);
            micro_rows(a, bp.add(k0 * b.rs + p * NR), 0, n, &tile, dst);
            k0 += kc;
        }
    }
}

/// Where panel p's rows live: row kk of panel p at `ptr + p * panel + kk * rs`.
#[derive(Clone, Copy)]
struct BSrc {
    ptr: *const f32,
    panel: usize,
    rs: usize,
}
unsafe impl Send for BSrc {}
unsafe impl Sync for BSrc {}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn packed_block(
    a: ASrc<'_>,
    n: usize,
    src: BSrc,
    k: usize,
    kc_max: usize,
    m: usize,
    (r0, r1): (usize, usize),
    (p0, p1): (usize, usize),
    accumulate: bool,
    out: *mut f32,
) {
    // Reduction passes outside (the pass's B block stays in L2), then blocks of MC rows
    // (their packed A stays in L2 across the panels), then panels.
    let mut local = match a {
        ASrc::PerBlock(_) => A_BLOCK.with(|b| std::mem::take(&mut *b.borrow_mut())),
        ASrc::Whole(_) => Vec::new(),
    };
    let mut k0 = 0;
    while k0 < k {
        let kc = kc_max.min(k - k0);
        let add = accumulate || k0 > 0;
        let mut rb = r0;
        while rb < r1 {
            let re = (rb + MC).min(r1);
            // Packed rows rb..re of this pass: `ap + (r - rb) * kc` is the tile at row r.
            let ap = match a {
                ASrc::Whole(p) => p.add(n * k0 + rb * kc),
                ASrc::PerBlock(a) => {
                    if local.len() < MC * kc {
                        local.resize(MC * kc, 0.0);
                    }
                    pack_a_rows(a, rb, re, k0, kc, local.as_mut_ptr());
                    local.as_ptr()
                }
            };
            for p in p0..p1 {
                let b = src.ptr.add(p * src.panel + k0 * src.rs);
                let tile = Tile::new(k0, kc, m, p * NR, NR.min(m - p * NR), add, src.rs);
                micro_rows_packed(ap, b, rb, re, &tile, out);
            }
            rb = re;
        }
        k0 += kc;
    }
    if let ASrc::PerBlock(_) = a {
        A_BLOCK.with(|b| *b.borrow_mut() = local);
    }
}

/// Micro-tiles down rows `r0..r1` of one column panel, A packed at `ap` (rows from r0,
/// see [`pack_a_rows`]); `r0` starts a micro-tile and `r1` ends one.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn micro_rows_packed(
    ap: *const f32,
    b: *const f32,
    r0: usize,
    r1: usize,
    t: &Tile,
    out: *mut f32,
) {
    for_each_tile!(
        r0,
        r1,
        r,
        micro::<true>(ap.add((r - r0) * t.kc), 0, 0, b, r, t, out)
    );
}

/// `out[r..r+R, c..c+cols] (+)= [lo | hi]` (lanes past `cols` masked off).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn store_tile<const R: usize>(
    lo: &[std::arch::x86_64::__m512; R],
    hi: &[std::arch::x86_64::__m512; R],
    r: usize,
    t: &Tile,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    let (m_lo, m_hi): (__mmask16, __mmask16) = (t.m_lo, t.m_hi);
    for i in 0..R {
        let o = out.add((r + i) * t.m + t.c);
        let (mut l, mut h) = (lo[i], hi[i]);
        if t.add {
            l = _mm512_add_ps(l, _mm512_maskz_loadu_ps(m_lo, o));
            h = _mm512_add_ps(h, _mm512_maskz_loadu_ps(m_hi, o.add(16)));
        }
        _mm512_mask_storeu_ps(o, m_lo, l);
        _mm512_mask_storeu_ps(o.add(16), m_hi, h);
    }
}

/// Micro-tiles down rows `r0..r1` of one column panel.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn micro_rows(a: Strided<'_>, b: *const f32, r0: usize, r1: usize, t: &Tile, out: *mut f32) {
    let base = a.data.as_ptr().add(a.off + t.k0 * a.cs);
    for_each_tile!(
        r0,
        r1,
        r,
        micro::<false>(base.add(r * a.rs), a.cs, a.rs, b, r, t, out)
    );
}

/// Where a micro-tile reads and writes: reduction slice `k0..k0+kc`, output columns
/// `c..c+cols` of rows of width m; `add` accumulates into the output; B rows at stride
/// `bs`, lanes past `cols` masked off.
struct Tile {
    k0: usize,
    kc: usize,
    m: usize,
    c: usize,
    add: bool,
    bs: usize,
    m_lo: u16,
    m_hi: u16,
}

impl Tile {
    fn new(k0: usize, kc: usize, m: usize, c: usize, cols: usize, add: bool, bs: usize) -> Self {
        let (m_lo, m_hi) = lane_masks(cols);
        Tile {
            k0,
            kc,
            m,
            c,
            add,
            bs,
            m_lo,
            m_hi,
        }
    }
}

/// `out[r..r+R, c..c+cols] (+)= A @ b` where A's element (i, kk) (tile row i, reduction
/// step kk of the pass) is at `ap + kk * a_ks + i * a_rs`; `PACKED` A (see [`pack_a_rows`])
/// ignores the strides for the constants `R` and 1 (broadcasts at immediate offsets).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::needless_range_loop, clippy::too_many_arguments)]
unsafe fn micro<const R: usize, const PACKED: bool>(
    ap: *const f32,
    a_ks: usize,
    a_rs: usize,
    b: *const f32,
    r: usize,
    t: &Tile,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    let (a_ks, a_rs) = if PACKED { (R, 1) } else { (a_ks, a_rs) };
    let mut lo = [_mm512_setzero_ps(); R];
    let mut hi = [_mm512_setzero_ps(); R];
    let (m_lo, m_hi): (__mmask16, __mmask16) = (t.m_lo, t.m_hi);
    for kk in 0..t.kc {
        let b0 = _mm512_maskz_loadu_ps(m_lo, b.add(kk * t.bs));
        let b1 = _mm512_maskz_loadu_ps(m_hi, b.add(kk * t.bs + 16));
        let col = ap.add(kk * a_ks);
        for i in 0..R {
            let x = _mm512_set1_ps(*col.add(i * a_rs));
            lo[i] = _mm512_fmadd_ps(x, b0, lo[i]);
            hi[i] = _mm512_fmadd_ps(x, b1, hi[i]);
        }
    }
    store_tile(&lo, &hi, r, t, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive f64 reference.
    fn naive(x: &[f32], w: &[f32], n: usize, k: usize, m: usize) -> Vec<f32> {
        let mut out = vec![0.0; n * m];
        for i in 0..n {
            for j in 0..m {
                out[i * m + j] = (0..k)
                    .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    /// Both ways of packing A (whole, per block), A row-major, column-major and strided
    /// both ways, several reduction passes, tail tiles, accumulate or not.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn packed_a_layouts_match_naive() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("SKIPPED: no avx512f on this CPU");
            return;
        }
        let (n, k, m) = (31, 1700, 45);
        assert!(k > KC_MAX, "the test must span several reduction passes");
        let a: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
            .collect();
        let b: Vec<f32> = (0..k * m)
            .map(|i| ((i * 104729) % 89) as f32 / 89.0 - 0.5)
            .collect();
        // The same A stored three ways: element (r, c) at off + r * rs + c * cs.
        let row_major = a.clone();
        let col_major: Vec<f32> = (0..k * n).map(|i| a[(i % n) * k + i / n]).collect();
        let (pad_rs, pad_cs) = (2 * k + 3, 2);
        let mut strided = vec![f32::NAN; 1 + n * pad_rs];
        for r in 0..n {
            for c in 0..k {
                strided[1 + r * pad_rs + c * pad_cs] = a[r * k + c];
            }
        }
        let layouts = [
            (&row_major, 0, k, 1),
            (&col_major, 0, 1, n),
            (&strided, 1, pad_rs, pad_cs),
        ];
        let sb = Strided {
            data: &b,
            off: 0,
            rs: m,
            cs: 1,
        };
        for (data, off, rs, cs) in layouts {
            let sa = Strided { data, off, rs, cs };
            for whole_a_max in [0, usize::MAX] {
                for accumulate in [false, true] {
                    let mut got = vec![1.0f32; n * m];
                    unsafe {
                        gemm_avx512_ptr(got.as_mut_ptr(), accumulate, n, m, k, sa, sb, whole_a_max)
                    };
                    for i in 0..n {
                        for j in 0..m {
                            let dot: f64 = (0..k)
                                .map(|t| a[i * k + t] as f64 * b[t * m + j] as f64)
                                .sum();
                            let want = dot + if accumulate { 1.0 } else { 0.0 };
                            assert!(
                                (got[i * m + j] as f64 - want).abs() < 1e-3,
                                "rs {rs} cs {cs} whole {whole_a_max} acc {accumulate} \
                                 ({i},{j}): {} vs {want}",
                                got[i * m + j]
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn small_gemm_matches_naive() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("SKIPPED: no avx512f on this CPU");
            return;
        }
        // a transposed in memory, b row-major with a row stride wider than m, dst strided.
        let (n, k, m, ld, brs) = (19, 300, 45, 50, 47);
        let at: Vec<f32> = (0..k * n)
            .map(|i| ((i * 31) % 53) as f32 / 53.0 - 0.5)
            .collect();
        let b: Vec<f32> = (0..k * brs)
            .map(|i| ((i * 17) % 41) as f32 / 41.0 - 0.5)
            .collect();
        let mut got = vec![2.0f32; n * ld];
        let sa = Strided {
            data: &at,
            off: 0,
            rs: 1,
            cs: n,
        };
        let sb = Strided {
            data: &b,
            off: 1,
            rs: brs,
            cs: 1,
        };
        unsafe { gemm_small(got.as_mut_ptr(), ld, true, n, m, k, sa, sb) };
        for i in 0..n {
            for j in 0..ld {
                let want: f64 = if j < m {
                    2.0 + (0..k)
                        .map(|t| at[t * n + i] as f64 * b[1 + t * brs + j] as f64)
                        .sum::<f64>()
                } else {
                    2.0
                };
                assert!((got[i * ld + j] as f64 - want).abs() < 1e-3, "({i},{j})");
            }
        }
    }

    #[test]
    fn pack_panels_of_transposed_and_row_major_b() {
        let (k, m) = (37, 75);
        let w: Vec<f32> = (0..k * m).map(|i| i as f32).collect();
        for (rs, cs) in [(1, k), (m, 1)] {
            let b = Strided {
                data: &w,
                off: 0,
                rs,
                cs,
            };
            let p = pack_panels(b, k, m);
            let p = p.as_slice();
            for pi in 0..m.div_ceil(NR) {
                for kk in 0..k {
                    for j in 0..NR {
                        let c = pi * NR + j;
                        let want = if c < m { w[kk * rs + c * cs] } else { 0.0 };
                        assert_eq!(p[(pi * k + kk) * NR + j], want, "p{pi} k{kk} j{j}");
                    }
                }
            }
        }
    }

    #[test]
    fn matches_naive_on_awkward_shapes() {
        let mut seed = 1u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        for &(n, k, m) in &[
            (1, 1, 1),
            (3, 17, 5),
            (5, 33, 7),
            (67, 129, 70),
            (130, 64, 9),
            (1, 576, 131),
            (8, 15, 65),
            (150, 530, 700),
        ] {
            let x: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
            let w: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let want = naive(&x, &w, n, k, m);
            for (name, got) in [
                ("dispatch", matmul_t(&x, &w, n, k, m)),
                ("gemm crate", {
                    let mut o = vec![0.0; n * m];
                    matmul_t_gemm_crate(&x, &w, n, k, m, &mut o);
                    o
                }),
            ] {
                let err = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(
                    err < 1e-4 * (k as f32).sqrt(),
                    "{name} {n}x{k}x{m}: max err {err}"
                );
            }
        }
    }
}
