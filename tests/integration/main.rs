//! End-to-end tests of the `spotter` binary: real files in, real output checked.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod bench;
mod detect;
mod http_server;
mod video;
mod weights;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (fixtures live under `tests/fixtures`).
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

/// Runs the binary with `args`; no weights directory of the user's is looked at, and a
/// missing variant is "downloaded" from a loopback port where nothing listens (no test ever
/// reaches the internet).
pub fn spotter(args: &[&str]) -> Output {
    spotter_with(args, &[])
}

/// [`spotter`] with extra (or replaced) environment variables.
pub fn spotter_with(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spotter"));
    cmd.args(args)
        .env("SPOTTER_WEIGHTS_DIR", root().join("tests/fixtures/no-weights"))
        .env("XDG_DATA_HOME", root().join("tests/fixtures/no-weights"))
        .env("SPOTTER_WEIGHTS_MIRROR", "http://127.0.0.1:9/")
        .env_remove("SPOTTER_WEIGHTS_REGISTRY")
        .env_remove("RUST_LOG");
    for proxy in ["http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
        cmd.env_remove(proxy);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("spotter runs")
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
