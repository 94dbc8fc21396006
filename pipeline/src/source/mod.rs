//! Frame sources: video files and network streams (FFmpeg), cameras (nokhwa), images and
//! folders, and a generated test pattern. All decode to RGB once and report what they are.

mod images;
mod synthetic;
mod video;

#[cfg(feature = "camera")]
pub mod camera;

use std::path::{Path, PathBuf};
use std::time::Instant;

use spotter_detector::RgbFrame;
use spotter_detector::image_io::is_image_path;

pub use images::{ImageSource, image_files};
pub use synthetic::SyntheticSource;
pub use video::{OpenOptions, VideoSource};

use crate::error::{Error, Result};

/// A decoded frame, shared between threads as `Arc<Frame>` (decoded to RGB once, never copied).
#[derive(Debug, Clone)]
pub struct Frame {
    /// Position in the source, counting from 0.
    pub index: u64,
    /// Presentation time in seconds from the start of the source.
    pub pts_secs: f64,
    /// How long the frame is shown, when the source says.
    pub duration_secs: Option<f64>,
    pub image: RgbFrame,
    /// When decoding finished (the start of end-to-end latency).
    pub decoded_at: Instant,
    /// Time spent decoding and converting this frame.
    pub decode_ms: f64,
}

/// What a source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    File,
    Stream,
    Camera,
    Images,
    Synthetic,
}

/// Facts about a source, known once it is open.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceInfo {
    pub kind: SourceKind,
    /// The path, URL or device it was opened from.
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// Nominal frame rate, when known.
    pub fps: Option<f64>,
    pub duration_secs: Option<f64>,
    /// Number of frames, when known (files report an estimate from the container).
    pub frame_count: Option<u64>,
    pub seekable: bool,
    /// Live sources (cameras, network streams) run in real time and drop stale frames.
    pub live: bool,
    /// Whether the source carries an audio stream (files: exports copy it).
    pub has_audio: bool,
}

/// Counters a source keeps while running.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct SourceStats {
    /// Packets or frames that failed to decode and were skipped.
    pub decode_errors: u64,
    /// Times a dropped network stream was reopened.
    pub reconnects: u64,
}

/// A source of frames. Opened and owned by the decoder thread (FFmpeg and camera objects
/// never cross threads), hence no `Send` bound.
pub trait FrameSource {
    fn info(&self) -> &SourceInfo;
    /// The next frame, `None` at the end.
    fn next_frame(&mut self) -> Result<Option<Frame>>;
    /// Moves to the frame at or before `secs` (seekable sources only).
    fn seek(&mut self, secs: f64) -> Result<()> {
        let _ = secs;
        Err(Error::NotSeekable(self.info().name.clone()))
    }
    fn stats(&self) -> SourceStats {
        SourceStats::default()
    }
}

/// What to open, parsed from the command line or the GUI.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    File(PathBuf),
    /// A network stream: http(s), rtsp, rtmp, udp, srt, HLS playlists ...
    Url(String),
    /// A camera by index or by (part of its) name.
    Camera {
        device: String,
        width: Option<u32>,
        height: Option<u32>,
        fps: Option<u32>,
    },
    Image(PathBuf),
    Folder(PathBuf),
    /// A generated moving pattern, paced in real time like a camera (`synthetic:640x360@25`).
    Synthetic {
        width: u32,
        height: u32,
        fps: f64,
        frames: Option<u64>,
    },
}

const URL_SCHEMES: [&str; 10] =
    ["http://", "https://", "rtsp://", "rtsps://", "rtmp://", "rtmps://", "udp://", "rtp://", "srt://", "tcp://"];

impl SourceSpec {
    /// Parses `camera:0`, `camera:Logitech`, `synthetic:640x360@25`, a URL, or a path.
    pub fn parse(text: &str) -> Result<Self> {
        let t = text.trim();
        if let Some(rest) = t.strip_prefix("camera:") {
            // camera:DEVICE[@WxH[@FPS]]
            let mut parts = rest.split('@');
            let device = parts.next().unwrap_or_default().to_string();
            let (mut width, mut height, mut fps) = (None, None, None);
            if let Some(size) = parts.next() {
                let (w, h) = parse_size(size).ok_or_else(|| Error::BadSource(format!("bad camera size '{size}'")))?;
                width = Some(w);
                height = Some(h);
            }
            if let Some(f) = parts.next() {
                fps = Some(f.parse().map_err(|_| Error::BadSource(format!("bad camera frame rate '{f}'")))?);
            }
            return Ok(Self::Camera { device, width, height, fps });
        }
        if let Some(rest) = t.strip_prefix("synthetic:") {
            let (size, rate) = rest.split_once('@').unwrap_or((rest, "25"));
            let (width, height) = parse_size(size).ok_or_else(|| Error::BadSource(format!("bad size '{size}'")))?;
            let (rate, frames) = match rate.split_once('/') {
                Some((r, n)) => (r, Some(n.parse().map_err(|_| Error::BadSource(format!("bad frame count '{n}'")))?)),
                None => (rate, None),
            };
            let fps: f64 = rate.parse().map_err(|_| Error::BadSource(format!("bad frame rate '{rate}'")))?;
            if fps.is_nan() || fps <= 0.0 || fps > 1000.0 {
                return Err(Error::BadSource(format!("bad frame rate '{rate}'")));
            }
            return Ok(Self::Synthetic { width, height, fps, frames });
        }
        if URL_SCHEMES.iter().any(|s| t.to_ascii_lowercase().starts_with(s)) {
            return Ok(Self::Url(t.to_string()));
        }
        let path = Path::new(t);
        if path.is_dir() {
            Ok(Self::Folder(path.to_path_buf()))
        } else if is_image_path(path) {
            Ok(Self::Image(path.to_path_buf()))
        } else {
            Ok(Self::File(path.to_path_buf()))
        }
    }

    /// Opens the source. Network streams are wrapped to reopen with backoff when they drop.
    pub fn open(&self) -> Result<Box<dyn FrameSource>> {
        ffmpeg_init();
        match self {
            Self::File(p) => {
                if !p.exists() {
                    return Err(Error::NotFound(p.clone()));
                }
                Ok(Box::new(VideoSource::open(&p.to_string_lossy(), &OpenOptions::file())?))
            }
            Self::Url(url) => Ok(Box::new(video::ReconnectingSource::open(url, OpenOptions::stream())?)),
            Self::Image(p) => Ok(Box::new(ImageSource::single(p)?)),
            Self::Folder(p) => Ok(Box::new(ImageSource::folder(p)?)),
            Self::Synthetic { width, height, fps, frames } => {
                Ok(Box::new(SyntheticSource::new(*width, *height, *fps, *frames)?))
            }
            #[cfg(feature = "camera")]
            Self::Camera { device, width, height, fps } => {
                Ok(Box::new(camera::CameraSource::open(device, *width, *height, *fps)?))
            }
            #[cfg(not(feature = "camera"))]
            Self::Camera { .. } => Err(Error::BadSource("this build has no camera support (feature `camera`)".into())),
        }
    }
}

fn parse_size(s: &str) -> Option<(u32, u32)> {
    let (w, h) = s.split_once('x')?;
    let (w, h) = (w.parse().ok()?, h.parse().ok()?);
    (w > 0 && h > 0 && w <= 16384 && h <= 16384).then_some((w, h))
}

/// FFmpeg's global initialisation, once.
pub fn ffmpeg_init() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        if let Err(e) = ffmpeg_next::init() {
            tracing::warn!("FFmpeg initialisation: {e}");
        }
        ffmpeg_next::util::log::set_level(ffmpeg_next::util::log::Level::Fatal);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(
            SourceSpec::parse("rtsp://cam.local/stream").unwrap(),
            SourceSpec::Url("rtsp://cam.local/stream".into())
        );
        assert_eq!(
            SourceSpec::parse("camera:0@1280x720@30").unwrap(),
            SourceSpec::Camera { device: "0".into(), width: Some(1280), height: Some(720), fps: Some(30) }
        );
        assert_eq!(
            SourceSpec::parse("synthetic:320x240@50/10").unwrap(),
            SourceSpec::Synthetic { width: 320, height: 240, fps: 50.0, frames: Some(10) }
        );
        assert_eq!(SourceSpec::parse("clip.mp4").unwrap(), SourceSpec::File("clip.mp4".into()));
        assert_eq!(SourceSpec::parse("a/photo.JPG").unwrap(), SourceSpec::Image("a/photo.JPG".into()));
        assert!(SourceSpec::parse("synthetic:0x5").is_err());
        assert!(SourceSpec::parse("camera:0@big").is_err());
    }
}
