//! Parity with the official YOLOv9 implementation, on the reference fixtures it produced
//! (`tests/fixtures/yolov9/README.md` tells how): every tiny model from both file formats,
//! layer by layer, the raw prediction, NMS and the final boxes.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use common::{TINY, check_tiny, load_json, tiny_dir};
use spotter_detector::{Detector, DetectorOptions, DeviceChoice};

fn cpu() -> DetectorOptions {
    DetectorOptions { device: DeviceChoice::Cpu, ..Default::default() }
}

#[test]
fn tiny_models_from_safetensors_match_the_official_outputs() {
    for model in TINY {
        check_tiny(model, &tiny_dir().join(format!("{model}.safetensors")), &cpu());
    }
}

#[test]
fn tiny_models_from_official_checkpoints_match_the_official_outputs() {
    for model in TINY {
        check_tiny(model, &tiny_dir().join(format!("{model}.pt")), &cpu());
    }
}

#[test]
fn inference_model_drops_exactly_the_auxiliary_branch() {
    for model in TINY {
        let json = load_json(&tiny_dir().join(format!("{model}.json")));
        let det = Detector::from_path(&tiny_dir().join(format!("{model}.pt")), cpu()).unwrap();
        let kept: Vec<u64> = det.info().layers.iter().filter(|l| l.inference).map(|l| l.index as u64).collect();
        let expected: Vec<u64> =
            json["inference_layers"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(kept, expected, "{model}");
        assert_eq!(det.info().nc, json["nc"].as_u64().unwrap() as usize);
        assert_eq!(det.info().names.len(), det.info().nc);
    }
}
