//! Downloading a weights file: resumable (`<file>.part` + HTTP `Range`), verified before it
//! takes its final name (complete length, pinned SHA-256, loads as a model), cancellable.
//!
//! Runs on the calling thread; a GUI calls it from a worker thread with a progress callback
//! and a cancel flag.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use spotter_detector::checkpoint::Checkpoint;
use spotter_detector::{Detector, DetectorOptions, DeviceChoice};

use super::WeightsError;

/// What a download is doing, reported to the progress callback.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// A request is on its way (`attempt` counts from 1).
    Connecting { url: String, attempt: u32 },
    /// The server answered: `total` bytes in all when known, `resumed_from` already on disk.
    Started { url: String, total: Option<u64>, resumed_from: u64 },
    /// `done` bytes of the file are on disk.
    Transferred { done: u64, total: Option<u64> },
    /// The connection broke after some progress; another request resumes from `done`.
    Retrying { reason: String, done: u64, attempt: u32 },
    /// The file is complete; checking its length, checksum and that it loads.
    Verifying,
}

/// A file to download.
#[derive(Debug, Clone)]
pub struct Request {
    pub url: String,
    /// The final path; the transfer goes to `<dest>.part` first.
    pub dest: PathBuf,
    /// Expected size in bytes, when known.
    pub size: Option<u64>,
    /// Pinned SHA-256 (hex), when known.
    pub sha256: Option<String>,
    /// Requests at most, as long as each one makes progress (>= 1).
    pub attempts: u32,
}

impl Request {
    pub fn new(url: impl Into<String>, dest: impl Into<PathBuf>) -> Self {
        Self { url: url.into(), dest: dest.into(), size: None, sha256: None, attempts: 3 }
    }
}

/// A completed download.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
    /// Bytes that were already on disk from an interrupted transfer.
    pub resumed_from: u64,
}

/// Where an unfinished download is kept.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".part");
    dest.with_file_name(name)
}

/// What becomes of the `.part` file after a failed request.
enum Disposition {
    /// A network failure: keep it for resuming; retry if this request made progress.
    Resumable,
    /// Cancelled, or a server-side failure: keep it, do not retry now.
    Keep,
    /// Wrong file, bad answer or local write failure: delete it.
    Discard,
    /// The server cannot continue this part: delete it and start over.
    Restart,
}

type Failure = (WeightsError, Disposition);

fn file_label(dest: &Path) -> String {
    dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| dest.display().to_string())
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| if m.is_file() { m.len() } else { 0 }).unwrap_or(0)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .user_agent(concat!("spotter/", env!("CARGO_PKG_VERSION")))
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// A network failure in words a user can act on.
fn describe(err: &ureq::Error) -> String {
    use std::io::ErrorKind as K;
    match err {
        ureq::Error::Io(e) => match e.kind() {
            K::ConnectionRefused => "connection refused".into(),
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                "the connection was closed".into()
            }
            K::TimedOut | K::WouldBlock => "timed out".into(),
            // Name resolution failures (getaddrinfo) have no kind of their own.
            _ if e.to_string().contains("lookup address") => format!("cannot resolve the host name ({e})"),
            _ => e.to_string(),
        },
        ureq::Error::HostNotFound => "host not found (no network, or a wrong mirror URL?)".into(),
        ureq::Error::Timeout(_) => "timed out".into(),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        other => other.to_string(),
    }
}

fn human_bytes(n: u64) -> String {
    super::human_bytes(n)
}

/// Downloads `req.url` to `req.dest`, resuming a `.part` file left by an earlier attempt.
/// On success the file at `dest` is complete, matches the pinned checksum and loads as a
/// model; on failure `dest` is untouched and `.part` is kept only when resuming makes sense.
pub fn download(req: &Request, progress: &dyn Fn(&Progress), cancel: &AtomicBool) -> Result<Fetched, WeightsError> {
    let part = part_path(&req.dest);
    let agent = agent();
    let resumed_from = file_len(&part);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let before = file_len(&part);
        let failure = match transfer(&agent, req, &part, before, attempt, progress, cancel) {
            Ok(()) => break,
            Err(f) => f,
        };
        match failure {
            (e, Disposition::Resumable) => {
                let now = file_len(&part);
                if now > before && attempt < req.attempts.max(1) && !cancel.load(Ordering::Relaxed) {
                    progress(&Progress::Retrying { reason: e.to_string(), done: now, attempt: attempt + 1 });
                    std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
                    continue;
                }
                return Err(e);
            }
            (e, Disposition::Keep) => return Err(e),
            (e, Disposition::Discard) => {
                discard(&part);
                return Err(e);
            }
            (e, Disposition::Restart) => {
                discard(&part);
                if attempt < req.attempts.max(1) {
                    continue;
                }
                return Err(e);
            }
        }
    }
    progress(&Progress::Verifying);
    match verify(req, &part) {
        Ok(sha256) => {
            let bytes = file_len(&part);
            if let Err(error) = std::fs::rename(&part, &req.dest) {
                discard(&part);
                return Err(WeightsError::Io { path: req.dest.clone(), error });
            }
            Ok(Fetched { path: req.dest.clone(), bytes, sha256, resumed_from })
        }
        Err(e) => {
            discard(&part);
            Err(e)
        }
    }
}

fn discard(part: &Path) {
    if std::fs::symlink_metadata(part).is_ok()
        && let Err(e) = std::fs::remove_file(part)
    {
        tracing::warn!(path = %part.display(), "cannot remove the unfinished download: {e}");
    }
}

/// Parses `Content-Range: bytes START-END/TOTAL` (or `bytes */TOTAL`) into (start, total).
fn content_range(value: &str) -> Option<(Option<u64>, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let total = if total.trim() == "*" { None } else { Some(total.trim().parse().ok()?) };
    let start = match range.trim() {
        "*" => None,
        r => Some(r.split_once('-')?.0.trim().parse().ok()?),
    };
    Some((start, total))
}

/// One request: appends to (or restarts) the part file until the server's body ends.
fn transfer(
    agent: &ureq::Agent,
    req: &Request,
    part: &Path,
    offset: u64,
    attempt: u32,
    progress: &dyn Fn(&Progress),
    cancel: &AtomicBool,
) -> Result<(), Failure> {
    let file = file_label(&req.dest);
    let network = |reason: String| WeightsError::Network { file: file.clone(), url: req.url.clone(), reason };
    if cancel.load(Ordering::Relaxed) {
        return Err((WeightsError::Cancelled { file: file.clone(), done: offset }, Disposition::Keep));
    }
    progress(&Progress::Connecting { url: req.url.clone(), attempt });
    let mut request = agent.get(&req.url);
    if offset > 0 {
        request = request.header("Range", format!("bytes={offset}-"));
    }
    let response = request.call().map_err(|e| (network(describe(&e)), Disposition::Resumable))?;
    let status = response.status();
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let length: Option<u64> = header("content-length").and_then(|v| v.trim().parse().ok());
    let status_error = || WeightsError::Status {
        file: file.clone(),
        url: req.url.clone(),
        status: format!("HTTP {} {}", status.as_u16(), status.canonical_reason().unwrap_or("")).trim_end().to_string(),
    };
    let (start, total) = match status.as_u16() {
        200 => (0, length),
        206 if offset > 0 => match header("content-range").as_deref().and_then(content_range) {
            Some((Some(start), total)) if start == offset => (start, total.or(length.map(|l| l + start))),
            _ => {
                let e =
                    network(format!("the server answered the resume request (from byte {offset}) with another range"));
                return Err((e, Disposition::Restart));
            }
        },
        416 if offset > 0 => {
            // Nothing left to send: the part is complete if its length is the file's.
            let total = header("content-range").as_deref().and_then(content_range).and_then(|(_, t)| t);
            if total == Some(offset) {
                progress(&Progress::Started { url: req.url.clone(), total, resumed_from: offset });
                return Ok(());
            }
            return Err((network(format!("the server cannot resume from byte {offset}")), Disposition::Restart));
        }
        s if (500..600).contains(&s) => return Err((status_error(), Disposition::Keep)),
        _ => return Err((status_error(), Disposition::Discard)),
    };
    if let (Some(expected), Some(total)) = (req.size, total)
        && expected != total
    {
        let e = WeightsError::Size { file: file.clone(), url: req.url.clone(), expected, actual: total };
        return Err((e, Disposition::Discard));
    }
    let write_error =
        |error: std::io::Error| (WeightsError::Io { path: part.to_path_buf(), error }, Disposition::Discard);
    if let Some(dir) = part.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|error| (WeightsError::Io { path: dir.to_path_buf(), error }, Disposition::Discard))?;
    }
    let mut out = if start == 0 {
        File::create(part).map_err(write_error)?
    } else {
        OpenOptions::new().append(true).open(part).map_err(write_error)?
    };
    progress(&Progress::Started { url: req.url.clone(), total, resumed_from: start });
    let mut body = response.into_body().into_reader();
    let mut done = start;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        if cancel.load(Ordering::Relaxed) {
            out.sync_all().map_err(write_error)?;
            return Err((WeightsError::Cancelled { file: file.clone(), done }, Disposition::Keep));
        }
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                out.sync_all().map_err(write_error)?;
                let reason = match ureq::Error::from(e) {
                    ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                        "the connection was closed".to_string()
                    }
                    other => describe(&other),
                };
                let e = network(format!("{reason} after {}", human_bytes(done)));
                return Err((e, Disposition::Resumable));
            }
        };
        out.write_all(&buf[..n]).map_err(write_error)?;
        done += n as u64;
        progress(&Progress::Transferred { done, total });
    }
    out.sync_all().map_err(write_error)?;
    if let Some(total) = total
        && done != total
    {
        let e = network(format!("the connection was closed after {} of {}", human_bytes(done), human_bytes(total)));
        return Err((e, if done < total { Disposition::Resumable } else { Disposition::Discard }));
    }
    Ok(())
}

/// Length, checksum and loadability of the finished part file; returns its SHA-256.
fn verify(req: &Request, part: &Path) -> Result<String, WeightsError> {
    let file = file_label(&req.dest);
    let actual_len = file_len(part);
    if let Some(expected) = req.size
        && expected != actual_len
    {
        return Err(WeightsError::Size { file, url: req.url.clone(), expected, actual: actual_len });
    }
    let sha256 = sha256_file(part)?;
    if let Some(expected) = &req.sha256
        && !expected.eq_ignore_ascii_case(&sha256)
    {
        return Err(WeightsError::Checksum { file, url: req.url.clone(), expected: expected.clone(), actual: sha256 });
    }
    check_loadable(part, &req.dest).map_err(|reason| WeightsError::NotLoadable {
        file,
        url: req.url.clone(),
        reason,
    })?;
    Ok(sha256)
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, WeightsError> {
    let io = |error| WeightsError::Io { path: path.to_path_buf(), error };
    let mut f = File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Builds the model the file holds, on the CPU, as if it were already at `dest` (so the name
/// and a sibling config resolve as they will after the rename).
fn check_loadable(part: &Path, dest: &Path) -> Result<(), String> {
    let mut ck = Checkpoint::read(part).map_err(|e| without_path(&e.to_string(), part))?;
    ck.path = dest.to_path_buf();
    let options = DetectorOptions { device: DeviceChoice::Cpu, ..Default::default() };
    Detector::from_checkpoint(ck, options).map(drop).map_err(|e| without_path(&e.to_string(), dest))
}

/// Drops a leading `<path>: ` from a message that is about to be attached to the file name.
fn without_path(message: &str, path: &Path) -> String {
    let prefix = format!("{}: ", path.display());
    message.strip_prefix(&prefix).unwrap_or(message).to_string()
}

#[cfg(test)]
#[path = "../../tests/integration/http_server.rs"]
#[allow(dead_code)]
mod http_server;

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::http_server::{Reply, Server};
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/yolov9/tiny").join(name)).unwrap()
    }

    #[test]
    fn content_range_forms() {
        assert_eq!(content_range("bytes 100-199/200"), Some((Some(100), Some(200))));
        assert_eq!(content_range("bytes 100-199/*"), Some((Some(100), None)));
        assert_eq!(content_range("bytes */200"), Some((None, Some(200))));
        assert_eq!(content_range("items 1-2/3"), None);
        assert_eq!(content_range("bytes x-1/2"), None);
    }

    #[test]
    fn part_file_sits_beside_the_destination() {
        assert_eq!(part_path(Path::new("/w/gelan-c.pt")), Path::new("/w/gelan-c.pt.part"));
        assert_eq!(part_path(Path::new("gelan-c.pt")), Path::new("gelan-c.pt.part"));
    }

    #[test]
    fn reports_progress_in_order_and_resumes_in_one_call() {
        let data = fixture("tiny-gelan-s.pt");
        let server =
            Server::start(vec![("/m/gelan-s.pt".into(), data.clone())], vec![Reply::CutAfter(100_000), Reply::Serve]);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("gelan-s.pt");
        let events = RefCell::new(Vec::new());
        let req = Request::new(format!("{}/m/gelan-s.pt", server.url()), &dest);
        let fetched = download(&req, &|p| events.borrow_mut().push(p.clone()), &AtomicBool::new(false)).unwrap();
        let requests = server.finish();
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        assert!(!part_path(&dest).exists());
        assert_eq!(fetched.bytes, data.len() as u64);
        assert_eq!(fetched.resumed_from, 0);
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].range, None);
        assert_eq!(requests[1].range.as_deref(), Some("bytes=100000-"));
        let events = events.into_inner();
        let total = Some(data.len() as u64);
        assert!(matches!(&events[0], Progress::Connecting { attempt: 1, .. }));
        assert!(matches!(&events[1], Progress::Started { total: t, resumed_from: 0, .. } if *t == total));
        let retry = events.iter().position(|e| matches!(e, Progress::Retrying { done: 100_000, attempt: 2, .. }));
        let restart = events.iter().position(|e| matches!(e, Progress::Started { resumed_from: 100_000, .. }));
        assert!(retry.is_some() && restart > retry, "{events:?}");
        let done: Vec<u64> = events
            .iter()
            .filter_map(|e| if let Progress::Transferred { done, .. } = e { Some(*done) } else { None })
            .collect();
        assert!(done.windows(2).all(|w| w[0] < w[1]), "progress goes forward");
        assert_eq!(done.last().copied(), total);
        assert_eq!(events.last(), Some(&Progress::Verifying));
        assert_eq!(fetched.sha256, sha256_file(&dest).unwrap());
    }

    #[test]
    fn cancelling_keeps_the_part_for_a_later_resume() {
        let data = fixture("tiny-gelan-c.pt");
        let server = Server::start(vec![("/gelan-c.pt".into(), data.clone())], vec![Reply::Serve, Reply::Serve]);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("gelan-c.pt");
        let req = Request::new(format!("{}/gelan-c.pt", server.url()), &dest);
        let cancel = AtomicBool::new(false);
        let cancel_midway = |p: &Progress| {
            if matches!(p, Progress::Transferred { done, .. } if *done >= 200_000) {
                cancel.store(true, Ordering::Relaxed);
            }
        };
        let err = download(&req, &cancel_midway, &cancel).unwrap_err();
        assert!(matches!(err, WeightsError::Cancelled { .. }), "{err}");
        assert!(!dest.exists());
        let kept = file_len(&part_path(&dest));
        assert!(kept >= 200_000 && kept < data.len() as u64, "{kept}");
        // The next call picks the part up.
        let fetched = download(&req, &|_| {}, &AtomicBool::new(false)).unwrap();
        assert_eq!(fetched.resumed_from, kept);
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        let requests = server.finish();
        assert_eq!(requests[1].range, Some(format!("bytes={kept}-")));
    }

    #[test]
    fn a_complete_part_is_verified_without_downloading_again() {
        let data = fixture("tiny-gelan-s.pt");
        let server = Server::start(vec![("/gelan-s.pt".into(), data.clone())], vec![Reply::Serve]);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("gelan-s.pt");
        std::fs::write(part_path(&dest), &data).unwrap();
        let req = Request::new(format!("{}/gelan-s.pt", server.url()), &dest);
        let fetched = download(&req, &|_| {}, &AtomicBool::new(false)).unwrap();
        let requests = server.finish();
        assert_eq!(requests[0].status, 416);
        assert_eq!(fetched.resumed_from, data.len() as u64);
        assert_eq!(std::fs::read(&dest).unwrap(), data);
    }

    #[test]
    fn wrong_size_or_checksum_is_discarded() {
        let data = fixture("tiny-gelan-s.pt");
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("gelan-s.pt");
        let server = Server::start(vec![("/gelan-s.pt".into(), data.clone())], vec![Reply::Serve, Reply::Serve]);
        let url = format!("{}/gelan-s.pt", server.url());
        let mut req = Request::new(&url, &dest);
        req.size = Some(data.len() as u64 + 1);
        let err = download(&req, &|_| {}, &AtomicBool::new(false)).unwrap_err().to_string();
        assert!(err.contains("bytes, not the expected"), "{err}");
        assert!(!dest.exists() && !part_path(&dest).exists());
        req.size = None;
        req.sha256 = Some("0".repeat(64));
        let err = download(&req, &|_| {}, &AtomicBool::new(false)).unwrap_err().to_string();
        assert!(err.contains("SHA-256") && err.contains(&"0".repeat(64)), "{err}");
        assert!(!dest.exists() && !part_path(&dest).exists());
        server.finish();
    }
}
