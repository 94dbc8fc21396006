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

fn main() -> ExitCode {
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
