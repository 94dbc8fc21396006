//! Helpers shared by the parity tests (`parity.rs`, on the CPU) and the GPU check (`gpu.rs`).
#![allow(dead_code)] // each test file uses a part
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use spotter_detector::model::LayerOutput;
use spotter_detector::postprocess::{NmsOptions, non_max_suppression, scale_boxes};
use spotter_detector::{Detection, Detector, DetectorOptions};

pub const TINY: [&str; 7] = [
    "tiny-gelan-c",
    "tiny-gelan-s",
    "tiny-gelan",
    "tiny-yolov9-c",
    "tiny-yolov9-e",
    "tiny-yolov9-cf",
    "tiny-yolov7-af",
];

/// The four photographs of the full-size fixture.
pub const PHOTOS: [(&str, &str); 4] =
    [("astronaut", "png"), ("chelsea", "png"), ("coffee", "png"), ("grace_hopper", "jpg")];

/// `tests/fixtures` of the repository: `$SPOTTER_FIXTURES` when set (a test binary carried to
/// another machine), else the checkout this binary was built from.
pub fn fixtures_root() -> PathBuf {
    match std::env::var_os("SPOTTER_FIXTURES") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures"),
    }
}

pub fn tiny_dir() -> PathBuf {
    fixtures_root().join("yolov9/tiny")
}

pub fn load_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// (max |a - b|, max |b|), computed on the CPU wherever the tensors live.
pub fn max_abs(a: &Tensor, b: &Tensor) -> (f32, f32) {
    assert_eq!(a.dims(), b.dims(), "shape");
    let a = a.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let b = b.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let diff = (&a - &b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    (diff, scale)
}

pub fn rows(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()).collect()
}

/// The largest differences one tiny model showed against the reference.
#[derive(Debug, Clone, Copy, Default)]
pub struct TinyReport {
    /// max over layers of max|diff| / max|ref|
    pub layer_rel: f32,
    pub pred_box_px: f32,
    pub pred_score: f32,
    pub detections: usize,
}

/// Checks one tiny model file against the official reference outputs, with the given options
/// (device, precision), and panics on the first difference over the tolerances:
/// every stored layer output max|diff| <= 1e-4 max|ref|; pred boxes 2e-3 px, scores 1e-4;
/// NMS: same boxes in order, within 2e-3 px (letterbox) and 1e-2 px (photo).
pub fn check_tiny(model: &str, file: &Path, options: &DetectorOptions) -> TinyReport {
    let dir = tiny_dir();
    let json = load_json(&dir.join(format!("{model}.json")));
    let reference: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join(format!("{model}.outputs.safetensors")), &Device::Cpu).unwrap();
    let inputs = candle_core::safetensors::load(dir.join("input-coffee-96x128.safetensors"), &Device::Cpu).unwrap();
    let input = &inputs["input"];

    let det = Detector::from_path(file, options.clone()).unwrap_or_else(|e| panic!("{model}: {e}"));
    let on_device = input.to_device(det.device()).unwrap().to_dtype(det.dtype()).unwrap();
    let (out, captured) = det.model().forward_capture(&on_device).unwrap();
    let head_index = json["head"]["layer"].as_u64().unwrap() as usize;
    let head_kind = json["head"]["type"].as_str().unwrap().to_string();
    let mut report = TinyReport::default();

    let mut compared = 0;
    let mut check_tensor = |name: &str, ours: &Tensor| {
        if let Some(r) = reference.get(name) {
            let (d, s) = max_abs(ours, r);
            assert!(d <= 1e-4 * s.max(1e-6), "{model} {}: {name} max|diff| {d} vs max|ref| {s}", file.display());
            report.layer_rel = report.layer_rel.max(d / s.max(1e-6));
            compared += 1;
        }
    };
    for (index, o) in &captured {
        if *index == head_index {
            continue;
        }
        match o {
            LayerOutput::One(t) => check_tensor(&format!("layer.{index}"), t),
            LayerOutput::Split(ts) => {
                for (j, t) in ts.iter().enumerate() {
                    check_tensor(&format!("layer.{index}.{j}"), t);
                }
            }
        }
    }
    for (l, raw) in out.raw().expect("raw maps").iter().enumerate() {
        let name = if head_kind == "DualDDetect" {
            format!("layer.{head_index}.1.1.{l}")
        } else {
            format!("layer.{head_index}.1.{l}")
        };
        assert!(reference.contains_key(&name), "{model}: no reference for {name}");
        check_tensor(&name, raw);
    }
    // Not computed: the auxiliary branch's prediction of a dual head (`layer.<h>.0.0`).
    let aux_pred = format!("layer.{head_index}.0.0");
    let stored = reference.keys().filter(|k| k.starts_with("layer.") && **k != aux_pred).count();
    assert_eq!(compared, stored, "{model}: compared {compared} of {stored} stored layer outputs");

    // pred: boxes within 2e-3 px, scores within 1e-4.
    let pred = out.pred.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let reference_pred = &reference["pred"];
    let boxes = max_abs(&pred.narrow(1, 0, 4).unwrap(), &reference_pred.narrow(1, 0, 4).unwrap()).0;
    let nc = pred.dim(1).unwrap() - 4;
    let scores = max_abs(&pred.narrow(1, 4, nc).unwrap(), &reference_pred.narrow(1, 4, nc).unwrap()).0;
    assert!(boxes <= 2e-3, "{model}: pred boxes differ by {boxes} px");
    assert!(scores <= 1e-4, "{model}: pred scores differ by {scores}");
    report.pred_box_px = boxes;
    report.pred_score = scores;

    // NMS: same count, classes and order; boxes within 2e-3 px (letterbox), 1e-2 px (photo).
    let n = pred.dim(2).unwrap();
    let flat: Vec<f32> = pred.flatten_all().unwrap().to_vec1().unwrap();
    let mut dets = non_max_suppression(&flat, nc, n, &NmsOptions::default()).unwrap();
    let expected = rows(&json["detections_letterbox"]);
    assert_eq!(dets.len(), expected.len(), "{model}: NMS kept {} boxes, reference {}", dets.len(), expected.len());
    for (d, e) in dets.iter().zip(&expected) {
        assert_eq!(d.class_id, e[5] as usize, "{model}: class");
        assert!((d.score as f64 - e[4]).abs() <= 1e-4, "{model}: score {} vs {}", d.score, e[4]);
        for k in 0..4 {
            assert!((d.bbox[k] as f64 - e[k]).abs() <= 2e-3, "{model}: letterbox box {:?} vs {:?}", d.bbox, e);
        }
    }
    let (ih, iw) = (input.dim(2).unwrap() as u32, input.dim(3).unwrap() as u32);
    let orig = json["image"]["orig_hw"].as_array().unwrap();
    let (oh, ow) = (orig[0].as_u64().unwrap() as u32, orig[1].as_u64().unwrap() as u32);
    scale_boxes(&mut dets, (ih, iw), (oh, ow));
    for (d, e) in dets.iter().zip(&rows(&json["detections"])) {
        for k in 0..4 {
            assert!((d.bbox[k] as f64 - e[k]).abs() <= 1e-2, "{model}: photo box {:?} vs {:?}", d.bbox, e);
        }
    }
    report.detections = dets.len();
    report
}

/// Intersection over union. Boxes clipped to the image can have no area (a box in the letterbox
/// padding): two such boxes count as the same (1) when their corners agree within 1 px, else 0.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union > 0.0 {
        inter / union
    } else if a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1.0) {
        1.0
    } else {
        0.0
    }
}

/// The official detections of a full-size photo: (box, score, class).
pub fn official_detections(photo: &str) -> Vec<([f32; 4], f32, usize)> {
    let json = load_json(&fixtures_root().join(format!("yolov9/full/expected/{photo}.json")));
    rows(&json["detections"])
        .iter()
        .map(|r| ([r[0] as f32, r[1] as f32, r[2] as f32, r[3] as f32], r[4] as f32, r[5] as usize))
        .collect()
}

/// Largest corner and score differences of the matched pairs.
#[derive(Debug, Clone, Copy, Default)]
pub struct MatchReport {
    pub matched: usize,
    pub expected: usize,
    pub found: usize,
    pub max_box_px: f32,
    pub max_score: f32,
}

/// Pairs every expected box with one of ours: same class, corners within `box_px`, score within
/// `score_tol`, IoU > 0.9. Returns how many found a partner and the largest differences.
pub fn match_detections(
    ours: &[Detection],
    expected: &[([f32; 4], f32, usize)],
    box_px: f32,
    score_tol: f32,
) -> MatchReport {
    let mut taken = vec![false; ours.len()];
    let mut report = MatchReport { expected: expected.len(), found: ours.len(), ..Default::default() };
    for (tb, ts, tc) in expected {
        let partner = ours.iter().enumerate().position(|(i, d)| {
            !taken[i]
                && d.class_id == *tc
                && (d.score - ts).abs() <= score_tol
                && d.bbox.iter().zip(tb).all(|(a, b)| (a - b).abs() <= box_px)
                && iou(&d.bbox, tb) > 0.9
        });
        if let Some(i) = partner {
            taken[i] = true;
            report.matched += 1;
            let d = &ours[i];
            report.max_score = report.max_score.max((d.score - ts).abs());
            for (a, b) in d.bbox.iter().zip(tb) {
                report.max_box_px = report.max_box_px.max((a - b).abs());
            }
        }
    }
    report
}

/// How well one set of detections agrees with another.
#[derive(Debug, Clone, Copy, Default)]
pub struct Agreement {
    /// Boxes of the first set (score >= the threshold) with a partner in the second.
    pub matched: usize,
    pub total: usize,
    /// Largest score difference of a matched pair.
    pub max_score_diff: f32,
}

impl Agreement {
    pub fn add(&mut self, other: Agreement) {
        self.matched += other.matched;
        self.total += other.total;
        self.max_score_diff = self.max_score_diff.max(other.max_score_diff);
    }

    pub fn fraction(&self) -> f64 {
        if self.total == 0 { 1.0 } else { self.matched as f64 / self.total as f64 }
    }
}

impl std::fmt::Display for Agreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} = {:.1} % (max score diff {:.4})",
            self.matched,
            self.total,
            100.0 * self.fraction(),
            self.max_score_diff
        )
    }
}

/// How many of `a`'s boxes with score >= `conf` have a partner in `b` (same class, IoU > 0.9,
/// the best-overlapping free one; each of `b`'s boxes used once).
pub fn iou_matches(a: &[Detection], b: &[Detection], conf: f32) -> Agreement {
    let mut taken = vec![false; b.len()];
    let mut out = Agreement::default();
    for d in a.iter().filter(|d| d.score >= conf) {
        out.total += 1;
        let best = b
            .iter()
            .enumerate()
            .filter(|(i, e)| !taken[*i] && e.class_id == d.class_id)
            .map(|(i, e)| (i, iou(&d.bbox, &e.bbox)))
            .max_by(|x, y| x.1.total_cmp(&y.1));
        if let Some((i, v)) = best
            && v > 0.9
        {
            taken[i] = true;
            out.matched += 1;
            out.max_score_diff = out.max_score_diff.max((d.score - b[i].score).abs());
        }
    }
    out
}
