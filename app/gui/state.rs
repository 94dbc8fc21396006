//! What the window remembers between runs (serde, stored by eframe).

use serde::{Deserialize, Serialize};

/// Sources remembered in the Open menu.
pub const MAX_RECENT: usize = 10;

/// Input sizes offered (multiples of 32).
pub const IMAGE_SIZES: [u32; 7] = [320, 416, 512, 640, 800, 960, 1280];

/// Devices offered.
pub const DEVICES: [&str; 4] = ["auto", "cpu", "cuda", "metal"];

/// The official variants the model picker lists, in size order.
pub const MODEL_CHOICES: [&str; 6] = ["gelan-s", "gelan-m", "gelan-c", "gelan-e", "yolov9-c", "yolov9-e"];

/// Persisted settings: everything the user chose that should survive a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    /// Most recent first.
    pub recent_sources: Vec<String>,
    /// Local checkpoint files picked before, most recent first.
    pub recent_checkpoints: Vec<String>,
    /// The main model: a variant name or a checkpoint path; `None`: the default for the device.
    pub model: Option<String>,
    /// Models of compare mode (2 to 4, the first is the main model).
    pub compare_models: Vec<String>,
    pub compare: bool,
    pub conf: f32,
    pub iou: f32,
    pub imgsz: u32,
    pub device: String,
    /// Shown classes (ids); empty: all.
    pub classes: Vec<usize>,
    pub speed: f64,
    pub looping: bool,
    pub show_sidebar: bool,
    pub show_layer_chart: bool,
    pub show_labels: bool,
}

impl Default for State {
    fn default() -> Self {
        Self {
            recent_sources: Vec::new(),
            recent_checkpoints: Vec::new(),
            model: None,
            compare_models: vec!["gelan-s".into(), "gelan-c".into()],
            compare: false,
            conf: 0.25,
            iou: 0.45,
            imgsz: 640,
            device: "auto".into(),
            classes: Vec::new(),
            speed: 1.0,
            looping: true,
            show_sidebar: true,
            show_layer_chart: false,
            show_labels: true,
        }
    }
}

impl State {
    /// Puts `source` first in the recent list (once), keeping at most [`MAX_RECENT`].
    pub fn remember_source(&mut self, source: &str) {
        remember(&mut self.recent_sources, source);
    }

    pub fn remember_checkpoint(&mut self, path: &str) {
        remember(&mut self.recent_checkpoints, path);
    }

    /// Values a hand-edited or older settings file may hold out of range, brought back in.
    pub fn sanitized(mut self) -> Self {
        self.conf = if self.conf.is_finite() { self.conf.clamp(0.0, 1.0) } else { 0.25 };
        self.iou = if self.iou.is_finite() { self.iou.clamp(0.0, 1.0) } else { 0.45 };
        if !IMAGE_SIZES.contains(&self.imgsz) {
            self.imgsz = 640;
        }
        if !DEVICES.contains(&self.device.as_str()) {
            self.device = "auto".into();
        }
        self.speed = if self.speed.is_finite() { self.speed.clamp(0.25, 4.0) } else { 1.0 };
        self.compare_models.truncate(spotter_pipeline::runner::MAX_MODELS);
        self.recent_sources.truncate(MAX_RECENT);
        self.recent_checkpoints.truncate(MAX_RECENT);
        self
    }
}

fn remember(list: &mut Vec<String>, item: &str) {
    list.retain(|s| s != item);
    list.insert(0, item.to_string());
    list.truncate(MAX_RECENT);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_sources_are_unique_newest_first_and_bounded() {
        let mut s = State::default();
        for i in 0..15 {
            s.remember_source(&format!("clip{i}.mp4"));
        }
        s.remember_source("clip10.mp4");
        assert_eq!(s.recent_sources.len(), MAX_RECENT);
        assert_eq!(s.recent_sources[0], "clip10.mp4");
        assert_eq!(s.recent_sources.iter().filter(|x| *x == "clip10.mp4").count(), 1);
    }

    #[test]
    fn settings_round_trip_and_bad_values_are_repaired() {
        let mut s = State { conf: 0.4, imgsz: 320, compare: true, ..State::default() };
        s.remember_source("a.mp4");
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<State>(&text).unwrap(), s);
        // Missing fields take defaults; out-of-range values are brought back.
        let old: State = serde_json::from_str(r#"{"conf": 7.0, "imgsz": 333, "device": "tpu"}"#).unwrap();
        let fixed = old.sanitized();
        assert_eq!((fixed.conf, fixed.imgsz, fixed.device.as_str()), (1.0, 640, "auto"));
    }
}
