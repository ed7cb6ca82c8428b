//! The `pinpoint` command line.

mod cli;

use clap::Parser;

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

fn main() {
    keep_freed_memory();
    let args = cli::Cli::parse();
    if let Err(e) = cli::run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
