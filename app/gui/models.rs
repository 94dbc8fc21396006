//! How the window loads models: local files only (downloads are explicit, with a progress bar),
//! a pass-through "no model" so the video plays without weights, and facts for the compare table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use spotter_detector::detector::{resolve_source, weights_dirs};
use spotter_detector::{Detections, Detector, DetectorOptions, LetterboxMode, NmsOptions, RgbFrame, StageTimes};
use spotter_pipeline::{FrameDetector, ModelLoader};

use crate::weights::{Registry, find_local};

/// The model name of the pass-through detector.
pub const NO_MODEL: &str = "no model";

/// Plays the video without detecting anything (no weights available).
pub struct PassThrough;

impl FrameDetector for PassThrough {
    fn name(&self) -> String {
        NO_MODEL.to_string()
    }
    fn detect(&mut self, frame: &RgbFrame) -> spotter_detector::Result<Detections> {
        Ok(Detections {
            width: frame.width,
            height: frame.height,
            detections: Vec::new(),
            times: StageTimes::default(),
        })
    }
    fn class_name(&self, class_id: usize) -> String {
        format!("class {class_id}")
    }
    fn set_nms(&mut self, _nms: &NmsOptions) {}
    fn set_imgsz(&mut self, _imgsz: u32) {}
}

/// What the compare table shows about a loaded model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFacts {
    pub params: usize,
    /// At the input size it was loaded with, square.
    pub gflops: Option<f64>,
    pub device: String,
    pub path: PathBuf,
    pub classes: Vec<String>,
}

/// Facts of every model loaded so far, by the name the pipeline reports.
pub type FactsMap = Arc<Mutex<BTreeMap<String, ModelFacts>>>;

/// The options models are loaded with (thresholds, size and device change while running).
pub type SharedOptions = Arc<Mutex<DetectorOptions>>;

pub fn detector_options(conf: f32, iou: f32, imgsz: u32, device: &str, classes: &[usize]) -> DetectorOptions {
    DetectorOptions {
        device: device.parse().unwrap_or_default(),
        imgsz,
        letterbox: LetterboxMode::MinimalRect,
        nms: nms_options(conf, iou, classes),
        ..Default::default()
    }
}

pub fn nms_options(conf: f32, iou: f32, classes: &[usize]) -> NmsOptions {
    NmsOptions {
        conf_threshold: conf,
        iou_threshold: iou,
        classes: (!classes.is_empty()).then(|| classes.to_vec()),
        ..NmsOptions::default()
    }
}

/// The weights file of `name` if it is on this machine: a path, or a registry variant found in
/// the weights folders, or a name the detector resolves. Never downloads.
pub fn resolve_local(name: &str, dirs: &[PathBuf]) -> anyhow::Result<PathBuf> {
    if Path::new(name).is_file() {
        return Ok(PathBuf::from(name));
    }
    if let Ok(registry) = Registry::load(None)
        && let Some(variant) = registry.get(name)
    {
        return find_local(variant, dirs).ok_or_else(|| anyhow::anyhow!(missing_message(name)));
    }
    if name.ends_with(".pt") || name.ends_with(".safetensors") || name.contains('/') {
        anyhow::bail!("{name}: no such file");
    }
    // Built-in names whose files were placed by hand.
    dirs.iter()
        .find_map(|d| resolve_source(name, Some(d)).ok().filter(|p| p.starts_with(d)))
        .ok_or_else(|| anyhow::anyhow!(missing_message(name)))
}

/// The plain message for weights that are not on this machine.
pub fn missing_message(name: &str) -> String {
    format!("{name} weights are not on this computer: download them or pick a checkpoint file")
}

/// Whether a registry variant's weights are on this machine.
pub fn is_present(name: &str, dirs: &[PathBuf]) -> bool {
    Registry::load(None).ok().and_then(|r| r.get(name).and_then(|v| find_local(v, dirs))).is_some()
}

/// Where model names are looked up by default (see `weights_dirs`).
pub fn default_dirs() -> Vec<PathBuf> {
    weights_dirs(None)
}

/// The pipeline's loader: [`NO_MODEL`] is the pass-through, anything else loads from a local file
/// with the current options and records its facts.
pub fn loader(options: SharedOptions, facts: FactsMap, dirs: Vec<PathBuf>) -> ModelLoader {
    Arc::new(move |name: &str| {
        if name == NO_MODEL {
            return Ok(Box::new(PassThrough) as Box<dyn FrameDetector>);
        }
        let model_err = |e: String| spotter_pipeline::Error::Model(e);
        let path = resolve_local(name, &dirs).map_err(|e| model_err(format!("{e:#}")))?;
        let opts = options.lock().map(|o| o.clone()).unwrap_or_default();
        let imgsz = opts.imgsz as usize;
        let detector = Detector::from_path(&path, opts).map_err(|e| model_err(format!("{name}: {e}")))?;
        let reported = FrameDetector::name(&detector);
        let info = detector.info();
        let gflops = detector.model().gflops(imgsz, detector.dtype()).ok();
        let entry =
            ModelFacts { params: info.params, gflops, device: info.device.clone(), path, classes: info.names.clone() };
        if let Ok(mut map) = facts.lock() {
            map.insert(reported, entry.clone());
            // Also under the name asked for (a path), so the picker can show it.
            map.insert(name.to_string(), entry);
        }
        Ok(Box::new(detector) as Box<dyn FrameDetector>)
    })
}

/// Short name for a model: a checkpoint's file name, or the variant.
pub fn short_name(model: &str) -> String {
    Path::new(model).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| model.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_weights_say_how_to_get_them() {
        let msg = missing_message("gelan-s");
        assert_eq!(msg, "gelan-s weights are not on this computer: download them or pick a checkpoint file");
        assert!(resolve_local("/no/such/model.pt", &[]).unwrap_err().to_string().contains("no such file"));
        let empty = tempfile::tempdir().unwrap();
        let dirs = [empty.path().to_path_buf()];
        assert_eq!(resolve_local("gelan-s", &dirs).unwrap_err().to_string(), msg);
        assert!(!is_present("gelan-s", &dirs));
    }

    #[test]
    fn the_pass_through_finds_nothing() {
        let mut p = PassThrough;
        let frame = RgbFrame::new(4, 2, vec![0; 24]).unwrap();
        let d = p.detect(&frame).unwrap();
        assert!(d.detections.is_empty());
        assert_eq!(FrameDetector::name(&p), NO_MODEL);
    }
}
