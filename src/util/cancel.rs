//! Cooperative cancellation: a process-wide flag a front end (the Python package's Ctrl-C
//! watcher) raises, checked by long loops between layers and steps. When it is raised the
//! loop returns [`Cancelled`] before it writes anything more.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// The error a cancelled loop returns (`err.downcast_ref::<Cancelled>()` tells it apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cancelled (interrupted by the user)")
    }
}

impl std::error::Error for Cancelled {}

/// Ask the running loops to stop at their next check.
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Clear a request (before a new call starts).
pub fn reset() {
    REQUESTED.store(false, Ordering::SeqCst);
}

/// `Err(Cancelled)` once a stop was requested.
pub fn check() -> anyhow::Result<()> {
    if REQUESTED.load(Ordering::Relaxed) {
        return Err(Cancelled.into());
    }
    Ok(())
}

/// Was `err` (or its cause chain) a cancellation?
pub fn is_cancelled(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<Cancelled>())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request makes `check` fail with an error `is_cancelled` recognises, through a
    /// context; a reset clears it.
    #[test]
    fn request_check_reset() {
        reset();
        assert!(check().is_ok());
        request();
        let e = check().map_err(|e| e.context("in layer 3")).unwrap_err();
        assert!(is_cancelled(&e), "{e:#}");
        reset();
        assert!(check().is_ok());
        assert!(!is_cancelled(&anyhow::anyhow!("other")));
    }
}
