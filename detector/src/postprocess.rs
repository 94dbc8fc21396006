//! Detection post-processing, reproducing the official YOLOv9
//! `utils.general.non_max_suppression` (single label per box) with
//! `torchvision.ops.nms`, and `utils.general.scale_boxes`
//! (<https://github.com/WongKinYiu/yolov9>).
//!
//! Numerical details copied from the reference:
//!
//! * a box is a candidate when its best class score is `> conf_threshold`
//!   (float32 comparison); it keeps only its best class (first index on ties);
//!   an anchor with a NaN score is dropped, as `amax` propagates NaN;
//! * `xywh -> xyxy` in float32 (`x - w / 2`, `x + w / 2`);
//! * candidates sorted by descending confidence (ties: anchor order; torch's
//!   unstable `argsort` leaves that order unspecified), at most 30000 kept;
//! * NMS runs on boxes offset by `class * 7680` *in float32* (the quantisation
//!   of large offsets is reproduced), areas computed on the offset boxes,
//!   `iou = inter / (area_i + area_j - inter)` in float32, and a box is
//!   suppressed when `iou > iou_threshold` (strict, compared in double like
//!   torchvision's CPU kernel, with the threshold read as the decimal it prints
//!   as: `0.45f32` compares as `0.45`);
//! * greedy suppression in score order, then truncation to `max_det`.
//!
//! Boxes of different classes can never overlap after the offset as long as
//! every class's offset boxes stay inside disjoint x ranges; then NMS runs per
//! class (same result, much less work). Otherwise one global greedy pass runs,
//! exactly like torchvision.

use std::cmp::Ordering;

/// `max_wh` of the official NMS: class offset in pixels.
pub const MAX_WH: f32 = 7680.0;
/// `max_nms` of the official NMS: most boxes that enter `torchvision.ops.nms`.
pub const MAX_NMS: usize = 30_000;

/// One detection: box corners in pixels, confidence and class index.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Detection {
    /// `x1, y1, x2, y2`.
    pub bbox: [f32; 4],
    pub score: f32,
    pub class_id: usize,
}

/// Settings of `non_max_suppression` (official defaults of `detect.py`).
#[derive(Debug, Clone, PartialEq)]
pub struct NmsOptions {
    /// Keep boxes whose confidence is `> conf_threshold` (0.25).
    pub conf_threshold: f32,
    /// Suppress boxes whose IoU with a better kept box is `> iou_threshold` (0.45).
    pub iou_threshold: f32,
    /// At most this many detections (1000).
    pub max_det: usize,
    /// Class-agnostic NMS (false).
    pub agnostic: bool,
    /// Keep only these classes (`None`: all; an empty list keeps nothing).
    pub classes: Option<Vec<usize>>,
}

impl Default for NmsOptions {
    fn default() -> Self {
        Self { conf_threshold: 0.25, iou_threshold: 0.45, max_det: 1000, agnostic: false, classes: None }
    }
}

/// Errors of the post-processing functions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostprocessError {
    /// `pred.len()` is not `(4 + nc) * n`.
    #[error("prediction has {actual} values, expected (4 + {nc}) * {n} = {expected}")]
    ShapeMismatch { nc: usize, n: usize, expected: usize, actual: usize },
    /// `(4 + nc) * n` overflows.
    #[error("prediction shape (4 + {nc}) x {n} is too large")]
    TooLarge { nc: usize, n: usize },
    /// `nc` is zero.
    #[error("number of classes must be positive")]
    NoClasses,
    /// An option is NaN.
    #[error("invalid NMS option: {0}")]
    InvalidOption(&'static str),
}

/// Official `non_max_suppression` for one image.
///
/// `pred` is the detect tensor of one image: `(4 + nc)` rows x `n` anchors,
/// row-major (`pred[r * n + a]`); rows 0..4 are `cx, cy, w, h`, rows 4.. the
/// class scores (already sigmoid). Returns detections in descending confidence,
/// boxes `x1, y1, x2, y2` in the same pixels as `pred`.
///
/// Allocates its work buffers per call; use [`Nms`] to reuse them.
pub fn non_max_suppression(
    pred: &[f32],
    nc: usize,
    n: usize,
    opts: &NmsOptions,
) -> Result<Vec<Detection>, PostprocessError> {
    let mut out = Vec::new();
    Nms::new().run(pred, nc, n, opts, &mut out)?;
    Ok(out)
}

/// Official `scale_boxes(img1_shape=input_hw, boxes, img0_shape=orig_hw)`: maps
/// letterbox-pixel boxes back to the source image, then clips them to it.
///
/// Gain and padding are recomputed from the two shapes exactly like the
/// official code (`gain = min(h1 / h0, w1 / w0)`,
/// `pad = ((w1 - w0 * gain) / 2, (h1 - h0 * gain) / 2)`), not taken from the
/// padding letterbox really added. The arithmetic on the boxes is float32 with
/// gain and padding rounded to float32, as torch does with Python scalars.
/// `(height, width)` order for both shapes.
pub fn scale_boxes(dets: &mut [Detection], input_hw: (u32, u32), orig_hw: (u32, u32)) {
    let (h1, w1) = (f64::from(input_hw.0), f64::from(input_hw.1));
    let (h0, w0) = (f64::from(orig_hw.0), f64::from(orig_hw.1));
    let gain = (h1 / h0).min(w1 / w0);
    let pad_x = ((w1 - w0 * gain) / 2.0) as f32;
    let pad_y = ((h1 - h0 * gain) / 2.0) as f32;
    let gain = gain as f32;
    let (max_x, max_y) = (w0 as f32, h0 as f32);
    for det in dets {
        let [x1, y1, x2, y2] = det.bbox;
        det.bbox = [
            clamp_like_torch((x1 - pad_x) / gain, max_x),
            clamp_like_torch((y1 - pad_y) / gain, max_y),
            clamp_like_torch((x2 - pad_x) / gain, max_x),
            clamp_like_torch((y2 - pad_y) / gain, max_y),
        ];
    }
}

/// `tensor.clamp_(0, max)`: NaN stays NaN.
fn clamp_like_torch(v: f32, max: f32) -> f32 {
    if v.is_nan() {
        v
    } else if v < 0.0 {
        0.0
    } else if v > max {
        max
    } else {
        v
    }
}

/// One box that passed the confidence filter.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    anchor: u32,
    class_id: u32,
    score: f32,
    /// `x1, y1, x2, y2` without offset.
    bbox: [f32; 4],
    /// The same plus `class * 7680` (float32), as NMS sees it.
    obox: [f32; 4],
    /// Area of `obox`.
    area: f32,
}

/// Reusable NMS work buffers: repeated calls on same-sized inputs allocate
/// nothing once the buffers have grown.
#[derive(Debug, Default)]
pub struct Nms {
    best: Vec<f32>,
    best_class: Vec<u32>,
    cands: Vec<Candidate>,
    by_class: Vec<u32>,
    suppressed: Vec<bool>,
    kept: Vec<bool>,
}

impl Nms {
    pub fn new() -> Self {
        Self::default()
    }

    /// [`non_max_suppression`] into `out` (cleared first), reusing buffers.
    pub fn run(
        &mut self,
        pred: &[f32],
        nc: usize,
        n: usize,
        opts: &NmsOptions,
        out: &mut Vec<Detection>,
    ) -> Result<(), PostprocessError> {
        out.clear();
        if nc == 0 {
            return Err(PostprocessError::NoClasses);
        }
        let expected = (4usize)
            .checked_add(nc)
            .and_then(|rows| rows.checked_mul(n))
            .ok_or(PostprocessError::TooLarge { nc, n })?;
        if pred.len() != expected {
            return Err(PostprocessError::ShapeMismatch { nc, n, expected, actual: pred.len() });
        }
        if opts.conf_threshold.is_nan() {
            return Err(PostprocessError::InvalidOption("conf_threshold is NaN"));
        }
        if opts.iou_threshold.is_nan() {
            return Err(PostprocessError::InvalidOption("iou_threshold is NaN"));
        }
        if n > u32::MAX as usize || nc > u32::MAX as usize {
            return Err(PostprocessError::TooLarge { nc, n });
        }
        if n == 0 || opts.max_det == 0 {
            return Ok(());
        }

        self.best_class_per_anchor(pred, nc, n);
        self.collect_candidates(pred, n, opts);
        if self.cands.is_empty() {
            return Ok(());
        }

        // x[:, 4].argsort(descending=True)[:max_nms]
        self.cands.sort_unstable_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.anchor.cmp(&b.anchor)));
        self.cands.truncate(MAX_NMS);

        // boxes = x[:, :4] + cls * max_wh (float32), areas on those boxes.
        for c in &mut self.cands {
            let offset = if opts.agnostic { 0.0 } else { c.class_id as f32 * MAX_WH };
            c.obox = c.bbox.map(|v| v + offset);
            c.area = (c.obox[2] - c.obox[0]) * (c.obox[3] - c.obox[1]);
        }

        let iou_threshold = decimal_f64(opts.iou_threshold);
        let count = self.cands.len();
        self.suppressed.clear();
        self.suppressed.resize(count, false);
        self.kept.clear();
        self.kept.resize(count, false);

        if !opts.agnostic && iou_threshold >= 0.0 && self.classes_separable() {
            // Per class: self.by_class holds candidate indices grouped by class,
            // score order inside each group.
            let mut start = 0;
            while start < count {
                let class_id = self.cands[self.by_class[start] as usize].class_id;
                let mut end = start + 1;
                while end < count && self.cands[self.by_class[end] as usize].class_id == class_id {
                    end += 1;
                }
                greedy(
                    &self.cands,
                    &self.by_class[start..end],
                    iou_threshold,
                    usize::MAX,
                    &mut self.suppressed,
                    &mut self.kept,
                );
                start = end;
            }
        } else {
            self.by_class.clear();
            self.by_class.extend(0..count as u32);
            // Global score order: boxes after the max_det-th kept one cannot
            // reach the output, so the pass may stop there.
            greedy(&self.cands, &self.by_class, iou_threshold, opts.max_det, &mut self.suppressed, &mut self.kept);
        }

        out.extend(self.cands.iter().zip(&self.kept).filter(|&(_, &k)| k).take(opts.max_det).map(|(c, _)| Detection {
            bbox: c.bbox,
            score: c.score,
            class_id: c.class_id as usize,
        }));
        Ok(())
    }

    /// `conf, j = cls.max(1)` row by row (sequential memory access): best score
    /// and first index of it; NaN wins and sticks, like torch's max.
    fn best_class_per_anchor(&mut self, pred: &[f32], nc: usize, n: usize) {
        self.best.clear();
        self.best.extend_from_slice(&pred[4 * n..5 * n]);
        self.best_class.clear();
        self.best_class.resize(n, 0);
        for c in 1..nc {
            let row = &pred[(4 + c) * n..(5 + c) * n];
            for ((best, class_id), &v) in self.best.iter_mut().zip(&mut self.best_class).zip(row) {
                if best.is_nan() {
                    continue;
                }
                if matches!(v.partial_cmp(best), Some(Ordering::Greater) | None) {
                    *best = v;
                    *class_id = c as u32;
                }
            }
        }
    }

    fn collect_candidates(&mut self, pred: &[f32], n: usize, opts: &NmsOptions) {
        self.cands.clear();
        let (cx, rest) = pred.split_at(n);
        let (cy, rest) = rest.split_at(n);
        let (w, rest) = rest.split_at(n);
        let h = &rest[..n];
        for (a, (&score, &class_id)) in self.best.iter().zip(&self.best_class).enumerate() {
            // `conf > conf_thres` is false for NaN.
            if score.partial_cmp(&opts.conf_threshold) != Some(Ordering::Greater) {
                continue;
            }
            if let Some(classes) = &opts.classes
                && !classes.contains(&(class_id as usize))
            {
                continue;
            }
            let (half_w, half_h) = (w[a] / 2.0, h[a] / 2.0);
            self.cands.push(Candidate {
                anchor: a as u32,
                class_id,
                score,
                bbox: [cx[a] - half_w, cy[a] - half_h, cx[a] + half_w, cy[a] + half_h],
                obox: [0.0; 4],
                area: 0.0,
            });
        }
    }

    /// Groups candidates by class into `by_class` and reports whether the
    /// offset boxes of different classes occupy disjoint x ranges (then no
    /// two boxes of different classes intersect, IoU 0, never suppressing).
    fn classes_separable(&mut self) -> bool {
        self.by_class.clear();
        self.by_class.extend(0..self.cands.len() as u32);
        let cands = &self.cands;
        // Candidates are in score order; the index breaks ties, so score
        // order is kept inside each class.
        self.by_class.sort_unstable_by_key(|&i| (cands[i as usize].class_id, i));
        let mut prev_max: Option<f32> = None;
        let mut i = 0;
        while i < self.by_class.len() {
            let class_id = cands[self.by_class[i] as usize].class_id;
            let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
            while i < self.by_class.len() && cands[self.by_class[i] as usize].class_id == class_id {
                let b = &cands[self.by_class[i] as usize].obox;
                if !(b[0].is_finite() && b[2].is_finite()) {
                    return false;
                }
                lo = lo.min(b[0]).min(b[2]);
                hi = hi.max(b[0]).max(b[2]);
                i += 1;
            }
            if let Some(prev) = prev_max
                && prev > lo
            {
                return false;
            }
            prev_max = Some(hi);
        }
        true
    }
}

/// torchvision's CPU `nms` kernel over `order` (indices into `cands`, in
/// descending score order), stopping once `limit` boxes are kept.
fn greedy(
    cands: &[Candidate],
    order: &[u32],
    iou_threshold: f64,
    limit: usize,
    suppressed: &mut [bool],
    kept: &mut [bool],
) {
    let mut kept_count = 0;
    for (pos, &i) in order.iter().enumerate() {
        let i = i as usize;
        if suppressed[i] {
            continue;
        }
        if kept_count == limit {
            break;
        }
        kept[i] = true;
        kept_count += 1;
        let bi = &cands[i];
        let [ix1, iy1, ix2, iy2] = bi.obox;
        for &j in &order[pos + 1..] {
            let j = j as usize;
            if suppressed[j] {
                continue;
            }
            let bj = &cands[j];
            let xx1 = max_like_cpp(ix1, bj.obox[0]);
            let yy1 = max_like_cpp(iy1, bj.obox[1]);
            let xx2 = min_like_cpp(ix2, bj.obox[2]);
            let yy2 = min_like_cpp(iy2, bj.obox[3]);
            let w = max_like_cpp(0.0, xx2 - xx1);
            let h = max_like_cpp(0.0, yy2 - yy1);
            let inter = w * h;
            let ovr = inter / (bi.area + bj.area - inter);
            if f64::from(ovr) > iou_threshold {
                suppressed[j] = true;
            }
        }
    }
}

/// `std::max(a, b)`: `(a < b) ? b : a`.
#[inline]
fn max_like_cpp(a: f32, b: f32) -> f32 {
    if a < b { b } else { a }
}

/// `std::min(a, b)`: `(b < a) ? b : a`.
#[inline]
fn min_like_cpp(a: f32, b: f32) -> f32 {
    if b < a { b } else { a }
}

/// The `f64` of the shortest decimal that prints `v` (`0.45f32` -> `0.45`),
/// i.e. the Python float the official code passes to torchvision.
fn decimal_f64(v: f32) -> f64 {
    use std::fmt::Write;
    let mut buf = StackStr::default();
    if write!(buf, "{v:e}").is_ok()
        && let Ok(s) = std::str::from_utf8(&buf.bytes[..buf.len])
        && let Ok(parsed) = s.parse::<f64>()
    {
        return parsed;
    }
    f64::from(v)
}

/// Small fixed-capacity string buffer (no allocation).
struct StackStr {
    bytes: [u8; 48],
    len: usize,
}

impl Default for StackStr {
    fn default() -> Self {
        Self { bytes: [0; 48], len: 0 }
    }
}

impl std::fmt::Write for StackStr {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let dst = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/yolov9/tiny");
    const MODELS: [&str; 7] = [
        "tiny-gelan-c",
        "tiny-gelan-s",
        "tiny-gelan",
        "tiny-yolov9-c",
        "tiny-yolov9-e",
        "tiny-yolov9-cf",
        "tiny-yolov7-af",
    ];

    struct Fixture {
        name: &'static str,
        json: serde_json::Value,
        pred: Vec<f32>,
        nc: usize,
        n: usize,
    }

    fn load(name: &'static str) -> Fixture {
        let path = format!("{TINY}/{name}.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        let json: serde_json::Value = serde_json::from_str(&text).expect("json");
        let path = format!("{TINY}/{name}.outputs.safetensors");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        let t = st.tensor("pred").expect("pred");
        assert_eq!(t.dtype(), safetensors::Dtype::F32);
        let shape = t.shape().to_vec();
        assert_eq!(shape.len(), 3);
        assert_eq!(shape[0], 1);
        let pred: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let nc = json["nc"].as_u64().expect("nc") as usize;
        assert_eq!(shape[1], 4 + nc);
        Fixture { name, json, pred, nc, n: shape[2] }
    }

    fn options(json: &serde_json::Value) -> NmsOptions {
        let nms = &json["nms"];
        assert!(nms["classes"].is_null());
        assert_eq!(nms["multi_label"], false);
        assert_eq!(nms["max_wh"].as_f64(), Some(f64::from(MAX_WH)));
        NmsOptions {
            conf_threshold: nms["conf_thres"].as_f64().expect("conf") as f32,
            iou_threshold: nms["iou_thres"].as_f64().expect("iou") as f32,
            max_det: nms["max_det"].as_u64().expect("max_det") as usize,
            agnostic: nms["agnostic"].as_bool().expect("agnostic"),
            classes: None,
        }
    }

    /// Rows `[x1, y1, x2, y2, conf, cls]`.
    fn rows(v: &serde_json::Value) -> Vec<[f64; 6]> {
        v.as_array()
            .expect("rows")
            .iter()
            .map(|r| {
                let r = r.as_array().expect("row");
                assert_eq!(r.len(), 6);
                std::array::from_fn(|k| r[k].as_f64().expect("number"))
            })
            .collect()
    }

    /// (max box diff, max conf diff); asserts count, classes and order.
    fn compare(name: &str, dets: &[Detection], expected: &[[f64; 6]]) -> (f64, f64) {
        assert_eq!(dets.len(), expected.len(), "{name}: count");
        let (mut box_diff, mut conf_diff) = (0.0f64, 0.0f64);
        for (k, (d, e)) in dets.iter().zip(expected).enumerate() {
            assert_eq!(d.class_id as f64, e[5], "{name}: class of detection {k}");
            // The reference values are float32; compare as float32 (serde_json
            // without `float_roundtrip` may misparse the last f64 ulp).
            for (a, b) in d.bbox.iter().zip(&e[..4]) {
                box_diff = box_diff.max(f64::from((a - *b as f32).abs()));
            }
            conf_diff = conf_diff.max(f64::from((d.score - e[4] as f32).abs()));
        }
        (box_diff, conf_diff)
    }

    #[test]
    fn nms_and_scale_match_official_fixtures() {
        let mut nms = Nms::new();
        let mut dets = Vec::new();
        for name in MODELS {
            let f = load(name);
            let opts = options(&f.json);
            nms.run(&f.pred, f.nc, f.n, &opts, &mut dets).expect("nms");
            assert_eq!(dets.len() as u64, f.json["nms"]["kept"].as_u64().expect("kept"));
            let (bd, cd) = compare(name, &dets, &rows(&f.json["detections_letterbox"]));
            eprintln!("{}: {} kept, letterbox max box diff {bd:e}, conf diff {cd:e}", f.name, dets.len());
            assert!(bd <= 2e-3 && cd <= 1e-4, "{name}");
            // Same input, same arithmetic: exact.
            assert_eq!(bd, 0.0, "{name}");
            assert_eq!(cd, 0.0, "{name}");
            // The free function gives the same.
            assert_eq!(non_max_suppression(&f.pred, f.nc, f.n, &opts).expect("nms"), dets);

            let lb = &f.json["letterbox"];
            let input_hw =
                (lb["input_hw"][0].as_u64().expect("h") as u32, lb["input_hw"][1].as_u64().expect("w") as u32);
            let orig = &f.json["image"]["orig_hw"];
            let orig_hw = (orig[0].as_u64().expect("h") as u32, orig[1].as_u64().expect("w") as u32);
            assert_eq!((input_hw, orig_hw), ((96, 128), (400, 600)));
            scale_boxes(&mut dets, input_hw, orig_hw);
            let (bd, cd) = compare(name, &dets, &rows(&f.json["detections"]));
            eprintln!("{name}: original image max box diff {bd:e}");
            assert!(bd <= 1e-2 && cd == 0.0, "{name}");

            let rounded = rows(&f.json["detections_rounded"]);
            for (k, (d, e)) in dets.iter().zip(&rounded).enumerate() {
                let r = d.bbox.map(f32::round_ties_even);
                for (a, b) in r.iter().zip(&e[..4]) {
                    assert_eq!(*a, *b as f32, "{name}: rounded box {k}");
                }
            }
        }
    }

    #[test]
    fn scale_boxes_is_float32_exact() {
        // Stronger than the 1e-2 px tolerance: bit-exact on every model.
        for name in MODELS {
            let f = load(name);
            let mut dets = non_max_suppression(&f.pred, f.nc, f.n, &options(&f.json)).expect("nms");
            scale_boxes(&mut dets, (96, 128), (400, 600));
            let (bd, _) = compare(name, &dets, &rows(&f.json["detections"]));
            assert_eq!(bd, 0.0, "{name}");
        }
    }

    /// Straightforward reference: the official algorithm over all candidates,
    /// one global greedy pass.
    fn reference(pred: &[f32], nc: usize, n: usize, opts: &NmsOptions) -> Vec<Detection> {
        let mut c: Vec<(f32, usize, usize)> = (0..n)
            .filter_map(|a| {
                let (mut best, mut j) = (pred[4 * n + a], 0);
                for k in 1..nc {
                    if pred[(4 + k) * n + a] > best {
                        best = pred[(4 + k) * n + a];
                        j = k;
                    }
                }
                let ok = best > opts.conf_threshold && opts.classes.as_ref().is_none_or(|cl| cl.contains(&j));
                ok.then_some((best, j, a))
            })
            .collect();
        c.sort_by(|x, y| y.0.total_cmp(&x.0));
        let boxes: Vec<[f32; 4]> = c
            .iter()
            .map(|&(_, _, a)| {
                let (x, y, w, h) = (pred[a], pred[n + a], pred[2 * n + a], pred[3 * n + a]);
                [x - w / 2.0, y - h / 2.0, x + w / 2.0, y + h / 2.0]
            })
            .collect();
        let ob: Vec<[f32; 4]> = c
            .iter()
            .zip(&boxes)
            .map(|(&(_, j, _), b)| {
                let o = if opts.agnostic { 0.0 } else { j as f32 * MAX_WH };
                b.map(|v| v + o)
            })
            .collect();
        let area = |b: &[f32; 4]| (b[2] - b[0]) * (b[3] - b[1]);
        let mut sup = vec![false; c.len()];
        let mut out = Vec::new();
        for i in 0..c.len() {
            if sup[i] {
                continue;
            }
            out.push(Detection { bbox: boxes[i], score: c[i].0, class_id: c[i].1 });
            for j in i + 1..c.len() {
                let (a, b) = (&ob[i], &ob[j]);
                let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
                let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
                let inter = w * h;
                if f64::from(inter / (area(a) + area(b) - inter)) > decimal_f64(opts.iou_threshold) {
                    sup[j] = true;
                }
            }
        }
        out.truncate(opts.max_det);
        out
    }

    #[test]
    fn agnostic_classes_and_max_det() {
        let f = load("tiny-gelan-c");
        let base = NmsOptions::default();

        let all = non_max_suppression(&f.pred, f.nc, f.n, &base).expect("nms");
        assert_eq!(all, reference(&f.pred, f.nc, f.n, &base));

        // Agnostic: no class offset, fewer boxes survive, all pairwise IoU <= thr.
        let agn = NmsOptions { agnostic: true, ..base.clone() };
        let dets = non_max_suppression(&f.pred, f.nc, f.n, &agn).expect("nms");
        assert_eq!(dets, reference(&f.pred, f.nc, f.n, &agn));
        assert!(!dets.is_empty() && dets.len() < all.len());
        for (i, a) in dets.iter().enumerate() {
            for b in &dets[i + 1..] {
                assert!(iou(&a.bbox, &b.bbox) <= 0.45 + 1e-6);
            }
        }
        assert!(dets.windows(2).all(|w| w[0].score >= w[1].score));

        // Class filter keeps exactly the listed classes' detections, same order.
        let classes = vec![70, 7];
        let filtered = NmsOptions { classes: Some(classes.clone()), ..base.clone() };
        let dets = non_max_suppression(&f.pred, f.nc, f.n, &filtered).expect("nms");
        let expected: Vec<_> = all.iter().filter(|d| classes.contains(&d.class_id)).cloned().collect();
        assert!(!expected.is_empty());
        assert_eq!(dets, expected);
        let none = NmsOptions { classes: Some(vec![]), ..base.clone() };
        assert!(non_max_suppression(&f.pred, f.nc, f.n, &none).expect("nms").is_empty());

        // max_det truncates the ordered list.
        let few = NmsOptions { max_det: 5, ..base.clone() };
        let dets = non_max_suppression(&f.pred, f.nc, f.n, &few).expect("nms");
        assert_eq!(dets, all[..5].to_vec());
        let zero = NmsOptions { max_det: 0, ..base.clone() };
        assert!(non_max_suppression(&f.pred, f.nc, f.n, &zero).expect("nms").is_empty());

        // Other thresholds agree with the plain reference on every model.
        for name in MODELS {
            let f = load(name);
            for (conf, iou_thr, agnostic) in [(0.05, 0.3, false), (0.1, 0.7, true), (0.01, 0.5, false)] {
                let o = NmsOptions { conf_threshold: conf, iou_threshold: iou_thr, agnostic, ..base.clone() };
                let got = non_max_suppression(&f.pred, f.nc, f.n, &o).expect("nms");
                assert_eq!(got, reference(&f.pred, f.nc, f.n, &o), "{name} {conf} {iou_thr} {agnostic}");
            }
        }
    }

    fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
        let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
        let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
        let area = |r: &[f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
        w * h / (area(a) + area(b) - w * h)
    }

    /// Builds a (4 + nc) x n tensor from per-anchor (cx, cy, w, h, scores).
    fn tensor(nc: usize, anchors: &[([f32; 4], Vec<f32>)]) -> Vec<f32> {
        let n = anchors.len();
        let mut t = vec![0.0; (4 + nc) * n];
        for (a, (b, s)) in anchors.iter().enumerate() {
            for r in 0..4 {
                t[r * n + a] = b[r];
            }
            for (c, &v) in s.iter().enumerate() {
                t[(4 + c) * n + a] = v;
            }
        }
        t
    }

    #[test]
    fn synthetic_cases() {
        let opts = NmsOptions::default();
        // Two overlapping boxes of class 1, one of class 0 at the same place,
        // a low-score box, a tie between classes (first wins), threshold is strict.
        let t = tensor(
            3,
            &[
                ([50.0, 50.0, 20.0, 20.0], vec![0.1, 0.9, 0.2]),
                ([52.0, 50.0, 20.0, 20.0], vec![0.1, 0.8, 0.2]),
                ([50.0, 50.0, 20.0, 20.0], vec![0.7, 0.1, 0.2]),
                ([10.0, 10.0, 4.0, 4.0], vec![0.25, 0.1, 0.2]),
                ([90.0, 90.0, 4.0, 6.0], vec![0.6, 0.1, 0.6]),
            ],
        );
        let dets = non_max_suppression(&t, 3, 5, &opts).expect("nms");
        assert_eq!(
            dets,
            vec![
                Detection { bbox: [40.0, 40.0, 60.0, 60.0], score: 0.9, class_id: 1 },
                Detection { bbox: [40.0, 40.0, 60.0, 60.0], score: 0.7, class_id: 0 },
                Detection { bbox: [88.0, 87.0, 92.0, 93.0], score: 0.6, class_id: 0 },
            ]
        );
        let agn = NmsOptions { agnostic: true, ..opts.clone() };
        let dets = non_max_suppression(&t, 3, 5, &agn).expect("nms");
        assert_eq!(dets.iter().map(|d| d.score).collect::<Vec<_>>(), vec![0.9, 0.6]);

        // IoU exactly at the threshold does not suppress (strict `>`):
        // [0,0,10,10] and [0,0,10,5]: IoU = 50 / 100 = 0.5.
        let t = tensor(1, &[([5.0, 5.0, 10.0, 10.0], vec![0.9]), ([5.0, 2.5, 10.0, 5.0], vec![0.8])]);
        let half = NmsOptions { iou_threshold: 0.5, ..opts.clone() };
        assert_eq!(non_max_suppression(&t, 1, 2, &half).expect("nms").len(), 2);
        let below = NmsOptions { iou_threshold: 0.49, ..opts.clone() };
        assert_eq!(non_max_suppression(&t, 1, 2, &below).expect("nms").len(), 1);

        // Equal scores keep anchor order.
        let t = tensor(1, &[([5.0, 5.0, 2.0, 2.0], vec![0.5]), ([50.0, 5.0, 2.0, 2.0], vec![0.5])]);
        let dets = non_max_suppression(&t, 1, 2, &opts).expect("nms");
        assert_eq!(dets[0].bbox[0], 4.0);
        assert_eq!(dets[1].bbox[0], 49.0);

        // NaN scores drop the anchor; NaN boxes never suppress.
        let t = tensor(
            2,
            &[
                ([5.0, 5.0, 2.0, 2.0], vec![0.9, f32::NAN]),
                ([f32::NAN, 5.0, 2.0, 2.0], vec![0.8, 0.1]),
                ([5.0, 5.0, 2.0, 2.0], vec![0.7, 0.1]),
            ],
        );
        let dets = non_max_suppression(&t, 2, 3, &opts).expect("nms");
        assert_eq!(dets.iter().map(|d| d.score).collect::<Vec<_>>(), vec![0.8, 0.7]);

        // Huge boxes that reach into the next class's offset range: falls back
        // to the global pass and still matches the reference.
        let t = tensor(
            2,
            &[([7000.0, 7000.0, 2000.0, 2000.0], vec![0.9, 0.1]), ([-600.0, -600.0, 2000.0, 2000.0], vec![0.1, 0.8])],
        );
        let dets = non_max_suppression(&t, 2, 2, &opts).expect("nms");
        // The class-1 box, moved by 7680 along both axes, overlaps the class-0
        // box: suppressed, as in the official code.
        assert_eq!(dets.len(), 1);
        assert_eq!(dets, reference(&t, 2, 2, &opts));
    }

    #[test]
    fn empty_and_invalid_input() {
        let opts = NmsOptions::default();
        // No candidates.
        let t = tensor(2, &[([5.0, 5.0, 2.0, 2.0], vec![0.1, 0.25])]);
        assert!(non_max_suppression(&t, 2, 1, &opts).expect("nms").is_empty());
        // No anchors.
        assert!(non_max_suppression(&[], 80, 0, &opts).expect("nms").is_empty());
        // Wrong length.
        assert_eq!(
            non_max_suppression(&t, 3, 1, &opts),
            Err(PostprocessError::ShapeMismatch { nc: 3, n: 1, expected: 7, actual: 6 })
        );
        assert!(matches!(non_max_suppression(&t[..5], 2, 1, &opts), Err(PostprocessError::ShapeMismatch { .. })));
        assert_eq!(non_max_suppression(&[], 0, 0, &opts), Err(PostprocessError::NoClasses));
        assert!(matches!(non_max_suppression(&t, usize::MAX, 2, &opts), Err(PostprocessError::TooLarge { .. })));
        let nan = NmsOptions { iou_threshold: f32::NAN, ..opts.clone() };
        assert!(matches!(non_max_suppression(&t, 2, 1, &nan), Err(PostprocessError::InvalidOption(_))));
        // Buffers are reused and `out` is cleared.
        let mut nms = Nms::new();
        let mut out = vec![Detection { bbox: [0.0; 4], score: 1.0, class_id: 0 }];
        nms.run(&t, 2, 1, &opts, &mut out).expect("nms");
        assert!(out.is_empty());
    }

    #[test]
    fn scale_boxes_formula_and_clip() {
        // coffee.png at 128: gain = 128/600, pad = (0, (96 - 400 * gain) / 2).
        let mut d = vec![Detection { bbox: [-5.0, 10.0, 64.0, 100.0], score: 0.5, class_id: 3 }];
        scale_boxes(&mut d, (96, 128), (400, 600));
        let gain = (128.0f64 / 600.0) as f32;
        let pad_y = ((96.0 - 400.0 * (128.0f64 / 600.0)) / 2.0) as f32;
        assert_eq!(d[0].bbox[0], 0.0);
        assert_eq!(d[0].bbox[1], (10.0 - pad_y) / gain);
        assert_eq!(d[0].bbox[2], 64.0 / gain);
        assert_eq!(d[0].bbox[3], 400.0);
        assert_eq!((d[0].score, d[0].class_id), (0.5, 3));
    }

    #[test]
    fn threshold_reads_as_decimal() {
        assert_eq!(decimal_f64(0.45), 0.45);
        assert_eq!(decimal_f64(0.7), 0.7);
        assert_eq!(decimal_f64(1e-30), 1e-30);
        assert_eq!(decimal_f64(-0.0), 0.0);
        assert_eq!(decimal_f64(f32::MAX), 3.4028235e38);
    }
}
