//! What the profiler (`crate::profile`) needs of a backend whose calls are queued: a clock
//! on the device's queue.

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
