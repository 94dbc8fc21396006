//! The error type of `spotter-pipeline`.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: no such file", .0.display())]
    NotFound(PathBuf),

    #[error("cannot open {input}: {reason}")]
    Open { input: String, reason: String },

    #[error("{0}: no video stream")]
    NoVideo(String),

    #[error("{input}: unsupported video codec {codec}")]
    UnsupportedCodec { input: String, codec: String },

    #[error("decoding failed: {0}")]
    Decode(String),

    #[error("{0}: cannot seek in this source")]
    NotSeekable(String),

    #[error("stream dropped: {0}")]
    StreamDropped(String),

    #[error("{url}: stream dropped and could not be reopened after {attempts} attempts ({reason})")]
    StreamLost { url: String, attempts: u32, reason: String },

    #[error("{0}")]
    Camera(String),

    #[error("{0}")]
    BadSource(String),

    #[error("cannot write {}: {reason}", path.display())]
    Output { path: PathBuf, reason: String },

    #[error(transparent)]
    Detector(#[from] spotter_detector::Error),

    /// A model could not be loaded (the loader's message).
    #[error("{0}")]
    Model(String),

    #[error("the pipeline stopped")]
    Stopped,
}

impl Error {
    /// An FFmpeg open failure in words a user understands.
    pub fn open(source: &str, e: ffmpeg_next::Error) -> Self {
        let reason = match e {
            ffmpeg_next::Error::InvalidData => "not a video file, or a damaged one".to_string(),
            ffmpeg_next::Error::Other { errno } if errno == libc_enoent() => "no such file".to_string(),
            ffmpeg_next::Error::ProtocolNotFound => "unsupported protocol".to_string(),
            other => other.to_string(),
        };
        Self::Open { input: source.to_string(), reason }
    }

    pub fn output(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        Self::Output { path: path.into(), reason: reason.to_string() }
    }
}

fn libc_enoent() -> i32 {
    2
}
