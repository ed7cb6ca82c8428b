//! CPU buffers: zeroed and filled in parallel chunks, on transparent huge pages when large;
//! how much work a parallel task gets.

use rayon::prelude::*;

/// Elementwise work below this many elements stays on one thread: waking the pool costs
/// more than it saves (decode steps are one row per sequence).
pub(crate) const ELEMS_PER_TASK: usize = 1 << 15;

/// Rows of width `cols` per parallel task for row-wise ops.
pub(crate) fn rows_per_task(cols: usize) -> usize {
    (ELEMS_PER_TASK / cols.max(1)).max(1)
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
