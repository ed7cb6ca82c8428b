//! Progress seen from outside the terminal: when a front end observes progress (the
//! Python package draws it with tqdm), [`crate::util::progress_bar`] hides its terminal bar
//! and registers it here, and the front end polls [`current`] for (message, position,
//! length).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static OBSERVED: AtomicBool = AtomicBool::new(false);
static CURRENT: Mutex<Option<indicatif::ProgressBar>> = Mutex::new(None);

/// Start (`true`) or stop observing; stopping forgets the current bar.
pub fn observe(on: bool) {
    OBSERVED.store(on, Ordering::SeqCst);
    if !on {
        *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

pub fn observed() -> bool {
    OBSERVED.load(Ordering::SeqCst)
}

/// Make `pb` the bar [`current`] reports.
pub fn register(pb: &indicatif::ProgressBar) {
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = Some(pb.clone());
}

/// The newest bar's (message, position, length), if one was registered.
pub fn current() -> Option<(String, u64, u64)> {
    let g = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
    g.as_ref()
        .map(|pb| (pb.message(), pb.position(), pb.length().unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An observed bar is hidden and reports its position; stopping forgets it.
    #[test]
    fn observed_bar_reports_position() {
        observe(true);
        let pb = crate::util::progress_bar(5, "sweep", true).unwrap();
        assert!(pb.is_hidden());
        pb.inc(2);
        assert_eq!(current(), Some(("sweep".to_string(), 2, 5)));
        observe(false);
        assert_eq!(current(), None);
    }
}
