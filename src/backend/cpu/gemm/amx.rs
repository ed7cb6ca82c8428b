//! f32 GEMM on AMX tiles (Intel Sapphire Rapids and later): `dst [n, m] (+)= a [n, k] @ b [k, m]`.
//!
//! Every f32 operand is split into three bf16 pieces, x = x0 + x1 + x2 (x0 = bf16(x),
//! x1 = bf16(x - x0), x2 = bf16(x - x0 - x1); exact for every normal x whose last piece is
//! not subnormal), and the six products xi * yj with i + j <= 2 are accumulated in f32 tiles
//! by TDPBF16PS (a product of two bf16 is exact in f32). The three dropped products are
//! below 2^-26 of |x y|, under f32's own rounding (2^-24): this is an f32 GEMM, not a bf16 one
//! (the "6-pass bf16" of TPUs' highest matmul precision). The tests bound its error against
//! an f64 reference by the error of a serial f32 FMA loop on the same data.
//!
//! Layout. The reduction runs in chunks of 32 (16 bf16 pairs). A is packed as
//! `[row tile][chunk][piece][16 rows][32]` bf16 (1 KiB tiles), B as
//! `[column tile][chunk][piece][16 pairs][16 columns][2]` (the VNNI tile layout); both are
//! zero-padded to whole pairs of tiles. A task owns a block of output rows by columns and
//! walks the reduction in slices of [`SLICE`] chunks: per slice, per pair of row tiles (its
//! 24 KiB of A stay in L1), per pair of column tiles, 2 x 2 output tiles are loaded, take
//! 24 tile products per chunk and are stored back. Each output element sums its products in
//! the same order whatever the blocking or thread count: results are deterministic.

use super::common::{transpose16, GemmPart, OutPtr, Scratch, Strided};
use rayon::prelude::*;
use std::arch::asm;
use std::arch::x86_64::*;

/// Reduction values per chunk (one tile row: 32 bf16).
const CHUNK: usize = 32;
/// Tile rows (output rows of a tile, bf16 pairs of a B tile).
const TR: usize = 16;
/// bf16 pieces per f32 value.
pub const PIECES: usize = 3;
/// bf16 elements of one packed tile.
const TILE: usize = TR * CHUNK;
/// Chunks per reduction slice: a pair of row tiles' slice of A, 2 x SLICE x PIECES KiB, stays in
/// L1 while the column tiles go by.
const SLICE: usize = 4;
/// Pairs of row tiles (32 rows each) per task, and pairs of column tiles per task at most:
/// the task's output block (256 x 768 f32, 768 KiB) stays in L2 across the slices. Measured
/// on the SmolLM2 step against 12 column pairs (1.91-1.97 s vs 2.05-2.12 s, alternated):
/// wider blocks read each packed A row fewer times.
const ROW_PAIRS: usize = 8;
const COL_PAIRS: usize = 24;

/// Which GEMM the packed CPU path runs, from `PINPOINT_CPU_MATMUL` (read once): unset or
/// `auto`, AMX where [`supported`] and the shape is [`worth_it`]; `avx512`, never (the plain
/// f32 FMA GEMM, for comparisons); `amx`, AMX for every shape where supported (the tests run
/// the tiny fixture models this way, whose GEMMs are all below the size threshold).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Auto,
    Avx512,
    Amx,
}

pub fn mode() -> Mode {
    static MODE: std::sync::OnceLock<Mode> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| match std::env::var("PINPOINT_CPU_MATMUL").as_deref() {
        Ok("avx512") => Mode::Avx512,
        Ok("amx") if supported() => Mode::Amx,
        Ok("amx") => {
            eprintln!("PINPOINT_CPU_MATMUL=amx: this CPU or OS has no AMX-BF16; using AVX-512");
            Mode::Avx512
        }
        Ok("auto") | Err(_) => Mode::Auto,
        Ok(other) => {
            eprintln!("PINPOINT_CPU_MATMUL={other:?} is not auto, avx512 or amx; using auto");
            Mode::Auto
        }
    })
}

/// Whether a packed GEMM of this shape runs on AMX tiles.
pub fn use_for(n: usize, m: usize, k: usize) -> bool {
    match mode() {
        Mode::Avx512 => false,
        Mode::Amx => true,
        Mode::Auto => worth_it(n, m, k) && supported(),
    }
}

/// How the CPU backend multiplies, for reports: `f32 (AMX bf16x6)` or `f32 (AVX-512 FMA)`.
pub fn describe() -> &'static str {
    match mode() {
        Mode::Avx512 => "f32 (AVX-512 FMA)",
        _ if supported() => "f32; GEMMs on AMX, 6-pass bf16",
        _ => "f32 (AVX-512 FMA)",
    }
}

/// The CPU and the OS allow AMX-BF16 here (asks Linux for the tile state once).
pub fn supported() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        if !(std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512bf16")
            && cpuid_amx_bf16())
        {
            return false;
        }
        request_tile_state()
    })
}

/// CPUID leaf 7: AMX-BF16 (EDX bit 22) and AMX-TILE (EDX bit 24). (std's detection of
/// these is not stable yet.)
fn cpuid_amx_bf16() -> bool {
    // CPUID leaf 7 exists on every CPU with AVX-512 (checked first).
    let edx = __cpuid_count(7, 0).edx;
    edx & (1 << 22) != 0 && edx & (1 << 24) != 0
}

/// Linux keeps AMX off until a process asks (arch_prctl ARCH_REQ_XCOMP_PERM for
/// XFEATURE_XTILEDATA); the grant covers every thread of the process.
#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain syscall with integer arguments.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
}

/// Worth the packing: enough rows and columns to fill tiles and enough work to amortize it.
pub fn worth_it(n: usize, m: usize, k: usize) -> bool {
    n >= TR && m >= TR && k >= CHUNK && n * m * k >= 1 << 20
}

/// `dst [n, m] (+)= sum_i a_i [n, k_i] @ b_i [k_i, m]` over the parts, in one pass over the
/// output (an input gradient through several weights: no partial sums written and re-added);
/// `dst` may be uninitialized when not accumulating (every element is then stored, never
/// read).
///
/// # Safety
/// [`supported`] must have returned true; `dst` must be valid for writes (and reads when
/// accumulating) of `n * m` elements and not overlap any operand; the operands must cover
/// their extents (checked).
pub unsafe fn gemm_sum(
    dst: *mut f32,
    accumulate: bool,
    n: usize,
    m: usize,
    parts: &[GemmPart<'_>],
) {
    for p in parts {
        assert!(
            p.a.end(n, p.k) <= p.a.data.len() && p.b.end(p.k, m) <= p.b.data.len(),
            "amx gemm: operand out of bounds"
        );
    }
    if n == 0 || m == 0 {
        return;
    }
    // Parts without products add nothing.
    let parts: Vec<GemmPart> = parts.iter().filter(|p| p.k > 0).copied().collect();
    if parts.is_empty() {
        if !accumulate {
            std::ptr::write_bytes(dst, 0, n * m);
        }
        return;
    }
    let row_pairs = n.div_ceil(2 * TR);
    let col_pairs = m.div_ceil(2 * TR);
    // Every part packed before any task runs (kept alive until the tasks end).
    let buffers: Vec<(Scratch, Scratch)> = parts
        .iter()
        .map(|p| {
            let chunks = p.k.div_ceil(CHUNK);
            (
                pack_a(p.a, n, p.k, chunks, row_pairs * 2),
                pack_b(p.b, p.k, m, chunks, col_pairs * 2),
            )
        })
        .collect();
    let packed: Vec<PackedPart> = buffers
        .iter()
        .zip(parts)
        .map(|((pa, pb), p)| PackedPart {
            a: pa.as_ptr() as *const u16,
            b: pb.as_ptr() as *const u16,
            chunks: p.k.div_ceil(CHUNK),
        })
        .collect();

    // Tasks: blocks of up to ROW_PAIRS x COL_PAIRS tile pairs, split evenly.
    let col_groups = col_pairs.div_ceil(COL_PAIRS);
    let per_group = col_pairs.div_ceil(col_groups);
    let row_blocks = row_pairs.div_ceil(ROW_PAIRS);
    let per_block = row_pairs.div_ceil(row_blocks);
    let out = OutPtr(dst);
    let packed = &packed;
    (0..row_blocks * col_groups).into_par_iter().for_each(|t| {
        let (rb, cg) = (t % row_blocks, t / row_blocks);
        let rp = (rb * per_block, ((rb + 1) * per_block).min(row_pairs));
        let cp = (cg * per_group, ((cg + 1) * per_group).min(col_pairs));
        let o = out;
        // SAFETY: AMX granted (caller); the task writes only its own block of dst.
        unsafe { block(packed, rp, cp, n, m, accumulate, o.0) };
    });
    drop(buffers);
}

/// One part's packed operands (see the module's layout) and its reduction chunks.
#[derive(Clone, Copy)]
struct PackedPart {
    a: *const u16,
    b: *const u16,
    chunks: usize,
}
unsafe impl Send for PackedPart {}
unsafe impl Sync for PackedPart {}

thread_local! {
    /// A task's padded output block where it overhangs `[n, m]`.
    static EDGE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Output rows of row-tile pairs `rp.0..rp.1` by columns of column-tile pairs `cp.0..cp.1`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn block(
    parts: &[PackedPart],
    rp: (usize, usize),
    cp: (usize, usize),
    n: usize,
    m: usize,
    accumulate: bool,
    dst: *mut f32,
) {
    let (r0, r1) = (rp.0 * 2 * TR, rp.1 * 2 * TR);
    let (c0, c1) = (cp.0 * 2 * TR, cp.1 * 2 * TR);
    let (rows, cols) = (r1 - r0, c1 - c0);
    let inside = r1 <= n && c1 <= m;
    let mut edge = Vec::new();
    // Output tile (i, j) of the block at `base + i * 16 * ld + j * 16` (elements).
    let (base, ld) = if inside {
        (dst.add(r0 * m + c0), m)
    } else {
        edge = EDGE.with(|e| std::mem::take(&mut *e.borrow_mut()));
        edge.resize(rows * cols, 0.0);
        if accumulate {
            for r in r0..r1.min(n) {
                let w = c1.min(m) - c0;
                std::ptr::copy_nonoverlapping(
                    dst.add(r * m + c0),
                    edge.as_mut_ptr().add((r - r0) * cols),
                    w,
                );
            }
        }
        (edge.as_mut_ptr(), cols)
    };
    load_config();
    let tile_bytes = PIECES * TILE * 2;
    // The parts' slices one after another: each output sums part 0's products in k order,
    // then part 1's, and so on.
    let slices = parts
        .iter()
        .enumerate()
        .flat_map(|(pi, p)| (0..p.chunks.div_ceil(SLICE)).map(move |s| (pi, s * SLICE)));
    // The first slice of all (a part may have none) starts the outputs from zero.
    let mut fresh = !accumulate;
    for (pi, s0) in slices {
        let PackedPart {
            a: pa,
            b: pb,
            chunks,
        } = parts[pi];
        let s1 = (s0 + SLICE).min(chunks);
        for i in rp.0..rp.1 {
            // Row tiles 2i and 2i + 1, chunk s0.
            let a0 = (pa as *const u8).add((2 * i * chunks + s0) * tile_bytes);
            let a1 = a0.add(chunks * tile_bytes);
            for j in cp.0..cp.1 {
                let b0 = (pb as *const u8).add((2 * j * chunks + s0) * tile_bytes);
                let b1 = b0.add(chunks * tile_bytes);
                let c = base.add((i - rp.0) * 2 * TR * ld + (j - cp.0) * 2 * TR);
                tile_pairs(a0, a1, b0, b1, s1 - s0, c, ld * 4, fresh);
            }
        }
        fresh = false;
    }
    release_tiles();
    if !inside {
        for r in r0..r1.min(n) {
            let w = c1.min(m) - c0;
            std::ptr::copy_nonoverlapping(
                edge.as_ptr().add((r - r0) * cols),
                dst.add(r * m + c0),
                w,
            );
        }
        EDGE.with(|e| *e.borrow_mut() = edge);
    }
}

/// Tile configuration (palette 1): tiles 0-7 all 16 rows of 64 bytes. 0-3 accumulate the
/// 2 x 2 output tiles, 4-5 hold A pieces of the two row tiles, 6-7 B pieces of the two
/// column tiles.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

#[inline]
unsafe fn load_config() {
    let mut cfg = TileConfig([0; 64]);
    cfg.0[0] = 1;
    for t in 0..8 {
        cfg.0[16 + 2 * t] = 64; // bytes per row (u16 little-endian)
        cfg.0[48 + t] = TR as u8; // rows
    }
    asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
}

#[inline]
unsafe fn release_tiles() {
    asm!("tilerelease", options(nostack, nomem));
}

/// The 2 x 2 output tiles += (A pieces in tmm4, tmm5) x (B pieces in tmm6, tmm7).
macro_rules! products {
    () => {
        concat!(
            "tdpbf16ps tmm0, tmm4, tmm6\n",
            "tdpbf16ps tmm1, tmm4, tmm7\n",
            "tdpbf16ps tmm2, tmm5, tmm6\n",
            "tdpbf16ps tmm3, tmm5, tmm7",
        )
    };
}

/// Output tiles (2 x 2 of 16 x 16, at `c` with row stride `ldc_bytes`) += the `chunks` chunks
/// of A row tiles at `a0`, `a1` and B column tiles at `b0`, `b1` (consecutive chunks
/// `PIECES` KiB apart); `fresh` starts from zero instead of loading the outputs.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn tile_pairs(
    a0: *const u8,
    a1: *const u8,
    b0: *const u8,
    b1: *const u8,
    chunks: usize,
    c: *mut f32,
    ldc_bytes: usize,
    fresh: bool,
) {
    let c2 = (c as *mut u8).add(16 * ldc_bytes);
    if fresh {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
    } else {
        asm!(
            "tileloadd tmm0, [{c} + {ld}*1]",
            "tileloadd tmm1, [{c} + {ld}*1 + 64]",
            "tileloadd tmm2, [{c2} + {ld}*1]",
            "tileloadd tmm3, [{c2} + {ld}*1 + 64]",
            c = in(reg) c,
            c2 = in(reg) c2,
            ld = in(reg) ldc_bytes,
            options(nostack, readonly)
        );
    }
    let step = PIECES * TILE * 2;
    for q in 0..chunks {
        // Products by piece: (0,0) (1,0) (2,0) (1,1) (0,1) (0,2): B pieces loaded once each.
        asm!(
            "tileloadd tmm6, [{b0} + {s}*1]",
            "tileloadd tmm7, [{b1} + {s}*1]",
            "tileloadd tmm4, [{a0} + {s}*1]",
            "tileloadd tmm5, [{a1} + {s}*1]",
            products!(),
            "tileloadd tmm4, [{a0} + {s}*1 + 1024]",
            "tileloadd tmm5, [{a1} + {s}*1 + 1024]",
            products!(),
            "tileloadd tmm4, [{a0} + {s}*1 + 2048]",
            "tileloadd tmm5, [{a1} + {s}*1 + 2048]",
            products!(),
            "tileloadd tmm6, [{b0} + {s}*1 + 1024]",
            "tileloadd tmm7, [{b1} + {s}*1 + 1024]",
            "tileloadd tmm4, [{a0} + {s}*1 + 1024]",
            "tileloadd tmm5, [{a1} + {s}*1 + 1024]",
            products!(),
            "tileloadd tmm4, [{a0} + {s}*1]",
            "tileloadd tmm5, [{a1} + {s}*1]",
            products!(),
            "tileloadd tmm6, [{b0} + {s}*1 + 2048]",
            "tileloadd tmm7, [{b1} + {s}*1 + 2048]",
            products!(),
            a0 = in(reg) a0.add(q * step),
            a1 = in(reg) a1.add(q * step),
            b0 = in(reg) b0.add(q * step),
            b1 = in(reg) b1.add(q * step),
            s = in(reg) 64usize,
            options(nostack, readonly)
        );
    }
    asm!(
        "tilestored [{c} + {ld}*1], tmm0",
        "tilestored [{c} + {ld}*1 + 64], tmm1",
        "tilestored [{c2} + {ld}*1], tmm2",
        "tilestored [{c2} + {ld}*1 + 64], tmm3",
        c = in(reg) c,
        c2 = in(reg) c2,
        ld = in(reg) ldc_bytes,
        options(nostack)
    );
}

/// The three bf16 pieces of 32 f32 values (`lo` then `hi`), each as 32 bf16 in lane order.
///
/// # Safety
/// The CPU must support avx512f and avx512bf16.
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
#[doc(hidden)] // public for tests/cpu_gemm.rs
pub unsafe fn split3(mut lo: __m512, mut hi: __m512) -> [__m512i; PIECES] {
    let mut out = [_mm512_setzero_si512(); PIECES];
    for (p, piece) in out.iter_mut().enumerate() {
        // Round to nearest even; lanes 0-15 from lo, 16-31 from hi.
        let h: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        *piece = h;
        if p + 1 < PIECES {
            let widen = |half: __m256i| {
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(half)))
            };
            // Exact: the residual of rounding to a shorter mantissa is representable.
            lo = _mm512_sub_ps(lo, widen(_mm512_castsi512_si256(h)));
            hi = _mm512_sub_ps(hi, widen(_mm512_extracti64x4_epi64::<1>(h)));
        }
    }
    out
}

/// `w <= 32` values at `p`, `stride` apart, as two vectors (zero past w): contiguous lines
/// (row-major A, a weight read as W^T) by masked loads, strided ones gathered.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load_line(p: *const f32, stride: usize, w: usize) -> (__m512, __m512) {
    if stride == 1 {
        let (m_lo, m_hi) = masks32(w);
        return (
            _mm512_maskz_loadu_ps(m_lo, p),
            _mm512_maskz_loadu_ps(m_hi, p.add(16)),
        );
    }
    let mut buf = [0f32; CHUNK];
    for (q, v) in buf.iter_mut().enumerate().take(w) {
        *v = *p.add(q * stride);
    }
    (
        _mm512_loadu_ps(buf.as_ptr()),
        _mm512_loadu_ps(buf.as_ptr().add(16)),
    )
}

/// Masks of the first `w` lanes of 32 (two vectors of 16).
fn masks32(w: usize) -> (__mmask16, __mmask16) {
    let bits = if w >= 32 { u32::MAX } else { (1u32 << w) - 1 };
    (bits as __mmask16, (bits >> 16) as __mmask16)
}

/// `tiles` row (column) tiles of `chunks` packed tiles each, `[tiles][chunks][PIECES][512]`
/// bf16, tile t written by `pack(t, dst)` in parallel.
fn pack_tiles(tiles: usize, chunks: usize, pack: impl Fn(usize, *mut u16) + Sync) -> Scratch {
    let per_tile = chunks * PIECES * TILE; // bf16, an even count
    let mut out = Scratch::take(tiles * per_tile / 2);
    out.as_mut_slice()
        .par_chunks_mut(per_tile / 2)
        .enumerate()
        .for_each(|(t, dst)| pack(t, dst.as_mut_ptr() as *mut u16));
    out
}

/// A packed as `[row_tiles][chunks][PIECES][16][32]` bf16, zero past n and k.
fn pack_a(a: Strided<'_>, n: usize, k: usize, chunks: usize, row_tiles: usize) -> Scratch {
    // SAFETY: AMX (so AVX512-BF16) checked by the caller; dst holds one row tile.
    pack_tiles(row_tiles, chunks, |t, dst| unsafe {
        pack_a_tile(a, n, k, chunks, t, dst)
    })
}

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pack_a_tile(a: Strided<'_>, n: usize, k: usize, chunks: usize, t: usize, dst: *mut u16) {
    let src = a.data.as_ptr().add(a.off);
    for c in 0..chunks {
        let k0 = c * CHUNK;
        let w = CHUNK.min(k - k0);
        let tile = dst.add(c * PIECES * TILE);
        for i in 0..TR {
            let r = t * TR + i;
            let (lo, hi) = if r >= n {
                (_mm512_setzero_ps(), _mm512_setzero_ps())
            } else {
                load_line(src.add(r * a.rs + k0 * a.cs), a.cs, w)
            };
            for (p, piece) in split3(lo, hi).iter().enumerate() {
                _mm512_storeu_si512(tile.add(p * TILE + i * CHUNK) as *mut _, *piece);
            }
        }
    }
}

/// B as `[col_tiles][chunks][PIECES][16 pairs][16 columns][2]` bf16, zero past k and m.
fn pack_b(b: Strided<'_>, k: usize, m: usize, chunks: usize, col_tiles: usize) -> Scratch {
    // SAFETY: as pack_a (AVX512-BW comes with AMX); dst holds one column tile.
    pack_tiles(col_tiles, chunks, |t, dst| unsafe {
        pack_b_tile(b, k, m, chunks, t, dst)
    })
}

#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::needless_range_loop)] // j indexes the pieces' columns and names B's column
unsafe fn pack_b_tile(b: Strided<'_>, k: usize, m: usize, chunks: usize, t: usize, dst: *mut u16) {
    let src = b.data.as_ptr().add(b.off);
    let cols = TR.min(m.saturating_sub(t * TR));
    let col_mask: __mmask16 = ((1u32 << cols) - 1) as __mmask16;
    for c in 0..chunks {
        let k0 = c * CHUNK;
        let w = CHUNK.min(k - k0);
        let tile = dst.add(c * PIECES * TILE);
        if b.cs == 1 && b.rs != 1 {
            // Row-major B: a pair of rows gives one VNNI row (even/odd interleaved).
            let interleave = _mm512_set_epi16(
                31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5,
                20, 4, 19, 3, 18, 2, 17, 1, 16, 0,
            );
            for kp in 0..TR {
                let row = |q: usize| {
                    if q < w {
                        _mm512_maskz_loadu_ps(col_mask, src.add((k0 + q) * b.rs + t * TR))
                    } else {
                        _mm512_setzero_ps()
                    }
                };
                let pieces = split3(row(2 * kp), row(2 * kp + 1));
                for (p, piece) in pieces.iter().enumerate() {
                    let v = _mm512_permutexvar_epi16(interleave, *piece);
                    _mm512_storeu_si512(tile.add(p * TILE + kp * CHUNK) as *mut _, v);
                }
            }
        } else {
            // Column j's 32 reduction values split are its 16 pairs; a 16 x 16 transpose of
            // the pairs (as 32-bit lanes) makes the VNNI rows.
            let mut v = [[_mm512_setzero_ps(); TR]; PIECES];
            for j in 0..cols {
                let col = t * TR + j;
                let (lo, hi) = load_line(src.add(col * b.cs + k0 * b.rs), b.rs, w);
                for (p, piece) in split3(lo, hi).iter().enumerate() {
                    v[p][j] = _mm512_castsi512_ps(*piece);
                }
            }
            for (p, rows) in v.iter().enumerate() {
                for (kp, r) in transpose16(*rows).iter().enumerate() {
                    _mm512_storeu_ps(tile.add(p * TILE + kp * CHUNK) as *mut f32, *r);
                }
            }
        }
    }
}
