//! The error type of `spotter-detector`.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The messages carry their cause's text and do not also expose it as `source()`, which
    // would print it twice in a `{:#}` chain ("x.pt: no such file: no such file").
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },

    #[error("{path}: {error}")]
    Checkpoint { path: PathBuf, error: crate::checkpoint::pt::PtError },

    #[error("{path}: not a valid safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },

    #[error("{path}: unsupported weights format (expected .pt or .safetensors)")]
    UnknownFormat { path: PathBuf },

    #[error("{path}: no model config: the file carries none and no built-in spec matches; pass a .yaml config")]
    NoConfig { path: PathBuf },

    #[error("model config: {0}")]
    Spec(String),

    #[error("model config layer {index} ({module}): {reason}")]
    Layer { index: usize, module: String, reason: String },

    #[error("unknown model '{0}': expected a file path or one of {1}")]
    UnknownModel(String, String),

    #[error(
        "weights for '{name}' are not downloaded (looked in {searched}); get them with `spotter weights fetch {name}`"
    )]
    WeightsNotFound { name: String, searched: String },

    #[error("{path}: missing tensor '{name}' (layer {layer})")]
    MissingTensor { path: PathBuf, name: String, layer: String },

    #[error("{path}: tensor '{name}' has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch { path: PathBuf, name: String, expected: Vec<usize>, actual: Vec<usize> },

    #[error("{path}: unexpected tensor '{name}' ({count} tensors not used by the model config)")]
    UnexpectedTensor { path: PathBuf, name: String, count: usize },

    #[error("invalid image: {0}")]
    Image(String),

    #[error("invalid option: {0}")]
    Options(String),

    #[error("device: {0}")]
    Device(String),

    #[error(transparent)]
    Preprocess(#[from] crate::preprocess::PreprocessError),

    #[error(transparent)]
    Postprocess(#[from] crate::postprocess::PostprocessError),

    #[error("tensor computation failed: {0}")]
    Candle(candle_core::Error),
}

impl From<candle_core::Error> for Error {
    fn from(error: candle_core::Error) -> Self {
        Error::Candle(error)
    }
}
