//! The built-in specs against the manifests of the official configs: the same state-dict
//! tensor names and shapes, and the same fused parameter counts and GFLOPs.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::Path;

use candle_core::{DType, Device};
use serde_json::Value;
use spotter_detector::model::Model;
use spotter_detector::nn::conv::LoadCtx;
use spotter_detector::spec::{Activation, ModelSpec};
use spotter_detector::weights::TensorStore;

const CONFIGS: [&str; 14] = [
    "gelan-t",
    "gelan-s",
    "gelan-m",
    "gelan-c",
    "gelan-e",
    "yolov9-t",
    "yolov9-s",
    "yolov9-m",
    "yolov9-c",
    "yolov9-e",
    "gelan",
    "yolov9",
    "yolov9-cf",
    "yolov7-af",
];

fn manifest(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/fixtures/yolov9/manifests/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Builds `variant` from its built-in spec against a recording store.
fn build(variant: &str) -> (Model, Vec<(String, Vec<usize>)>) {
    let spec = ModelSpec::builtin(variant).unwrap();
    let layers = spec.resolve().unwrap();
    let store = TensorStore::recording();
    let ctx = LoadCtx { activation: spec.activation, bn_eps: 1e-3, device: Device::Cpu, dtype: DType::F32 };
    let model = Model::load(&layers, &store, &ctx).unwrap();
    (model, store.recorded())
}

#[test]
fn builtin_specs_expect_exactly_the_official_state_dict() {
    for name in CONFIGS {
        let m = manifest(name);
        let (_, recorded) = build(name);
        let expected: Vec<(String, Vec<usize>)> = m["state_dict"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                let shape = row[1].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
                (row[0].as_str().unwrap().to_string(), shape)
            })
            .collect();
        let mut a = recorded.clone();
        let mut b = expected.clone();
        a.sort();
        b.sort();
        let missing: Vec<_> = b.iter().filter(|x| !a.contains(x)).take(3).collect();
        let extra: Vec<_> = a.iter().filter(|x| !b.contains(x)).take(3).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{name}: not asked for {missing:?}; not in the manifest {extra:?}"
        );
        assert_eq!(a.len(), b.len(), "{name}: duplicate requests");
    }
}

#[test]
fn fused_parameters_and_gflops_match_the_official_summary() {
    for name in ["gelan-t", "gelan-s", "gelan-m", "gelan-c", "gelan-e", "gelan", "yolov7-af"] {
        let m = manifest(name);
        let (model, _) = build(name);
        let params = m["summary_fused"]["parameters"].as_u64().unwrap() as usize;
        assert_eq!(model.params(), params, "{name}: parameters");
        let gflops = m["summary_fused"]["gflops_640_exact"].as_f64().unwrap();
        let ours = model.gflops(640, DType::F32).unwrap();
        assert!((ours - gflops).abs() / gflops < 1e-3, "{name}: {ours} GFLOPs vs official {gflops}");
    }
}

#[test]
fn dual_head_inference_model_equals_the_converted_model() {
    for (dual, converted) in [
        ("yolov9-t", "gelan-t"),
        ("yolov9-s", "gelan-s"),
        ("yolov9-m", "gelan-m"),
        ("yolov9-c", "gelan-c"),
        ("yolov9-e", "gelan-e"),
    ] {
        let (model, _) = build(dual);
        let params = manifest(converted)["summary_fused"]["parameters"].as_u64().unwrap() as usize;
        assert_eq!(model.params(), params, "{dual} without its PGI branch vs {converted}");
        assert!(model.layer_table().iter().any(|l| !l.inference), "{dual} has an auxiliary branch");
        // The -converted name builds the gelan architecture.
        assert_eq!(ModelSpec::builtin(&format!("{dual}-converted")), ModelSpec::builtin(converted));
    }
}

#[test]
fn relu_configs_use_relu() {
    assert_eq!(ModelSpec::builtin("gelan").unwrap().activation, Activation::Relu);
    assert_eq!(ModelSpec::builtin("gelan-c").unwrap().activation, Activation::Silu);
}
