//! `pinpoint profile`: where a workload's time goes, per op (CPU) or kernel launch (CUDA).
//!
//! [`Profiled`] wraps any backend and times every trait call: the host's monotonic clock
//! where calls run to completion (CPU), device timestamps around each launch where they are
//! queued (CUDA, [`DeviceClock`](crate::backend::DeviceClock): read once at the end, so
//! timing does not serialise the stream). Model code marks phases and layers with
//! [`Span`](crate::backend::Span), which is a no-op on every other backend: with profiling
//! off nothing is timed and nothing is recorded.
//!
//! [`Profile`] is what one run recorded; `report` turns it into the table, `profile.json`
//! and a `trace.json` in the Trace Event Format (Perfetto, chrome://tracing).

pub mod cost;
pub mod report;
mod wrapper;

pub use cost::Cost;
pub use wrapper::Profiled;

/// One timed op call. Times are seconds after the profile's start.
#[derive(Debug, Clone, PartialEq)]
pub struct OpRec {
    pub name: &'static str,
    /// The innermost span open at the call.
    pub span: Option<usize>,
    pub start: f64,
    pub end: f64,
    pub cost: Cost,
}

/// One span (a phase such as `forward`, or `layer` with its index).
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRec {
    pub kind: &'static str,
    pub index: Option<usize>,
    pub parent: Option<usize>,
    pub start: f64,
    pub end: f64,
}

impl SpanRec {
    /// `layer 3`, `forward`.
    pub fn label(&self) -> String {
        match self.index {
            Some(i) => format!("{} {i}", self.kind),
            None => self.kind.to_string(),
        }
    }
}

/// What one profiled run recorded.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The device in words.
    pub device: String,
    /// `host` (monotonic clock per call) or `device` (timestamps on the device's queue).
    pub clock: &'static str,
    /// Host wall time from the start to the end (after waiting for the device).
    pub wall_s: f64,
    pub ops: Vec<OpRec>,
    pub spans: Vec<SpanRec>,
}

impl Profile {
    /// Seconds inside ops (their sum; ops never overlap: one queue, one thread).
    pub fn ops_s(&self) -> f64 {
        self.ops.iter().map(|o| o.end - o.start).sum()
    }
    /// The outermost span enclosing span `s` (itself if it has no parent).
    pub fn root_of(&self, mut s: usize) -> usize {
        while let Some(p) = self.spans[s].parent {
            s = p;
        }
        s
    }
    /// The nearest span of `kind` enclosing span `s` (or `s` itself).
    pub fn enclosing(&self, mut s: usize, kind: &str) -> Option<usize> {
        loop {
            if self.spans[s].kind == kind {
                return Some(s);
            }
            s = self.spans[s].parent?;
        }
    }
    /// An op's phase (its outermost span's kind; `-` outside every span) and layer (its
    /// nearest `layer` span's index).
    pub fn place(&self, op: &OpRec) -> (&'static str, Option<usize>) {
        match op.span {
            None => ("-", None),
            Some(s) => (
                self.spans[self.root_of(s)].kind,
                self.enclosing(s, "layer").and_then(|l| self.spans[l].index),
            ),
        }
    }
}
