//! The desktop window: egui_kittest drives the real app state (open, switch, compare,
//! thresholds, export) and checks what is shown; a second test runs the real binary under Xvfb.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[path = "../integration/http_server.rs"]
#[allow(dead_code)] // the window's tests use a few of its replies
mod http_server;
mod kittest;
mod window;

use std::path::{Path, PathBuf};

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn tiny(name: &str) -> PathBuf {
    root().join("tests/fixtures/yolov9/tiny").join(format!("{name}.pt"))
}

pub fn demo() -> PathBuf {
    root().join("assets/demo.mp4")
}
