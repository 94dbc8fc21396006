//! Bad input gives a typed error that names the file and the offending layer or tensor.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use spotter_detector::{Detector, DetectorOptions, DeviceChoice, Error, RgbFrame};

fn tiny(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/yolov9/tiny").join(name)
}

fn cpu() -> DetectorOptions {
    DetectorOptions { device: DeviceChoice::Cpu, ..Default::default() }
}

fn load_err(path: &Path) -> String {
    match Detector::from_path(path, cpu()) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

/// Writes the tiny-gelan-s weights, changed by `edit`, next to a copy of its config.
fn edited_safetensors(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> PathBuf {
    let mut tensors = candle_core::safetensors::load(tiny("tiny-gelan-s.safetensors"), &Device::Cpu).unwrap();
    edit(&mut tensors);
    let path = dir.join("edited.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    std::fs::copy(tiny("tiny-gelan-s.yaml"), dir.join("edited.yaml")).unwrap();
    path
}

#[test]
fn not_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.pt");
    std::fs::write(&path, b"these are not weights, just some text in a file").unwrap();
    let e = load_err(&path);
    assert!(e.contains("notes.pt") && e.contains("not a PyTorch checkpoint"), "{e}");
    let path = dir.path().join("notes.bin");
    std::fs::write(&path, b"these are not weights either").unwrap();
    let e = load_err(&path);
    assert!(e.contains("notes.bin") && e.contains("unsupported weights format"), "{e}");
}

#[test]
fn truncated_files() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["tiny-gelan-s.pt", "tiny-gelan-s.safetensors"] {
        let bytes = std::fs::read(tiny(name)).unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let e = load_err(&path);
        assert!(e.contains(name), "{e}");
    }
}

#[test]
fn missing_file() {
    let e = load_err(Path::new("/nonexistent/gelan-c.pt"));
    assert!(e.contains("/nonexistent/gelan-c.pt"), "{e}");
}

#[test]
fn unknown_model_name_and_missing_weights() {
    let e = Detector::load("gelan-x", cpu()).err().unwrap().to_string();
    assert!(e.contains("unknown model 'gelan-x'") && e.contains("gelan-c"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let opts = DetectorOptions { weights_dir: Some(dir.path().to_path_buf()), ..cpu() };
    let e = Detector::load("gelan-e", opts).err().unwrap();
    assert!(matches!(e, Error::WeightsNotFound { .. }), "{e}");
    assert!(e.to_string().contains("spotter weights fetch gelan-e"), "{e}");
}

#[test]
fn unknown_module() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_safetensors(dir.path(), |_| {});
    let yaml = std::fs::read_to_string(tiny("tiny-gelan-s.yaml"))
        .unwrap()
        .replace("[-1, 1, ELAN1, [8, 8, 4]]", "[-1, 1, ELAN9, [8, 8, 4]]");
    std::fs::write(dir.path().join("edited.yaml"), yaml).unwrap();
    let e = load_err(&path);
    assert!(e.contains("layer 2") && e.contains("unknown module 'ELAN9'"), "{e}");
}

#[test]
fn missing_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_safetensors(dir.path(), |t| {
        t.remove("model.4.cv2.0.m.1.cv1.conv1.bn.running_var");
    });
    let e = load_err(&path);
    assert!(
        e.contains("missing tensor 'model.4.cv2.0.m.1.cv1.conv1.bn.running_var'") && e.contains("layer 4 RepNCSPELAN4"),
        "{e}"
    );
}

#[test]
fn unexpected_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_safetensors(dir.path(), |t| {
        t.insert("model.99.conv.weight".into(), Tensor::zeros((4, 4, 1, 1), DType::F32, &Device::Cpu).unwrap());
    });
    let e = load_err(&path);
    assert!(e.contains("unexpected tensor 'model.99.conv.weight'"), "{e}");
}

#[test]
fn wrong_shape() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_safetensors(dir.path(), |t| {
        t.insert("model.0.conv.weight".into(), Tensor::zeros((8, 3, 5, 5), DType::F32, &Device::Cpu).unwrap());
    });
    let e = load_err(&path);
    assert!(e.contains("'model.0.conv.weight' has shape [8, 3, 5, 5], expected [8, 3, 3, 3]"), "{e}");
}

#[test]
fn no_config_for_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("custom.safetensors");
    std::fs::copy(tiny("tiny-gelan-s.safetensors"), &path).unwrap();
    let e = load_err(&path);
    assert!(e.contains("custom.safetensors") && e.contains("no model config"), "{e}");
}

#[test]
fn empty_image() {
    assert!(RgbFrame::new(0, 0, Vec::new()).is_err());
    assert!(RgbFrame::new(4, 4, vec![0; 5]).is_err());
}

#[test]
fn bad_options() {
    let opts = DetectorOptions { imgsz: 100, ..cpu() };
    let e = Detector::from_path(&tiny("tiny-gelan-s.pt"), opts).err().unwrap().to_string();
    assert!(e.contains("multiple of 32"), "{e}");
    assert!("cuda:x".parse::<DeviceChoice>().is_err());
    assert!("tpu".parse::<DeviceChoice>().is_err());
}
