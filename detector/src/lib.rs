//! GELAN / YOLOv9 object detectors on Candle.
//!
//! Models are built from a spec in the official config schema, loaded from official `.pt`
//! checkpoints (read as data) or safetensors, with BatchNorm and RepConvN branches folded at
//! load time. Pre- and post-processing follow the official detect pipeline exactly.

pub mod checkpoint;
pub mod classes;
pub mod detector;
pub mod device_preprocess;
pub mod error;
pub mod image_io;
pub mod model;
pub mod nn;
pub mod postprocess;
pub mod preprocess;
pub mod spec;
pub mod weights;

pub use detector::{Detections, Detector, DetectorOptions, DeviceChoice, ModelInfo, Precision, StageTimes};
pub use error::{Error, Result};
pub use postprocess::{Detection, NmsOptions};
pub use preprocess::{LetterboxMode, RgbFrame};
