//! What the profiler (`crate::profile`) needs of a backend: spans that model code opens
//! (no-ops unless the backend is the profiling wrapper) and a device clock for backends
//! whose calls are queued.

use super::Backend;
use anyhow::Result;

/// Timestamps taken in order on a device's queue (CUDA events), read once at the end so that
/// timing does not serialise the queue. Named ranges go to the device's tracing tools
/// (NVTX, where its library is present), so Nsight sees the profiler's names.
pub trait DeviceClock: Send + Sync {
    /// Queue a timestamp; returns its index (0, 1, ...).
    fn mark(&self) -> Result<usize>;
    /// Wait for the queue, then every mark's time in seconds after mark 0.
    fn resolve(&self) -> Result<Vec<f64>>;
    /// Open a named range in the device's tracing tools.
    fn range_push(&self, name: &str) {
        let _ = name;
    }
    /// Close the innermost range.
    fn range_pop(&self) {}
}

/// A span on `b` that ends when dropped (see [`Backend::span_enter`]).
pub struct Span<'a, B: Backend + ?Sized>(&'a B);

impl<'a, B: Backend + ?Sized> Span<'a, B> {
    #[inline]
    pub fn new(b: &'a B, kind: &'static str, index: Option<usize>) -> Self {
        b.span_enter(kind, index);
        Span(b)
    }
}

impl<B: Backend + ?Sized> Drop for Span<'_, B> {
    #[inline]
    fn drop(&mut self) {
        self.0.span_exit();
    }
}
