//! `spotter bench --json` follows the contract in DESIGN.md.

use serde_json::Value;

use crate::{fixture, spotter, stderr, stdout};

#[test]
fn bench_json_has_the_contract_fields_and_per_layer_rows() {
    let model = fixture("yolov9/tiny/tiny-yolov9-c.pt");
    let o = spotter(&[
        "bench",
        "--model",
        model.to_str().unwrap(),
        "--imgsz",
        "128",
        "--runs",
        "3",
        "--per-layer",
        "--json",
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    for key in ["model", "imgsz", "device", "threads", "runs", "p50_ms", "p95_ms", "params", "gflops", "layers"] {
        assert!(r.get(key).is_some(), "missing {key}: {r}");
    }
    assert_eq!(r["device"], "cpu");
    assert_eq!(r["runs"], 3);
    assert!(r["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(r["p95_ms"].as_f64().unwrap() >= r["p50_ms"].as_f64().unwrap());
    assert!(r["min_ms"].as_f64().unwrap() > 0.0 && r["min_ms"].as_f64().unwrap() <= r["p50_ms"].as_f64().unwrap());
    if cfg!(target_os = "linux") {
        // Peak resident memory, and how much it grew over the timed runs (nothing per frame).
        assert!(r["rss_mb"].as_f64().unwrap() > 1.0, "{r}");
        assert!(r["rss_growth_mb"].as_f64().unwrap().abs() < 64.0, "{r}");
    }
    // The inference model of tiny-yolov9-c: layers 0..=22 and the head, not the PGI branch.
    let layers = r["layers"].as_array().unwrap();
    let indices: Vec<u64> = layers.iter().map(|l| l["index"].as_u64().unwrap()).collect();
    assert_eq!(indices, (0..=22).chain([38]).collect::<Vec<u64>>());
    assert_eq!(layers[1]["module"], "Conv");
    assert_eq!(layers[1]["shape"], serde_json::json!([1, 8, 64, 64]));
}

#[test]
fn bench_random_weights_needs_no_download() {
    let o = spotter(&["bench", "--model", "gelan-s", "--random-weights", "--imgsz", "64", "--runs", "1", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(r["params"], 7_105_888);
    assert_eq!(r["model"], "gelan-s");
}

/// `--pipeline` alternates the detector alone and the whole pipeline (decode, detect, annotate,
/// encode) for `--rounds` rounds, after a warm-up of each, and reports each round and the median
/// overhead, end to end and in steady state (after the first 5 frames), beside the CPU time the
/// decoder and the sink took.
#[test]
fn bench_pipeline_alternates_rounds_and_reports_the_median() {
    let model = fixture("yolov9/tiny/tiny-gelan-s.pt");
    let clip = crate::root().join("assets/demo.mp4");
    let args = ["bench", "--model", model.to_str().unwrap(), "--imgsz", "64", "--device", "cpu"];
    let extra = ["--pipeline", clip.to_str().unwrap(), "--frames", "8", "--rounds", "3", "--json"];
    let o = spotter(&[&args[..], &extra[..]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(r["frames"], 8);
    // One untimed pipeline run over those frames comes first.
    assert_eq!(r["warmup_frames"], 8);
    let rounds = r["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3, "{r}");
    let mut overheads: Vec<f64> = rounds.iter().map(|x| x["overhead_pct"].as_f64().unwrap()).collect();
    for x in rounds {
        assert!(x["detector_fps"].as_f64().unwrap() > 0.0 && x["pipeline_fps"].as_f64().unwrap() > 0.0, "{x}");
    }
    overheads.sort_by(f64::total_cmp);
    assert_eq!(r["overhead_pct"].as_f64().unwrap(), overheads[1]);
    // Steady state: the 2 intervals between the outputs of frames 6, 7 and 8.
    let mut steady: Vec<f64> = rounds.iter().map(|x| x["steady_overhead_pct"].as_f64().unwrap()).collect();
    steady.sort_by(f64::total_cmp);
    assert_eq!(r["steady_overhead_pct"].as_f64().unwrap(), steady[1]);
    assert!(rounds.iter().all(|x| x["steady_fps"].as_f64().unwrap() > 0.0), "{r}");
    let stages: Vec<&str> = r["stages"].as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap()).collect();
    assert!(stages.contains(&"inference") && stages.contains(&"output"), "{stages:?}");
    // The decoder's and the sink's CPU time per frame, and their share of the cores' time the
    // detector takes alone: (decoder + sink) / (threads x 1000 / detector fps), for a whole
    // number of threads.
    for x in rounds {
        let (decoder, sink) =
            (x["decoder_cpu_ms_per_frame"].as_f64().unwrap(), x["sink_cpu_ms_per_frame"].as_f64().unwrap());
        assert!(decoder > 0.0 && sink > 0.0, "{x}");
        let threads =
            (decoder + sink) * x["detector_fps"].as_f64().unwrap() / 10.0 / x["codec_share_pct"].as_f64().unwrap();
        assert!(threads >= 0.999 && (threads - threads.round()).abs() < 1e-6, "{threads} threads: {x}");
    }
    let mut shares: Vec<f64> = rounds.iter().map(|x| x["codec_share_pct"].as_f64().unwrap()).collect();
    shares.sort_by(f64::total_cmp);
    assert_eq!(r["codec_share_pct"].as_f64().unwrap(), shares[1]);

    // The text form names every round.
    let o = spotter(&[&args[..], &extra[..4], &["--rounds", "2"][..]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("median of 2 alternating rounds"), "{}", stdout(&o));
    assert!(stdout(&o).contains("steady state (after the first 5 frames"), "{}", stdout(&o));
    assert!(stdout(&o).contains("the decoder used"), "{}", stdout(&o));
}
