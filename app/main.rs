//! Spotter: real-time video analytics with GELAN / YOLOv9 detectors.
//!
//! One binary: headless commands (`detect`, `bench`) and, without a subcommand, the desktop
//! window. Errors print as one line on stderr with a non-zero exit code.

use std::process::ExitCode;

use clap::Parser;
use spotter::cli;

/// Every frame allocates the same large activations again. glibc's malloc hands them back to
/// the kernel and maps them afresh each time (about 9,000 page faults and a tenth of a
/// gelan-s pass on the CPU); mimalloc keeps them for reuse.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keeps freed memory committed instead of purging it 10 ms after it is freed (mimalloc's
/// default). A pass frees and allocates activations all the time, and 10 ms is a layer or two:
/// purged pages came back as fresh ones, faulted in and cleared by the kernel (4 % of a gelan-c
/// pass in `clear_page_erms`; 13,400 page faults in 11 gelan-s passes, 4,000 with this). The
/// cost: memory freed after a larger model stays resident until it is reused.
#[allow(unsafe_code)]
fn keep_freed_memory() {
    // SAFETY: `mi_option_set` only stores an option value (read atomically by the allocator);
    // it has no preconditions. Same index (15) in mimalloc v2 and v3; the bindings name it not.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

fn main() -> ExitCode {
    keep_freed_memory();
    let args = cli::Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        // Output piped into `head` and closed early is not an error.
        Err(err)
            if err.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
