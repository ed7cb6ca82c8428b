//! The `pinpoint` command line.

use pinpoint::cli;

use std::alloc::{GlobalAlloc, Layout, System};

/// The system allocator, with each allocation counted against the current thread's
/// `alloc_cap` scope (templates whose memory only the input decides).
struct Counted;

// SAFETY: every call is forwarded to `System` unchanged; `charge` only reads and writes a
// thread-local counter (or ends the process).
unsafe impl GlobalAlloc for Counted {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        pinpoint::util::alloc_cap::charge(l.size());
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        pinpoint::util::alloc_cap::charge(l.size());
        System.alloc_zeroed(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        pinpoint::util::alloc_cap::charge(new_size);
        System.realloc(p, l, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counted = Counted;

/// Keep freed memory in the heap for reuse: the forward and backward free and re-allocate
/// buffers of tens to hundreds of MB every step, and glibc would otherwise return each to
/// the OS and fault it back in zeroed (a quarter of a train step's time).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
    }
}

/// A closed pipe or a full disk on stdout/stderr ends the process with a message, never
/// a panic: `print!` sites outside the CLI's checked writes land here.
fn quiet_print_failures() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if let Some(why) = msg.strip_prefix("failed printing to ") {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "error: writing to {why}");
            std::process::exit(if why.contains("Broken pipe") { 141 } else { 1 });
        }
        default(info);
    }));
}

fn main() {
    keep_freed_memory();
    quiet_print_failures();
    let args = cli::parse_args();
    let r = cli::run(args).and_then(|()| {
        use std::io::Write as _;
        std::io::stdout()
            .flush()
            .map_err(|e| anyhow::Error::new(e).context("writing to stdout"))
    });
    if let Err(e) = r {
        // A reader that closed the pipe early (`| head`): say so, exit as SIGPIPE would.
        let pipe = e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        });
        eprintln!("error: {e:#}");
        std::process::exit(if pipe { 141 } else { 1 });
    }
}
