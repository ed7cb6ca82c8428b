//! Spans that model code opens for the profiler (`crate::profile`): no-ops unless the
//! backend is the profiling wrapper. The device clock it reads: `clock.rs`.

use super::Backend;

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
