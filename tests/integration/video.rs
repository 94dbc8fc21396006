//! `spotter detect` on video: the threaded pipeline end to end through the real binary.

use serde_json::Value;

use crate::{assert_clean_error, fixture, root, spotter, stderr};

fn tiny(name: &str) -> String {
    fixture(&format!("yolov9/tiny/{name}.pt")).to_string_lossy().into_owned()
}

fn demo() -> String {
    root().join("assets/demo.mp4").to_string_lossy().into_owned()
}

#[test]
fn detect_on_a_clip_writes_video_json_lines_and_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.mp4");
    let json = dir.path().join("out.jsonl");
    let o = spotter(&[
        "detect",
        &demo(),
        "--model",
        &tiny("tiny-gelan-c"),
        "--imgsz",
        "128",
        "--device",
        "cpu",
        "--max-frames",
        "20",
        "--out",
        out.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("20 frame(s)") && err.contains("latency p50/p95 ms") && err.contains("tiny-gelan-c:"),
        "{err}"
    );
    let lines: Vec<Value> =
        std::fs::read_to_string(&json).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 20);
    assert_eq!(lines[19]["frame"], 19);
    assert!((lines[19]["pts"].as_f64().unwrap() - 0.76).abs() < 1e-6);
    assert_eq!((&lines[0]["width"], &lines[0]["height"]), (&Value::from(640), &Value::from(360)));
    assert!(std::fs::metadata(&out).unwrap().len() > 10_000);
}

#[test]
fn two_models_are_compared_on_the_same_frames() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("cmp.jsonl");
    let o = spotter(&[
        "detect",
        &demo(),
        "--model",
        &tiny("tiny-gelan-s"),
        "--model",
        &tiny("tiny-yolov9-c"),
        "--imgsz",
        "128",
        "--device",
        "cpu",
        "--max-frames",
        "5",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<Value> =
        std::fs::read_to_string(&json).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 10);
    for pair in lines.chunks(2) {
        assert_eq!(pair[0]["frame"], pair[1]["frame"]);
        assert_eq!(
            (pair[0]["model"].as_str(), pair[1]["model"].as_str()),
            (Some("tiny-gelan-s"), Some("tiny-yolov9-c"))
        );
    }
}

#[test]
fn a_live_source_reports_dropped_frames() {
    let o = spotter(&[
        "detect",
        "synthetic:320x240@60/60",
        "--model",
        &tiny("tiny-gelan-c"),
        "--imgsz",
        "256",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("dropped"), "{}", stderr(&o));
}

#[test]
fn video_bad_input_is_one_line() {
    let model = tiny("tiny-gelan-s");
    assert_clean_error(&spotter(&["detect", "/no/such/clip.mp4", "--model", &model]), "no such file");
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.mkv");
    std::fs::write(&text, "not a video at all").unwrap();
    assert_clean_error(&spotter(&["detect", text.to_str().unwrap(), "--model", &model]), "not a video");
    assert_clean_error(
        &spotter(&["detect", &demo(), "--model", &model, "--out", "/no/such/dir/out.mp4"]),
        "cannot write /no/such/dir/out.mp4",
    );
    assert_clean_error(
        &spotter(&["detect", "rtsp://127.0.0.1:9/live", "--model", &model]),
        "cannot open rtsp://127.0.0.1:9/live",
    );
    assert_clean_error(&spotter(&["detect", "synthetic:0x0", "--model", &model]), "bad size");
}

#[test]
fn cameras_are_listed() {
    // This machine has no camera: the real query runs and says so.
    let o = spotter(&["cameras"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = crate::stdout(&o);
    assert!(out.contains("no cameras found") || out.contains("camera:"), "{out}");
}
