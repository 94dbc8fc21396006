//! Parity with the official YOLOv9 implementation, on the reference fixtures it produced
//! (`tests/fixtures/yolov9/README.md` tells how): every tiny model from both file formats,
//! layer by layer, the raw prediction, NMS and the final boxes.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::Value;
use spotter_detector::model::LayerOutput;
use spotter_detector::postprocess::{NmsOptions, non_max_suppression, scale_boxes};
use spotter_detector::{Detector, DetectorOptions, DeviceChoice};

const TINY: [&str; 7] = [
    "tiny-gelan-c",
    "tiny-gelan-s",
    "tiny-gelan",
    "tiny-yolov9-c",
    "tiny-yolov9-e",
    "tiny-yolov9-cf",
    "tiny-yolov7-af",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/yolov9/tiny")
}

fn cpu() -> DetectorOptions {
    DetectorOptions { device: DeviceChoice::Cpu, ..Default::default() }
}

fn load_json(model: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(format!("{model}.json"))).expect("fixture json");
    serde_json::from_str(&text).expect("valid json")
}

fn max_abs(a: &Tensor, b: &Tensor) -> (f32, f32) {
    assert_eq!(a.dims(), b.dims(), "shape");
    let diff = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    (diff, scale)
}

fn rows(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()).collect()
}

/// Checks one model file against the reference outputs.
fn check(model: &str, file: &Path) {
    let json = load_json(model);
    let reference: HashMap<String, Tensor> =
        candle_core::safetensors::load(fixtures().join(format!("{model}.outputs.safetensors")), &Device::Cpu).unwrap();
    let inputs =
        candle_core::safetensors::load(fixtures().join("input-coffee-96x128.safetensors"), &Device::Cpu).unwrap();
    let input = &inputs["input"];

    let det = Detector::from_path(file, cpu()).unwrap_or_else(|e| panic!("{model}: {e}"));
    let (out, captured) = det.model().forward_capture(input).unwrap();
    let head_index = json["head"]["layer"].as_u64().unwrap() as usize;
    let head_kind = json["head"]["type"].as_str().unwrap().to_string();

    // Every stored per-layer tensor: max|a-b| <= 1e-4 * max|ref|.
    let mut compared = 0;
    let mut check_tensor = |name: &str, ours: &Tensor| {
        if let Some(r) = reference.get(name) {
            let (d, s) = max_abs(ours, r);
            assert!(d <= 1e-4 * s.max(1e-6), "{model} {}: {name} max|diff| {d} vs max|ref| {s}", file.display());
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
    for (l, raw) in out.raw.iter().enumerate() {
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
    let pred = out.pred.to_dtype(candle_core::DType::F32).unwrap();
    let reference_pred = &reference["pred"];
    let boxes = max_abs(&pred.narrow(1, 0, 4).unwrap(), &reference_pred.narrow(1, 0, 4).unwrap()).0;
    let nc = pred.dim(1).unwrap() - 4;
    let scores = max_abs(&pred.narrow(1, 4, nc).unwrap(), &reference_pred.narrow(1, 4, nc).unwrap()).0;
    assert!(boxes <= 2e-3, "{model}: pred boxes differ by {boxes} px");
    assert!(scores <= 1e-4, "{model}: pred scores differ by {scores}");

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
}

#[test]
fn tiny_models_from_safetensors_match_the_official_outputs() {
    for model in TINY {
        check(model, &fixtures().join(format!("{model}.safetensors")));
    }
}

#[test]
fn tiny_models_from_official_checkpoints_match_the_official_outputs() {
    for model in TINY {
        check(model, &fixtures().join(format!("{model}.pt")));
    }
}

#[test]
fn inference_model_drops_exactly_the_auxiliary_branch() {
    for model in TINY {
        let json = load_json(model);
        let det = Detector::from_path(&fixtures().join(format!("{model}.pt")), cpu()).unwrap();
        let kept: Vec<u64> = det.info().layers.iter().filter(|l| l.inference).map(|l| l.index as u64).collect();
        let expected: Vec<u64> =
            json["inference_layers"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(kept, expected, "{model}");
        assert_eq!(det.info().nc, json["nc"].as_u64().unwrap() as usize);
        assert_eq!(det.info().names.len(), det.info().nc);
    }
}
