//! A cap on the bytes one thread allocates inside a scope, for work whose memory an input
//! decides and no check can bound beforehand (a chat template that doubles a string 60
//! times asks for 2^60 bytes, and an allocation that fails aborts the process).
//!
//! The binary's global allocator calls [`charge`] for every allocation; inside
//! [`capped`] the bytes are counted (cumulatively: growth by repeated copies counts too),
//! and past the cap the process prints an error naming the work and exits with status 1
//! at once (no unwinding is possible from inside an allocator). Outside a scope, and in
//! programs whose allocator does not call [`charge`], nothing is counted.

use std::cell::{Cell, RefCell};

thread_local! {
    /// Bytes left to this thread's scope; `usize::MAX` outside any scope.
    static LEFT: Cell<usize> = const { Cell::new(usize::MAX) };
    /// What the scope does and its limit, for the error.
    static WHAT: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Run `f` with at most `limit` bytes allocated on this thread; `what` names the work in
/// the error (e.g. "rendering the chat template of m/tokenizer_config.json").
pub fn capped<T>(limit: usize, what: &str, f: impl FnOnce() -> T) -> T {
    let msg = format!(
        "error: {what}: it allocated more than {} MiB in all, the limit on this work (the input grows a string or loops without end)\n",
        limit >> 20
    );
    WHAT.with(|w| *w.borrow_mut() = msg);
    let before = LEFT.with(|l| l.replace(limit));
    let out = f();
    LEFT.with(|l| l.set(before));
    out
}

/// Count `bytes` against the current scope; past its cap, report and exit. Called by the
/// global allocator: it must not allocate, so the message was formatted beforehand.
#[inline]
pub fn charge(bytes: usize) {
    let over = LEFT
        .try_with(|l| {
            let left = l.get();
            if left == usize::MAX {
                return false;
            }
            match left.checked_sub(bytes) {
                Some(rest) => {
                    l.set(rest);
                    false
                }
                None => {
                    l.set(usize::MAX);
                    true
                }
            }
        })
        .unwrap_or(false);
    if over {
        WHAT.with(|w| {
            let w = w.borrow();
            // SAFETY: writing a buffer we own to stderr, then ending the process without
            // running anything else (no allocation, no unwinding through the allocator).
            unsafe {
                libc::write(2, w.as_ptr().cast(), w.len());
                libc::_exit(1);
            }
        });
    }
}
