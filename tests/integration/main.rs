//! End-to-end tests of the `spotter` binary: real files in, real output checked.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod bench;
mod detect;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (fixtures live under `tests/fixtures`).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

/// Runs the binary with `args`; no weights directory of the user's is looked at.
pub fn spotter(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spotter"))
        .args(args)
        .env("SPOTTER_WEIGHTS_DIR", root().join("tests/fixtures/no-weights"))
        .env("XDG_DATA_HOME", root().join("tests/fixtures/no-weights"))
        .env_remove("RUST_LOG")
        .output()
        .expect("spotter runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A user mistake gives one line on stderr, a non-zero exit, and no panic or backtrace.
pub fn assert_clean_error(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure, got success: {err}");
    assert!(err.contains(needle), "stderr lacks '{needle}': {err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line expected: {err}");
}
