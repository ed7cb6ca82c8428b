//! The packed f32 FMA GEMM (AVX-512): B packed into 32-column panels, A into 14-row
//! micro-panels interleaved along k, 14 x 32 register tiles, reduction passes of up to
//! `KC_MAX`, tasks of row blocks by column groups on rayon. Within a pass each output sums
//! its products in k order, whatever the blocking.

#[cfg(target_arch = "x86_64")]
use super::common::transpose16;
use super::common::{OutPtr, Scratch, Strided};
use rayon::prelude::*;

/// Output columns per packed panel (two 16-lane vectors) and rows per micro-tile.
pub(super) const NR: usize = 32;
const MR: usize = 14;
/// Reduction depth per pass of [`gemm_small`]: a 32-column panel of KC rows (32 KiB)
/// stays in L1.
const KC: usize = 256;
/// Deepest reduction pass of the packed GEMM. Deep passes mean fewer loads and stores of
/// the output (with k = 576 one pass instead of three; measured ~10% faster): the packed
/// A micro-panel (14 x KC) and the B panel (KC x 32) stream from L2.
pub const KC_MAX: usize = 768;
/// Rows of A per inner block (its pass slice stays in L2 across a task's panels).
const MC: usize = MR * 8;
/// A task's slice of B for one reduction pass (the pass's rows by its panels) stays in L2
/// while all the task's rows go by: at most this many bytes of it.
const B_BLOCK_BYTES: usize = 640 << 10;

/// Largest A packed whole, up front (see `gemm_packed_ptr`).
pub(super) const WHOLE_A_BYTES: usize = 32 << 20;

/// Reduction depth of each pass of the packed GEMM over `k`: all of it up to [`KC_MAX`],
/// else equal passes (the last may be shorter).
fn pass_depth(k: usize) -> usize {
    k.div_ceil(k.div_ceil(KC_MAX).max(1)).max(1)
}

/// `B [k, m]` packed as panels of NR columns: `panel[p][kk][j] = B[kk][p*NR + j]`,
/// zero-padded past m. `[ceil(m/NR), k, NR]`.
pub(super) fn pack_panels(b: Strided<'_>, k: usize, m: usize) -> Scratch {
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

/// The f32 FMA GEMM behind [`gemm_packed_ptr`] (bounds checked there; `k > 0`).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_avx512_ptr(
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
