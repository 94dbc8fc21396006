//! A small HTTP/1.1 server on loopback for download tests: serves files from memory with one
//! scripted reply per request, records what each request asked for, and stops by itself after
//! its script, when told, or after a deadline. (Also compiled into the unit tests of
//! `app/weights/download.rs`.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How to answer one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// The file, honouring `Range` (206, or 416 past the end).
    Serve,
    /// As `Serve`, but the connection closes after this many body bytes.
    CutAfter(usize),
    /// The whole file with 200, ignoring `Range`.
    IgnoreRange,
    /// 404 Not Found.
    NotFound,
    /// 200 with the file's first bytes replaced by junk (same length).
    Corrupt,
    /// 200 with one byte of the file changed (same length).
    FlipByte(usize),
    /// 200 with only the first bytes of the file, announced as the whole file.
    Truncate(usize),
    /// 302 to another path on this server.
    Redirect(String),
}

/// What one request asked for and what it got.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub range: Option<String>,
    pub status: u16,
}

pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<Recorded>>,
}

/// Longest a server waits for its requests.
const DEADLINE: Duration = Duration::from_secs(60);

impl Server {
    /// Serves `files` (URL path, content), answering the n-th request with `script[n]`; stops
    /// after the last reply.
    pub fn start(files: Vec<(String, Vec<u8>)>, script: Vec<Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("test-http-server".into())
            .spawn(move || serve(&listener, &files, script, &stop_flag))
            .expect("server thread");
        Self { addr, stop, handle }
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and returns the requests it answered, in order.
    pub fn finish(self) -> Vec<Recorded> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("server thread")
    }
}

fn serve(listener: &TcpListener, files: &[(String, Vec<u8>)], script: Vec<Reply>, stop: &AtomicBool) -> Vec<Recorded> {
    let deadline = Instant::now() + DEADLINE;
    let mut recorded = Vec::new();
    for reply in script {
        let stream = loop {
            if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                return recorded;
            }
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => return recorded,
            }
        };
        if let Some(r) = answer(stream, files, &reply) {
            recorded.push(r);
        }
    }
    recorded
}

/// Reads the request head; returns (path, Range header).
fn read_head(stream: &mut TcpStream) -> Option<(String, Option<String>)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 * 1024 || stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.lines();
    let path = lines.next()?.split_whitespace().nth(1)?.to_string();
    let range = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim().eq_ignore_ascii_case("range").then(|| value.trim().to_string())
    });
    Some((path, range))
}

/// Parses `bytes=START-` into START (the only form the client sends).
fn range_start(range: &str) -> Option<usize> {
    range.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok()
}

fn answer(mut stream: TcpStream, files: &[(String, Vec<u8>)], reply: &Reply) -> Option<Recorded> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    stream.set_write_timeout(Some(Duration::from_secs(10))).ok()?;
    let (path, range) = read_head(&mut stream)?;
    let file = files.iter().find(|(p, _)| *p == path).map(|(_, d)| d.as_slice());
    let status = match (file, reply) {
        (None, _) | (_, Reply::NotFound) => {
            respond(&mut stream, "404 Not Found", &[], b"not found\n", None);
            404
        }
        (Some(_), Reply::Redirect(to)) => {
            respond(&mut stream, "302 Found", &[format!("Location: {to}")], b"", None);
            302
        }
        (Some(data), Reply::IgnoreRange) => {
            respond(&mut stream, "200 OK", &[], data, None);
            200
        }
        (Some(data), Reply::Corrupt) => {
            let mut bad = data.to_vec();
            for (i, b) in bad.iter_mut().take(4096).enumerate() {
                *b = (i * 31 % 251) as u8;
            }
            respond(&mut stream, "200 OK", &[], &bad, None);
            200
        }
        (Some(data), Reply::FlipByte(at)) => {
            let mut bad = data.to_vec();
            bad[*at] ^= 0x01;
            respond(&mut stream, "200 OK", &[], &bad, None);
            200
        }
        (Some(data), Reply::Truncate(n)) => {
            respond(&mut stream, "200 OK", &[], &data[..*n], None);
            200
        }
        (Some(data), Reply::Serve | Reply::CutAfter(_)) => {
            let cut = if let Reply::CutAfter(n) = reply { Some(*n) } else { None };
            match range.as_deref().and_then(range_start) {
                Some(start) if start >= data.len() => {
                    respond(
                        &mut stream,
                        "416 Range Not Satisfiable",
                        &[format!("Content-Range: bytes */{}", data.len())],
                        b"",
                        None,
                    );
                    416
                }
                Some(start) => {
                    let header = format!("Content-Range: bytes {start}-{}/{}", data.len() - 1, data.len());
                    respond(&mut stream, "206 Partial Content", &[header], &data[start..], cut);
                    206
                }
                None => {
                    respond(&mut stream, "200 OK", &[], data, cut);
                    200
                }
            }
        }
    };
    Some(Recorded { path, range, status })
}

/// Writes a response announcing all of `body`, of which only `cut` bytes are sent when given.
fn respond(stream: &mut TcpStream, status: &str, headers: &[String], body: &[u8], cut: Option<usize>) {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let sent = &body[..cut.unwrap_or(body.len()).min(body.len())];
    // The client may hang up early (that is what some tests provoke): ignore write errors.
    let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(sent)).and_then(|()| stream.flush());
    let _ = stream.shutdown(std::net::Shutdown::Both);
}
