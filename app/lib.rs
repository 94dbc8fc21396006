//! Spotter's application crate: the headless commands, the desktop window, and model weights.
//! The `spotter` binary is a thin `main` over it; the GUI tests drive [`gui::SpotterApp`] directly.

pub mod cli;
pub mod gui;
pub mod weights;
