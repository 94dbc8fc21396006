//! The Spotter pipeline: sources (files, network streams, cameras, images), a detector
//! worker, and sinks (annotated MP4, JSON Lines, events for the GUI), on named threads linked
//! by bounded channels.

pub mod annotate;
pub mod error;
pub mod export;
pub mod runner;
pub mod source;
pub mod stats;
mod yuv;

pub use error::{Error, Result};
pub use runner::{
    Command, Event, FrameDetector, FrameResult, ModelLoader, ModelResult, OutputConfig, Pipeline, PipelineConfig,
    Policy,
};
pub use source::{Frame, FrameSource, SourceInfo, SourceKind, SourceSpec};
pub use stats::StatsSnapshot;
