//! A download progress bar on stderr: redrawn in place on a terminal, a line at the start (and
//! on each resume) otherwise. Nothing is printed before the server answers, so a download that
//! cannot start leaves only its error message.

use std::cell::RefCell;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use super::{Progress, human_bytes};

/// Time between redraws of the bar.
const REDRAW: Duration = Duration::from_millis(100);
const WIDTH: usize = 30;

#[derive(Default)]
struct State {
    started: Option<Instant>,
    /// Bytes on disk when the current transfer started (speed counts only what came since).
    base: u64,
    last_draw: Option<Instant>,
    /// A bar line is open (needs a newline before anything else is printed).
    open: bool,
}

pub struct TerminalProgress {
    label: String,
    tty: bool,
    state: RefCell<State>,
}

impl TerminalProgress {
    pub fn new(label: &str) -> Self {
        Self { label: label.to_string(), tty: std::io::stderr().is_terminal(), state: RefCell::default() }
    }

    pub fn update(&self, p: &Progress) {
        let mut s = self.state.borrow_mut();
        match p {
            Progress::Connecting { .. } => {}
            Progress::Started { url, total, resumed_from } => {
                self.close_line(&mut s);
                let size = total.map(|t| format!(" ({})", human_bytes(t))).unwrap_or_default();
                let resume = if *resumed_from > 0 {
                    format!(", resuming after {}", human_bytes(*resumed_from))
                } else {
                    String::new()
                };
                eprintln!("downloading {}{size} from {url}{resume}", self.label);
                s.started = Some(Instant::now());
                s.base = *resumed_from;
            }
            Progress::Transferred { done, total } => {
                let now = Instant::now();
                let finished = total.is_some_and(|t| *done >= t);
                if self.tty && (finished || s.last_draw.is_none_or(|t| now - t >= REDRAW)) {
                    s.last_draw = Some(now);
                    s.open = true;
                    let line = bar_line(*done, *total, s.base, s.started.map(|t| now - t).unwrap_or_default());
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "\r{line}\x1b[K");
                    let _ = err.flush();
                }
            }
            Progress::Retrying { reason, attempt, .. } => {
                self.close_line(&mut s);
                eprintln!("{reason}; retrying (attempt {attempt})");
            }
            Progress::Verifying => self.close_line(&mut s),
        }
    }

    fn close_line(&self, s: &mut State) {
        if s.open {
            eprintln!();
            s.open = false;
        }
    }
}

impl Drop for TerminalProgress {
    /// Ends an open bar line, so an error message that follows starts on its own line.
    fn drop(&mut self) {
        let s = self.state.get_mut();
        if s.open {
            eprintln!();
        }
    }
}

/// `[########......]  45%  23.1 MB / 51.2 MB  10.2 MB/s  ETA 3s`
fn bar_line(done: u64, total: Option<u64>, base: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done.saturating_sub(base) as f64 / secs } else { 0.0 };
    let speed = if rate > 0.0 { format!("  {}/s", human_bytes(rate as u64)) } else { String::new() };
    match total.filter(|t| *t > 0) {
        Some(total) => {
            let frac = (done as f64 / total as f64).clamp(0.0, 1.0);
            let filled = (frac * WIDTH as f64).round() as usize;
            let eta = if rate > 0.0 && done < total {
                format!("  ETA {}", eta_text((total - done) as f64 / rate))
            } else {
                String::new()
            };
            format!(
                "[{}{}] {:>3.0}%  {} / {}{speed}{eta}",
                "#".repeat(filled),
                ".".repeat(WIDTH - filled),
                frac * 100.0,
                human_bytes(done),
                human_bytes(total)
            )
        }
        None => format!("{}{speed}", human_bytes(done)),
    }
}

fn eta_text(secs: f64) -> String {
    let s = secs.ceil() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_shows_fraction_sizes_speed_and_eta() {
        let line = bar_line(25_000_000, Some(100_000_000), 0, Duration::from_secs(5));
        assert!(line.starts_with(&format!("[{}{}]  25%", "#".repeat(8), ".".repeat(22))), "{line}");
        assert!(line.contains("25.0 MB / 100.0 MB"), "{line}");
        assert!(line.contains("5.0 MB/s") && line.ends_with("ETA 15s"), "{line}");
        // Speed counts what came in this transfer, not what an earlier one left.
        let resumed = bar_line(60_000_000, Some(100_000_000), 50_000_000, Duration::from_secs(2));
        assert!(resumed.contains("5.0 MB/s") && resumed.ends_with("ETA 8s"), "{resumed}");
        let done = bar_line(100, Some(100), 0, Duration::from_secs(1));
        assert!(done.starts_with(&format!("[{}] 100%", "#".repeat(WIDTH))) && !done.contains("ETA"), "{done}");
        assert_eq!(bar_line(2_000, None, 0, Duration::ZERO), "2.0 kB");
    }

    #[test]
    fn eta_units() {
        assert_eq!(eta_text(0.2), "1s");
        assert_eq!(eta_text(75.0), "1m15s");
        assert_eq!(eta_text(3725.0), "1h02m");
    }
}
