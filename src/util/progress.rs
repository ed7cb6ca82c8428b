//! Progress bars, and progress seen from outside the terminal: when a front end observes
//! progress (the Python package draws it with tqdm), [`bar`] and [`progress_bar`] hide
//! their terminal bar and register it here, and the front end polls [`current`] for
//! (message, position, length).

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

/// A progress bar of `len` steps drawn with `template` (indicatif syntax), or a hidden one
/// when `show` is false: the one place the engine's long jobs make their bars.
pub fn bar(len: u64, template: &str, show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if observed() {
        b.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        register(&b);
    }
    b
}

/// The analyses' bar: `what` as its message, rate and ETA; None when `show` is false.
pub fn progress_bar(len: u64, what: &str, show: bool) -> Option<indicatif::ProgressBar> {
    if !show {
        return None;
    }
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>14} [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    if observed() {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        register(&pb);
    }
    Some(pb)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An observed bar is hidden and reports its position; stopping forgets it.
    #[test]
    fn observed_bar_reports_position() {
        observe(true);
        let pb = progress_bar(5, "sweep", true).unwrap();
        assert!(pb.is_hidden());
        pb.inc(2);
        assert_eq!(current(), Some(("sweep".to_string(), 2, 5)));
        observe(false);
        assert_eq!(current(), None);
    }
}
