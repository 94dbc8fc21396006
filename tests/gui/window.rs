//! The real binary in a real X server (Xvfb): the window opens on the demo clip, and a
//! screenshot of the screen shows the video and the model's boxes.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{demo, root};

/// Kills (and reaps) a child process when dropped, so no test leaves one behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn require(tool: &str) {
    let found =
        std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()));
    assert!(found, "{tool} is not installed: run `make deps` (Debian packages xvfb, xauth, x11-apps, ffmpeg)");
}

/// An Xvfb server, stopped with SIGTERM when dropped so that it removes its lock file and
/// socket. Killed outright (SIGKILL), each run left both behind in /tmp, and after 50 runs on
/// one machine no display number in the range the test once picked from was free.
struct XServer {
    child: Reaped,
    /// Xvfb's stdout, kept open: it wrote the display number there.
    _stdout: BufReader<ChildStdout>,
    display: String,
}

impl XServer {
    /// Starts Xvfb on a display it picks itself (`-displayfd`: it skips displays in use and
    /// reclaims stale locks) and waits until it accepts connections (when it prints the number).
    fn start() -> Self {
        let mut child = Command::new("Xvfb")
            .args(["-displayfd", "1", "-screen", "0", "1280x800x24", "-nolisten", "tcp"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut number = String::new();
        stdout.read_line(&mut number).unwrap();
        let number: u32 = number.trim().parse().unwrap_or_else(|_| panic!("Xvfb did not start: {number:?}"));
        Self { child: Reaped(child), _stdout: stdout, display: format!(":{number}") }
    }
}

impl Drop for XServer {
    /// SIGTERM, then up to 5 s for Xvfb to exit; [`Reaped`] kills and reaps it after that.
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// An RGB screenshot of the whole screen: (width, height, pixels).
pub fn screenshot(display: &str, png: &Path) -> (u32, u32, Vec<u8>) {
    let xwd = png.with_extension("xwd");
    let ok = Command::new("xwd").args(["-root", "-silent", "-display", display, "-out"]).arg(&xwd).status().unwrap();
    assert!(ok.success(), "xwd failed");
    let ok = Command::new("ffmpeg").args(["-y", "-loglevel", "error", "-i"]).arg(&xwd).arg(png).status().unwrap();
    assert!(ok.success(), "ffmpeg could not convert the screenshot");
    let mut raw = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-i"])
        .arg(png)
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pixels = Vec::new();
    raw.stdout.take().unwrap().read_to_end(&mut pixels).unwrap();
    assert!(raw.wait().unwrap().success());
    let (w, h) = (1280, 800);
    assert_eq!(pixels.len(), (w * h * 3) as usize, "screenshot size");
    (w, h, pixels)
}

type Shot = (u32, u32, Vec<u8>);

/// Starts Xvfb and the app with `args`, takes a screenshot every few seconds until `done` accepts
/// one or `secs` have passed, and returns the last; also writes it to `png`.
pub fn run_app_and_capture(args: &[&str], secs: u64, png: &Path, home: &Path, done: impl Fn(&Shot) -> bool) -> Shot {
    for tool in ["Xvfb", "xwd", "ffmpeg"] {
        require(tool);
    }
    let xvfb = XServer::start();
    let display = xvfb.display.clone();
    let runtime = home.join("runtime");
    std::fs::create_dir_all(&runtime).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let log = std::fs::File::create(home.join("app.log")).unwrap();
    let mut app = Reaped(
        Command::new(env!("CARGO_BIN_EXE_spotter"))
            .args(args)
            .current_dir(root())
            .env("DISPLAY", &display)
            .env_remove("WAYLAND_DISPLAY")
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("XDG_DATA_HOME", home.join("data"))
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("HOME", home)
            .env("SPOTTER_WEIGHTS_DIR", home.join("weights"))
            .env("SPOTTER_WEIGHTS_MIRROR", "http://127.0.0.1:9/")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_secs(3));
        if let Some(status) = app.0.try_wait().unwrap() {
            let log = std::fs::read_to_string(home.join("app.log")).unwrap_or_default();
            panic!("the app exited early ({status}): {log}");
        }
        let shot = screenshot(&display, png);
        if done(&shot) || started.elapsed() > Duration::from_secs(secs) {
            return shot;
        }
    }
}

/// Distinct colours (5 bits a channel) in the central area where the video is.
fn colours_in_video_area((w, _, px): &Shot) -> usize {
    let mut colours = std::collections::BTreeSet::new();
    for y in (200..600).step_by(7) {
        for x in (100..900).step_by(7) {
            let i = ((y * w + x) * 3) as usize;
            colours.insert((px[i] / 8, px[i + 1] / 8, px[i + 2] / 8));
        }
    }
    colours.len()
}

/// Pixels of exactly the class palette's colours (what box outlines are stroked with).
fn box_pixels((_, _, px): &Shot) -> usize {
    let palette: Vec<[u8; 3]> = (0..20).map(spotter_pipeline::annotate::class_color).collect();
    px.chunks_exact(3).filter(|p| palette.contains(&[p[0], p[1], p[2]])).count()
}

#[test]
fn the_real_window_shows_the_video_and_boxes() {
    let home = tempfile::tempdir().unwrap();
    let model = root().join("tests/fixtures/yolov9/full/gelan-s.pt");
    let png = home.path().join("window.png");
    let demo = demo();
    let args = [demo.to_str().unwrap(), "--model", model.to_str().unwrap()];
    let shot =
        run_app_and_capture(&args, 120, &png, home.path(), |s| colours_in_video_area(s) > 200 && box_pixels(s) > 300);
    let (colours, boxed) = (colours_in_video_area(&shot), box_pixels(&shot));
    if colours <= 200 || boxed <= 300 {
        let kept = home.keep();
        panic!(
            "the video area has {colours} colours and {boxed} pixels of box colours; screenshot and log in {}",
            kept.display()
        );
    }
}
