//! `spotter detect` on real photos with an official-format checkpoint, against the detections
//! the official implementation produced (`tests/fixtures/yolov9/full/expected`).

use serde_json::Value;

use crate::{assert_clean_error, fixture, spotter, stderr};

const PHOTOS: [(&str, &str); 4] =
    [("astronaut", "png"), ("chelsea", "png"), ("coffee", "png"), ("grace_hopper", "jpg")];

fn iou(a: &[f64], b: &[f64]) -> f64 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
}

#[test]
fn full_size_gelan_s_reproduces_the_official_detections() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("photos");
    std::fs::create_dir(&images).unwrap();
    for (name, ext) in PHOTOS {
        std::fs::copy(fixture(&format!("images/{name}.{ext}")), images.join(format!("{name}.{ext}"))).unwrap();
    }
    let out = dir.path().join("detections.jsonl");
    let model = fixture("yolov9/full/gelan-s.pt");
    let o = spotter(&[
        "detect",
        images.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
        "--json",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<Value> =
        std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), PHOTOS.len());
    for (frame, ((name, _), line)) in PHOTOS.iter().zip(&lines).enumerate() {
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(&format!("yolov9/full/expected/{name}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(line["frame"], frame);
        assert_eq!(line["model"], "gelan-s");
        let hw = &expected["orig_hw"];
        assert_eq!((&line["height"], &line["width"]), (&hw[0], &hw[1]));
        let ours: Vec<(Vec<f64>, f64, u64)> = line["detections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                let b = d["bbox"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
                (b, d["score"].as_f64().unwrap(), d["class_id"].as_u64().unwrap())
            })
            .collect();
        let theirs: Vec<(Vec<f64>, f64, u64)> = expected["detections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let r: Vec<f64> = r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
                (r[..4].to_vec(), r[4], r[5] as u64)
            })
            .collect();
        // Every official box has a partner: same class, corners within 0.05 px, score within 2e-4
        // (the issue asks 1 px and 1e-3; measured 1.3e-4 px and 6.8e-6).
        let mut taken = vec![false; ours.len()];
        for (tb, ts, tc) in &theirs {
            let partner = ours.iter().enumerate().position(|(i, (ob, os, oc))| {
                !taken[i]
                    && oc == tc
                    && (os - ts).abs() <= 2e-4
                    && ob.iter().zip(tb).all(|(a, b)| (a - b).abs() <= 0.05)
                    && iou(ob, tb) > 0.9
            });
            match partner {
                Some(i) => taken[i] = true,
                None => panic!("{name}: official box {tb:?} {ts} class {tc} not found"),
            }
        }
        assert_eq!(ours.len(), theirs.len(), "{name}: extra detections");
    }
}

#[test]
fn detect_reports_bad_input_in_one_line() {
    let model = fixture("yolov9/tiny/tiny-gelan-s.pt");
    let model = model.to_str().unwrap();
    assert_clean_error(&spotter(&["detect", "/no/such/photo.jpg", "--model", model]), "no such file");
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("photo.jpg");
    std::fs::write(&fake, "a text file named like a photo").unwrap();
    assert_clean_error(&spotter(&["detect", fake.to_str().unwrap(), "--model", model]), "not a readable image");
    let photo = fixture("images/coffee.png");
    let photo = photo.to_str().unwrap();
    let o = spotter(&["detect", photo, "--model", "/no/such/weights.pt"]);
    assert_clean_error(&o, "/no/such/weights.pt: no such file");
    assert_eq!(stderr(&o).matches("no such file").count(), 1, "the cause once: {}", stderr(&o));
    // A missing official variant is downloaded; here from a port where nothing listens.
    let o = spotter(&["detect", photo, "--model", "gelan-c"]);
    assert_clean_error(&o, "cannot download gelan-c.pt from http://127.0.0.1:9/gelan-c.pt: connection refused");
    assert!(stderr(&o).contains("set SPOTTER_WEIGHTS_MIRROR"), "{}", stderr(&o));
    assert_clean_error(&spotter(&["detect", photo, "--model", photo]), "coffee.png");
    assert_clean_error(&spotter(&["detect", photo, "--model", model, "--imgsz", "100"]), "multiple of 32");
    assert_clean_error(&spotter(&["detect", photo, "--model", model, "--device", "tpu"]), "unknown device");
    assert_clean_error(
        &spotter(&["detect", photo, "--model", model, "--json", "/no/such/dir/out.jsonl"]),
        "cannot write",
    );
}

#[test]
fn detect_prints_detections_and_filters_classes() {
    let model = fixture("yolov9/tiny/tiny-gelan-c.pt");
    let photo = fixture("images/coffee.png");
    let o = spotter(&["detect", photo.to_str().unwrap(), "--model", model.to_str().unwrap(), "--imgsz", "128"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = crate::stdout(&o);
    // tiny-gelan-c keeps 110 boxes on this photo at 128 (see the fixture json).
    assert!(text.contains("coffee.png (600x400): 110 detections"), "{text}");
    let o = spotter(&[
        "detect",
        photo.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--imgsz",
        "128",
        "--classes",
        "0",
        "--conf",
        "0.3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = crate::stdout(&o);
    for line in text.lines().skip(1) {
        assert!(line.trim_start().starts_with("person"), "{line}");
    }
}

#[test]
fn detect_into_a_closed_pipe_is_not_a_crash() {
    // `spotter detect photo | head -1` with `head` already gone: every write fails with EPIPE
    // (the read end is closed before the process starts, so this does not depend on timing).
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let model = fixture("yolov9/tiny/tiny-gelan-c.pt");
    let photo = fixture("images/coffee.png");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_spotter"))
        .args(["detect", photo.to_str().unwrap(), "--model", model.to_str().unwrap(), "--imgsz", "128"])
        .stdout(writer)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}
